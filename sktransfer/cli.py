"""The ``sktransfer`` command.

``sktransfer demo``: a linear probe on scikit-learn's bundled digits (no
download): a grid search over cut points of a pretrained network and the
regularisation of logistic regression on their features, next to logistic
regression on the raw pixels. The embedding cache makes the whole search cost
one pass through the network.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from sktransfer.exceptions import WeightsUnavailableError

DEMO_LAYERS = {
    "mobilenet_v2": [
        "features.3",
        "features.6",
        "features.10",
        "features.13",
        "features.16",
        None,
    ],
    "resnet18": ["layer1", "layer2", "layer3", None],
    "resnet50": ["layer1", "layer2", "layer3", None],
}


def _digits_as_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 grayscale, values 0..16 -> uint8 0..255
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target


def _search(estimator, param_grid, X, y, cv):
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(estimator, param_grid, cv=cv).fit(X, y)


def _best_per(search, param):
    """Best mean test score (and its std) for each value of ``param``."""
    results = search.cv_results_
    best = {}
    for i, params in enumerate(results["params"]):
        key = str(params[param])
        mean, std = results["mean_test_score"][i], results["std_test_score"][i]
        if key not in best or mean > best[key][0]:
            best[key] = (mean, std, params)
    return best


def _extractor(args, layers):
    from sktransfer import EmbeddingCache, PretrainedFeatureExtractor

    weights = None if args.weights.lower() == "none" else args.weights
    return PretrainedFeatureExtractor(
        model=args.model,
        weights=weights,
        preprocessing={"resize_size": args.size, "crop_size": args.size},
        batch_size=args.batch_size,
        cache=EmbeddingCache(),
        cache_layers=layers,  # every cut point of the grid from one pass
        random_state=0,  # with --weights none: one network for all candidates
        verbose=not args.quiet,
    )


def _checked_extractor(args, layers, X):
    extractor = _extractor(args, layers)
    try:
        extractor.fit(X[:1])
    except WeightsUnavailableError as exc:
        print(
            f"\n!! Pretrained weights are not available: {exc}\n!! The demo goes on "
            "with RANDOM weights (weights=None), so the table below shows an "
            "untrained network, not transfer learning. Pass --weights PATH to a "
            "checkpoint to see the real thing.\n"
        )
        extractor.set_params(weights=None, random_state=0).fit(X[:1])
    return extractor


def demo(args) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _digits_as_images()
    X, y = X[: args.limit], y[: args.limit]
    layers = DEMO_LAYERS.get(args.model, [None])
    grid_c = [0.1, 1.0]
    print(
        f"sktransfer demo: linear probe on scikit-learn's digits ({len(X)} "
        f"images, 8x8 grayscale, {len(set(y))} classes)"
    )
    extractor = _checked_extractor(args, layers, X)
    print(f"model:   {args.model}")
    print(f"weights: {extractor.weights_ or 'none: RANDOM initialisation'}")
    print(
        f"input:   digits upscaled to {args.size}x{args.size}, normalised with "
        "the weights' statistics"
    )
    print(
        f"search:  GridSearchCV over {len(layers)} cut points x C in {grid_c}, "
        f"{args.cv}-fold CV, logistic regression on standardised features\n"
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pipe = make_pipeline(extractor, probe)
    cache = extractor.cache
    start = time.perf_counter()
    search = _search(
        pipe,
        {
            "pretrainedfeatureextractor__layer": layers,
            "pipeline__logisticregression__C": grid_c,
        },
        X,
        y,
        args.cv,
    )
    elapsed = time.perf_counter() - start
    best = _best_per(search, "pretrainedfeatureextractor__layer")
    print(f"{'features from':<24}{'width':>6}  {'best C':>6}   accuracy (mean ± sd)")
    print("-" * 60)
    for layer in layers:
        mean, std, params = best[str(layer)]
        width = extractor.set_params(layer=layer).fit(X[:1]).n_features_out_
        shown = "embedding (layer=None)" if layer is None else layer
        c = params["pipeline__logisticregression__C"]
        print(f"{shown:<24}{width:>6}  {c:>6g}   {mean:.3f} ± {std:.3f}")
    raw = _search(
        probe, {"logisticregression__C": grid_c}, X.reshape(len(X), -1), y, args.cv
    )
    mean = raw.cv_results_["mean_test_score"][raw.best_index_]
    std = raw.cv_results_["std_test_score"][raw.best_index_]
    c = raw.best_params_["logisticregression__C"]
    print(f"{'raw pixels':<24}{X[0].size:>6}  {c:>6g}   {mean:.3f} ± {std:.3f}")
    fits = len(search.cv_results_["params"]) * args.cv + 1
    print(
        f"\n{fits} fits of the pipeline in {elapsed:.1f} s; the embedding cache "
        f"computed {len(cache) // len(layers)} images x {len(layers)} cut points "
        "once (a grid search without it runs every image through the network "
        f"about {fits} times)."
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sktransfer", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="linear probe on the digits, per cut point")
    p.add_argument("--model", default="mobilenet_v2", help="torchvision model name")
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="'DEFAULT', a weights name, a checkpoint path, or 'none' (random)",
    )
    p.add_argument("--size", type=int, default=64, help="input side in pixels")
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--limit", type=int, default=None, help="use only the first N digits"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
