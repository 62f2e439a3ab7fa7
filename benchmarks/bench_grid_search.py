"""Grid search over cut points: with the embedding cache versus without.

What is compared: one ``GridSearchCV`` of a ``PretrainedFeatureExtractor`` +
``StandardScaler`` + ``LogisticRegression`` pipeline (a linear probe), 4 cut
points x 3 values of C x 5 folds (61 fits with the refit), run twice in one
process on the same images:

- cached: ``cache=EmbeddingCache()`` with ``cache_layers`` set to the grid's
  cut points, so every image goes through the network once;
- uncached: ``cache=None``, the way peers work: every fit re-extracts.

Data: the first ``--n`` of scikit-learn's digits, upscaled to ``--size``
pixels (no download). Model: MobileNetV2 with the real ImageNet checkpoint
from ``../shared/weights`` when present, else random weights (``random_state=0``;
the timing is the same). Printed: wall time of each search, images that
reached the network (counted by a forward hook; each fit's one-image probe
included), and the ratio. The classifier's cost is the same in both runs and
bounds the ratio; on 2 cores, multi-threaded BLAS on small matrices mostly
contends with torch's threads (``--blas-threads 1`` shows it). The searches
must select the same cut point, which the script checks.

Run: ``.venv/bin/python benchmarks/bench_grid_search.py [--n 100 --size 224]``
"""

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import EmbeddingCache, PretrainedFeatureExtractor

WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet.pth"
)
LAYERS = ["features.6", "features.10", "features.13", None]


class Counter:
    """Counts images reaching a module; shared by deep copies (clones)."""

    def __init__(self):
        self.images = 0

    def __call__(self, module, inputs, output):
        self.images += inputs[0].shape[0]

    def __deepcopy__(self, memo):
        return self


def _extractor(size, cache):
    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    return PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=weights,
        random_state=0,  # used only for weights=None
        preprocessing={"resize_size": size, "crop_size": size},
        cache=cache,
        cache_layers=LAYERS if cache is not None else None,
        verbose=False,
    )


def search(X, y, size, cache):
    """Run the grid search; return seconds, the search and the image count."""
    extractor = _extractor(size, cache)
    # Clones share one built network (see sktransfer/_memo.py): fit one on a
    # single image and hook its first convolution to count every image that
    # the search sends through the network.
    network = clone(extractor).fit(X[:1]).network_
    counter = Counter()
    handle = network.backbone.features[0][0].register_forward_hook(counter)
    grid = GridSearchCV(
        make_pipeline(extractor, StandardScaler(), LogisticRegression(max_iter=1000)),
        {
            "pretrainedfeatureextractor__layer": LAYERS,
            "logisticregression__C": [0.1, 1.0, 10.0],
        },
        cv=5,
    )
    start = time.perf_counter()
    grid.fit(X, y)
    seconds = time.perf_counter() - start
    handle.remove()
    return seconds, grid, extractor.set_params(layer=None), counter.images


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit numpy's BLAS threads (used by the classifier) in both runs",
    )
    args = parser.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads, user_api="blas")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device cpu, BLAS threads: "
        f"{args.blas_threads or 'library default'}"
    )
    digits = load_digits()
    X = np.round(digits.images[: args.n] * (255 / 16)).astype(np.uint8)
    y = digits.target[: args.n]
    results = {}
    for label, cache in (("cached", EmbeddingCache()), ("uncached", None)):
        seconds, grid, extractor, images = search(X, y, args.size, cache)
        results[label] = (seconds, grid)
        print(
            f"{label:>9}: {seconds:7.1f} s, {images:6d} images through the network "
            f"(fit probes included), best {grid.best_params_}, "
            f"score {grid.best_score_:.3f}"
        )
    weights = extractor.fit(X[:1]).weights_ or "random (random_state=0)"
    print(f"weights: {weights}; {args.n} digits at {args.size}px; 61 fits")
    ratio = results["uncached"][0] / results["cached"][0]
    print(f"speed-up of the cached search: {ratio:.1f}x")
    chosen = [
        g.best_params_["pretrainedfeatureextractor__layer"] for _, g in results.values()
    ]
    assert chosen[0] == chosen[1], chosen


if __name__ == "__main__":
    main()
