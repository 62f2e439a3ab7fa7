"""
Accuracy against depth: which cut point transfers best?
=======================================================

A grid search over every stage boundary of an ImageNet MobileNetV2 (and its
final embedding) with a logistic regression on top, on scikit-learn's
bundled 8x8 digits: images far from ImageNet's photos. ``cache_layers=
"stages"`` taps every cut point in the same forward pass, so the whole
search runs each image through the network once.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, list_layers

digits = load_digits()
X = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
y = digits.target

# %%
# The cut points: the outputs of ``features.1`` .. ``features.18``, then the
# final embedding (``layer=None``).
stages = list(list_layers("mobilenet_v2", input_size=64))
layers = stages[1:] + [None]

extractor = PretrainedFeatureExtractor(
    model="mobilenet_v2",
    weights="IMAGENET1K_V1",
    preprocessing={"resize_size": 64, "crop_size": 64},
    cache_layers="stages",
    verbose=False,
)
pipe = make_pipeline(extractor, StandardScaler(), LogisticRegression(max_iter=500))
search = GridSearchCV(pipe, {"pretrainedfeatureextractor__layer": layers}, cv=3)
start = time.perf_counter()
search.fit(X, y)
print(f"{len(layers) * 3 + 1} fits in {time.perf_counter() - start:.0f} s")

# %%
# Raw pixels, for comparison.
raw = GridSearchCV(
    make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), {}, cv=3
).fit(X.reshape(len(X), -1), y)

scores = search.cv_results_["mean_test_score"]
spread = search.cv_results_["std_test_score"]
labels = [str(layer).replace("features.", "") for layer in layers[:-1]] + ["emb."]
fig, ax = plt.subplots(figsize=(8, 4))
ax.errorbar(range(len(layers)), scores, yerr=spread, marker="o", capsize=3,
            label="logistic regression on pooled features")  # fmt: skip
ax.axhline(raw.best_score_, color="grey", linestyle="--", label="raw pixels")
ax.set_xticks(range(len(layers)), labels)
ax.set_xlabel("cut point: features.N of MobileNetV2, shallow to deep")
ax.set_ylabel("3-fold CV accuracy")
ax.legend(loc="lower right")
fig.tight_layout()
print("best cut point:", search.best_params_)
