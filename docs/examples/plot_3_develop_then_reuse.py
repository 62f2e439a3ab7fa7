"""
Develop a source model, then reuse it
=====================================

When no pretrained network suits your images, train a *source model* on a
related task with plenty of labels, then reuse it, frozen, for the task
with few labels. Here the images are scikit-learn's digits, each placed at
random in a 12x12 canvas (objects are rarely centred, and a linear model on
raw pixels suffers from it); the source task is digits 0-4 (about 900
labels) and the target task digits 5-9 with 50 labels; a fitted
:class:`~sktransfer.FineTunedClassifier` is the ``model`` of a
:class:`~sktransfer.PretrainedFeatureExtractor`, cut at each of its stages.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

digits = load_digits()
y = digits.target
rng = np.random.default_rng(0)
X = np.zeros((len(y), 12, 12), np.uint8)
offsets = rng.integers(0, 5, (len(y), 2))
for image, digit, (top, left) in zip(X, digits.images, offsets, strict=True):
    image[top : top + 8, left : left + 8] = np.round(digit * (255 / 16))
source = y < 5
target = np.flatnonzero(y >= 5)
few = np.concatenate([rng.choice(target[y[target] == c], 10, replace=False)
                      for c in range(5, 10)])  # fmt: skip
test = np.setdiff1d(target, few)
small = {"resize_size": 32, "crop_size": 32}

# %%
# The source model: a ResNet-18 trained from scratch on digits 0-4.
source_model = FineTunedClassifier(
    model="resnet18", weights=None, trainable_layers="all", preprocessing=small,
    max_epochs=3, random_state=0, verbose=False,
).fit(X[source], y[source])  # fmt: skip
print(f"source task accuracy: {source_model.score(X[source], y[source]):.3f}")

# %%
# Reuse it frozen, at each stage, on the 50 labels of the target task.
layers = ["layer1", "layer2", "layer3", "layer4"]
pipe = make_pipeline(
    PretrainedFeatureExtractor(model=source_model, cache_layers=layers, verbose=False),
    StandardScaler(),
    LogisticRegression(max_iter=1000),
)
search = GridSearchCV(pipe, {"pretrainedfeatureextractor__layer": layers}, cv=5)
search.fit(X[few], y[few])
reused = [search.cv_results_["mean_test_score"][i] for i in range(len(layers))]

raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
raw_score = raw.fit(X[few].reshape(50, -1), y[few]).score(
    X[test].reshape(len(test), -1), y[test]
)
print(f"best cut point: {search.best_params_}")
print(f"test accuracy, reused source model: {search.score(X[test], y[test]):.3f}")
print(f"test accuracy, raw pixels:          {raw_score:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(layers, reused, marker="o", label="source model, frozen (5-fold CV)")
ax.axhline(raw_score, color="grey", linestyle="--", label="raw pixels (test)")
ax.set_xlabel("cut point of the source model")
ax.set_ylabel("accuracy on digits 5-9")
ax.legend()
fig.tight_layout()
