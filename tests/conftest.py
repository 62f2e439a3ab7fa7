"""Shared fixtures: small images, a tiny CNN, the real ImageNet checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "weights"
    / "mobilenet_v2_imagenet.pth"
)
SMALL = {"resize_size": 32, "crop_size": 32}


class TinyCNN(nn.Module):
    """A small convolutional network with named stages and a linear head."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


def transform_in_fresh_process(extractor, X, folder, env=None, method="transform"):
    """Pickle ``extractor`` (any estimator), call ``method`` on ``X`` in a new
    Python process, return its result."""
    import pickle
    import subprocess
    import sys

    (folder / "model.pkl").write_bytes(pickle.dumps(extractor))
    np.save(folder / "X.npy", X)
    code = (
        "import pickle, sys, numpy as np; d = sys.argv[1];"
        "e = pickle.load(open(d + '/model.pkl', 'rb'));"
        "np.save(d + '/out.npy', getattr(e, sys.argv[2])(np.load(d + '/X.npy')))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(folder), method], check=True, env=env
    )
    return np.load(folder / "out.npy")


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def images():
    """Six uint8 RGB images, 40x48, channels last."""
    return np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def shared_weights():
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"the real ImageNet checkpoint is not at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture
def digits_images():
    """scikit-learn's digits as uint8 grayscale images (n, 8, 8) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target
