"""
Fine-tuning against frozen features
===================================

The two ways of transfer on the same few labels: a logistic regression on
frozen features, and :class:`~sktransfer.FineTunedClassifier` training a new
head (``trainable_layers=0``) and then the last one or two stages of the
same ImageNet MobileNetV2 too.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

digits = load_digits()
X = np.round(digits.images * (255 / 16)).astype(np.uint8)
X_train, X_test, y_train, y_test = train_test_split(
    X, digits.target, train_size=300, test_size=300, stratify=digits.target,
    random_state=0,
)  # fmt: skip
prep = {"resize_size": 64, "crop_size": 64}

# %%
# Frozen features from ``features.13``, the best cut point of the previous
# example's search on digits, then a linear model.
frozen = make_pipeline(
    PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights="IMAGENET1K_V1",
        layer="features.13",
        preprocessing=prep,
        verbose=False,
    ),
    StandardScaler(),
    LogisticRegression(max_iter=1000),
).fit(X_train, y_train)
scores = {"frozen features.13\n+ logistic regression": frozen.score(X_test, y_test)}

# %%
# Fine-tuning: a new head, then the last stages too.
for n in (0, 1, 2):
    clf = FineTunedClassifier(
        model="mobilenet_v2",
        weights="IMAGENET1K_V1",
        trainable_layers=n,
        preprocessing=prep,
        max_epochs=8,
        learning_rate=3e-3,
        freeze_batchnorm=True,  # batch statistics of 32 tiny digits are noisy
        random_state=0,
        verbose=False,
    ).fit(X_train, y_train)
    scores[f"fine-tuned\ntrainable_layers={n}"] = clf.score(X_test, y_test)

for name, score in scores.items():
    print(f"{name.replace(chr(10), ' '):45s} {score:.3f}")
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar(range(len(scores)), list(scores.values()), color="tab:blue")
ax.set_xticks(range(len(scores)), list(scores))
ax.set_ylabel("test accuracy (300 digits)")
ax.set_ylim(0, 1)
fig.tight_layout()
