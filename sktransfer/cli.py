"""The ``sktransfer`` command.

``sktransfer demo``: a linear probe on scikit-learn's bundled digits (no
download): cross-validated accuracy of logistic regression on the features of
several cut points of a pretrained network, next to logistic regression on the
raw pixels.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from sktransfer.exceptions import WeightsUnavailableError

DEMO_LAYERS = {
    "mobilenet_v2": ["features.3", "features.6", "features.10", "features.13",
                     "features.16", None],
    "resnet18": ["layer1", "layer2", "layer3", None],
    "resnet50": ["layer1", "layer2", "layer3", None],
}


def _digits_as_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 grayscale, values 0..16 -> uint8 0..255
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target


def _probe(features, y, cv):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_score(clf, features, y, cv=cv)


def _fit_extractor(args, layers, X):
    from sktransfer import PretrainedFeatureExtractor

    weights = None if args.weights.lower() == "none" else args.weights
    extractor = PretrainedFeatureExtractor(
        model=args.model,
        weights=weights,
        layer=layers,
        preprocessing={"resize_size": args.size, "crop_size": args.size},
        batch_size=args.batch_size,
        verbose=not args.quiet,
    )
    try:
        return extractor.fit(X[:1])
    except WeightsUnavailableError as exc:
        print(
            f"\n!! Pretrained weights are not available: {exc}\n!! The demo goes on "
            "with RANDOM weights (weights=None), so the table below shows an "
            "untrained network, not transfer learning. Pass --weights PATH to a "
            "checkpoint to see the real thing.\n"
        )
        return extractor.set_params(weights=None).fit(X[:1])


def demo(args) -> int:
    X, y = _digits_as_images()
    layers = DEMO_LAYERS.get(args.model, [None])
    print(
        f"sktransfer demo: linear probe on scikit-learn's digits ({len(X)} "
        f"images, 8x8 grayscale, {len(set(y))} classes), {args.cv}-fold CV"
    )
    extractor = _fit_extractor(args, layers, X)
    described = extractor.weights_ or "none: RANDOM initialisation"
    print(f"model:   {args.model}")
    print(f"weights: {described}")
    print(f"input:   digits upscaled to {args.size}x{args.size}, normalised with "
          "the weights' statistics")
    start = time.perf_counter()
    features = extractor.transform(X)
    elapsed = time.perf_counter() - start
    print(
        f"features of {len(layers)} cut points from one pass over {len(X)} "
        f"images: {elapsed:.1f} s ({len(X) / elapsed:.0f} img/s)\n"
    )
    names = extractor.get_feature_names_out()
    print(f"{'features from':<22}{'width':>7}   accuracy (mean ± sd)")
    print("-" * 52)
    for layer in extractor.layers_:
        label = "embedding" if layer is None else layer
        columns = np.char.startswith(names.astype(str), label + "_")
        scores = _probe(features[:, columns], y, args.cv)
        shown = "embedding (layer=None)" if layer is None else layer
        print(f"{shown:<22}{columns.sum():>7}   {scores.mean():.3f} ± {scores.std():.3f}")
    scores = _probe(X.reshape(len(X), -1).astype(np.float64), y, args.cv)
    print(f"{'raw pixels':<22}{X[0].size:>7}   {scores.mean():.3f} ± {scores.std():.3f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sktransfer", description=__doc__.split("\n")[0])
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
