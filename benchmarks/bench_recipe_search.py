"""The recipe's grid search with and without the embedding cache (issue 31).

What is compared: ``GridSearchCV(FineTunedClassifier(trainable_layers=0))``
over ``layer`` (3 cut points) x ``hidden_layer_sizes`` (2) x
``learning_rate`` (2), 3 folds, with ``cache=EmbeddingCache()`` and with
``cache=None``: the images that reach the network's first convolution (a
forward hook; clones of the module count too) and the search's wall time.
The two searches' scores and best parameters are checked equal.

Data: ``--n`` of scikit-learn's handwritten digits (8x8, bundled, no
download) scaled to 32x32 RGB; model: torchvision's ResNet-18 with random
weights (the cost is the network's, not the weights'), float32 on the CPU.

Run: ``.venv/bin/python benchmarks/bench_recipe_search.py [--n 300]``;
prints the CPU model, then one line per search. Read it as: without the
cache every fit and every scoring runs the network (36 fits, 36 scorings
and the refit here); with it, each image runs once per cut point.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from torchvision.models import resnet18

from sktransfer import EmbeddingCache, FineTunedClassifier


class ImageCounter:
    """Counts the images that reach a module (a forward hook)."""

    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.count += inputs[0].shape[0]

    def __deepcopy__(self, memo):  # clones of the module count here too
        return self


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    digits = load_digits()
    images = np.kron(digits.images[: args.n], np.ones((4, 4))) * (255 / 16)
    X = np.repeat(images[..., None], 3, axis=3).astype(np.uint8)
    y = digits.target[: args.n]
    torch.manual_seed(0)
    module = resnet18(weights=None)
    counter = ImageCounter(module.conv1)
    grid = {
        "layer": ["layer1", "layer2", "layer3"],
        "hidden_layer_sizes": [(), (64,)],
        "learning_rate": [1e-3, 1e-2],
    }
    print(f"CPU: {cpu()}; torch threads {torch.get_num_threads()}; {len(X)} images")
    results = {}
    for label, cache in (("cache", EmbeddingCache()), ("no cache", None)):
        counter.count = 0
        clf = FineTunedClassifier(
            model=module,
            weights="DEFAULT",
            preprocessing={"resize_size": 32, "crop_size": 32},
            precision="float32",
            max_epochs=5,
            batch_size=64,
            random_state=0,
            cache=cache,
            verbose=False,
        )
        start = time.perf_counter()
        search = GridSearchCV(clf, grid, cv=3).fit(X, y)
        seconds = time.perf_counter() - start
        results[label] = search
        print(
            f"{label:8}: {counter.count:6d} images through the network "
            f"({counter.count / len(X):.1f} per image), {seconds:6.1f} s, "
            f"best {search.best_params_}, score {search.best_score_:.3f}"
        )
    a, b = results["cache"], results["no cache"]
    assert a.best_params_ == b.best_params_
    np.testing.assert_allclose(
        a.cv_results_["mean_test_score"], b.cv_results_["mean_test_score"]
    )


if __name__ == "__main__":
    main()
