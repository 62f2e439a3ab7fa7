"""
Texts: accuracy against depth, every layer from one pass
========================================================

Which hidden layer of a sentence encoder transfers best to a small labelled
text task? A grid search over the 7 hidden states of all-MiniLM-L6-v2 (and
its own sentence embedding, ``layer=None``), mean-pooled, with a logistic
regression on top. The task needs no download: the first paragraph of the
docstring of every public class and function of four scikit-learn
subpackages, labelled by subpackage. ``cache_layers`` pools every layer from
the same forward pass, so the whole search runs each text through the model
once.
"""

import importlib
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import EmbeddingCache, PretrainedTextExtractor
from sktransfer._engine import counting_images

texts, labels = [], []
for label, name in enumerate(["linear_model", "cluster", "metrics", "ensemble"]):
    module = importlib.import_module(f"sklearn.{name}")
    for attr in sorted(module.__all__):
        doc = inspect.getdoc(getattr(module, attr))
        if doc and len(doc.split("\n\n")[0]) > 20:
            texts.append(doc.split("\n\n")[0].replace("\n", " "))
            labels.append(label)
X_train, X_test, y_train, y_test = train_test_split(
    texts, np.array(labels), test_size=0.3, random_state=0, stratify=labels
)
print(f"{len(X_train)} training texts, {len(X_test)} test texts; e.g. {texts[0]!r}")

# %%
# The grid: the 7 hidden states (0 is the embedding layer's output, 6 the
# last block's) and the model's own embedding (mean of the last layer, then
# normalised), each with the logistic regression's C.
layers = [*range(7), None]
pipe = make_pipeline(
    PretrainedTextExtractor(
        model="sentence-transformers/all-MiniLM-L6-v2",
        cache=EmbeddingCache(),
        cache_layers=layers,
        verbose=False,
    ),
    StandardScaler(),
    LogisticRegression(max_iter=2000),
)
search = GridSearchCV(
    pipe,
    {"pretrainedtextextractor__layer": layers, "logisticregression__C": [0.1, 1.0]},
    cv=4,
)
start = time.perf_counter()
with counting_images() as count:
    search.fit(X_train, y_train)
print(
    f"{len(search.cv_results_['params'])} candidates x 4 folds in "
    f"{time.perf_counter() - start:.1f} s; texts through the model: {count.images}"
)
print(
    f"best: {search.best_params_}; held-out accuracy {search.score(X_test, y_test):.3f}"
)

# %%
# Cross-validated accuracy by layer (the better C of each). With a few
# hundred labels the differences between the upper layers are within the
# folds' noise: prefer the model's own embedding unless a layer wins clearly.
results = search.cv_results_
names = [str(layer) for layer in layers]
best = {
    name: max(
        score
        for params, score in zip(
            results["params"], results["mean_test_score"], strict=True
        )
        if str(params["pretrainedtextextractor__layer"]) == name
    )
    for name in names
}
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(names, [best[name] for name in names])
ax.set_xlabel("layer (None: the sentence embedding)")
ax.set_ylabel("CV accuracy")
ax.set_ylim(min(best.values()) - 0.05, 1.0)
fig.tight_layout()
plt.show()
