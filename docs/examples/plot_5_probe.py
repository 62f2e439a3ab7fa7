"""
Which model, and which layer? ``sktransfer.probe``
==================================================

:func:`sktransfer.probe` (``sktransfer probe DIR`` in the shell) answers the
first question of transfer learning by measurement: for each model, every
image goes through the network once, with every stage boundary tapped in that
pass; then a linear probe (``StandardScaler`` + ``LogisticRegression``) is
scored on each cut point by stratified cross-validation, on the same folds
for every row.

Here: 600 of scikit-learn's bundled 8x8 digits at 64x64, an ImageNet
MobileNetV2, and a ResNet-18 with *random* weights, the floor that
pretraining should beat. It does not, on these images: clean, centred strokes
on black, far from ImageNet's photos, are separated as well by random
convolutions as by ImageNet's (within a standard deviation or two). That is
the point of measuring rather than assuming. On the README's example, the
same digits placed at random in a larger canvas at 224x224, the ImageNet
network pulls away from the random one from the middle layers on
(``docs/choosing.md``).
"""

import numpy as np
from sklearn.datasets import load_digits

from sktransfer import probe

digits = load_digits()
X = np.round(digits.images[:600] * (255 / 16)).astype(np.uint8)  # (600, 8, 8)
y = digits.target[:600]

result = probe(
    X,
    y,
    models=["mobilenet_v2:IMAGENET1K_V1", "resnet18:none"],
    preprocessing={"resize_size": 64, "crop_size": 64},
    cv=5,
    verbose=False,
)
print(result.table())

# %%
# Accuracy against depth, one line per model (the band is one standard
# deviation over the folds). Rows whose mean is within one standard deviation
# of the best are marked ``*`` in the table: these folds cannot tell them
# apart, so prefer the cheapest of them.
ax = result.plot()

# %%
# Each network saw each image once, whatever the number of cut points:
for run in result.runs:
    print(run["model"], run["network_images"], "images through the network")

# %%
# The Python that rebuilds the winner (``sktransfer probe --report`` writes
# it into the report, with the table and the plot):
print(result.pipeline_code())
