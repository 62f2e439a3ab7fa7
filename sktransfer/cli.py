"""The ``sktransfer`` command.

``sktransfer demo``: the two ways of transfer on scikit-learn's bundled digits
(no download). The target task is digits 5-9 with a handful of labels per
class; the digits are placed at random in a 12x12 canvas, since real objects
are rarely centred. It compares, on the same held-out images:

- logistic regression on the raw pixels;
- a network trained from scratch on the few labels;
- *develop, then reuse*: a source model trained on digits 0-4 (plenty of
  labels), reused frozen as a feature extractor, with the cut point chosen by
  a grid search on the few labels;
- a pretrained ImageNet network, frozen, likewise, when its weights are at
  hand (a checkpoint, or the torch cache); skipped, and said so, otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from sktransfer.exceptions import WeightsUnavailableError

PRETRAINED_LAYERS = {
    "mobilenet_v2": ["features.3", "features.6", "features.10", "features.13", None],
    "resnet18": ["layer1", "layer2", "layer3", None],
    "resnet50": ["layer1", "layer2", "layer3", None],
}
SOURCE_MODEL = "resnet18"
SOURCE_LAYERS = ["layer1", "layer2", "layer3", None]
CANVAS = 12
# The digits are grayscale ink on black: one channel, centred on 0.
SOURCE_PREPROCESSING = {
    "resize_size": 32,
    "crop_size": 32,
    "mean": (0.5,),
    "std": (0.5,),
}


def shifted_digits(limit=None, seed=0):
    """scikit-learn's 8x8 digits as uint8 images, each at a random place in a
    12x12 canvas; and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:limit]
    rng = np.random.default_rng(seed)
    canvas = np.zeros((len(images), CANVAS, CANVAS), np.uint8)
    for image, place in zip(images, canvas, strict=True):
        top, left = rng.integers(0, CANVAS - 8 + 1, 2)
        place[top : top + 8, left : left + 8] = image
    return canvas, digits.target[:limit]


def split(y, labels_per_class, seed=0):
    """Source rows (classes 0-4), and target train/test rows (classes 5-9,
    ``labels_per_class`` of each class for training)."""
    rng = np.random.default_rng(seed)
    source = np.flatnonzero(y < 5)
    target = np.flatnonzero(y >= 5)
    train = np.concatenate(
        [
            rng.choice(target[y[target] == c], labels_per_class, replace=False)
            for c in range(5, 10)
        ]
    )
    return source, np.sort(train), np.setdiff1d(target, train)


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _reuse(extractor, layers, X, y, train, test, cv):
    """Grid search of the cut point (and C) on the training labels; the
    per-layer CV scores and the test accuracy of the chosen pipeline."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    extractor.set_params(cache_layers=layers)  # one pass for the whole grid
    search = GridSearchCV(
        make_pipeline(extractor, _probe()),
        {
            "pretrainedfeatureextractor__layer": layers,
            "pipeline__logisticregression__C": [0.1, 1.0],
        },
        cv=cv,
    ).fit(X[train], y[train])
    per_layer: dict[str, float] = {}
    for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        name = str(params["pretrainedfeatureextractor__layer"])
        per_layer[name] = max(per_layer.get(name, 0.0), score)
    layer = search.best_params_["pretrainedfeatureextractor__layer"]
    return layer, per_layer, search.score(X[test], y[test])


def cached_imagenet_weights(model: str) -> list[str]:
    """Names of the model's published weights whose files are in the torch
    hub cache (usable offline), best (DEFAULT) first."""
    import torchvision

    from sktransfer._backbones import hub_path

    enum = torchvision.models.get_model_weights(model)
    members = sorted(set(enum), key=lambda w: w is not enum.DEFAULT)
    return [f"{enum.__name__}.{w.name}" for w in members if hub_path(w).exists()]


def _pretrained(args, X):
    from sktransfer import PretrainedFeatureExtractor

    if args.weights.lower() == "none":
        print("\n(The pretrained path is skipped: --weights none.)")
        return None
    extractor = PretrainedFeatureExtractor(
        model=args.model,
        weights=args.weights,
        preprocessing={"resize_size": args.size, "crop_size": args.size},
        batch_size=args.batch_size,
        verbose=not args.quiet,
    )
    try:
        return extractor.fit(X[:1])
    except WeightsUnavailableError as exc:
        at_hand = cached_imagenet_weights(args.model)
        if args.weights == "DEFAULT" and at_hand:
            # DEFAULT names the newest weights; an older ImageNet set in the
            # cache is still ImageNet weights: use it, and say which.
            print(
                f"\nThe DEFAULT {args.model} weights are not in the torch cache and "
                f"cannot be downloaded; using {at_hand[0]}, the ImageNet weights "
                "at hand."
            )
            return extractor.set_params(weights=at_hand[0]).fit(X[:1])
        print(
            f"\n!! The pretrained path is SKIPPED: no {args.model} weights here "
            f"({exc}).\n!! Pass --weights PATH to a checkpoint, or run once online."
        )
        return None


def _row(name, choice, accuracy):
    print(f"{name:<46}{choice:<16}{accuracy}")


def demo(args) -> int:
    from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

    start = time.perf_counter()
    X, y = shifted_digits(args.limit)
    source, train, test = split(y, args.labels)
    cv = min(args.cv, args.labels)
    print(
        "sktransfer demo: transfer learning on scikit-learn's digits, each placed "
        f"at random in a {CANVAS}x{CANVAS} canvas\n"
        f"source task: digits 0-4, {len(source)} labelled images\n"
        f"target task: digits 5-9, {args.labels} labelled images per class "
        f"({len(train)}), tested on the other {len(test)}\n"
    )
    common = dict(
        model=SOURCE_MODEL,
        weights=None,
        trainable_layers="all",
        preprocessing=SOURCE_PREPROCESSING,
        learning_rate=3e-3,
        random_state=0,
        verbose=not args.quiet,
    )
    print(f"Developing the source model ({SOURCE_MODEL} from scratch on 0-4)...")
    developed = FineTunedClassifier(
        **common, max_epochs=args.source_epochs, batch_size=64
    ).fit(X[source], y[source])
    print("Training from scratch on the target labels...")
    scratch = FineTunedClassifier(
        **common, max_epochs=args.scratch_epochs, batch_size=16
    ).fit(X[train], y[train])
    print("Grid searches over cut points...")
    raw = _probe().fit(X[train].reshape(len(train), -1), y[train])
    reused = PretrainedFeatureExtractor(model=developed, verbose=False)
    reuse = _reuse(reused, SOURCE_LAYERS, X, y, train, test, cv)
    pretrained = _pretrained(args, X)
    imagenet = None
    if pretrained is not None:
        layers = PRETRAINED_LAYERS.get(args.model, [None])
        imagenet = _reuse(pretrained, layers, X, y, train, test, cv)

    header = "method (target task: digits 5-9)"
    print(f"\n{header:<46}{'cut point (CV)':<16}test accuracy")
    print("-" * 75)
    raw_acc = raw.score(X[test].reshape(len(test), -1), y[test])
    _row("raw pixels + logistic regression", "-", f"{raw_acc:.3f}")
    _row(
        f"{SOURCE_MODEL} trained from scratch on the labels",
        "-",
        f"{scratch.score(X[test], y[test]):.3f}",
    )
    _row("source model (0-4), frozen + logistic reg.", str(reuse[0]), f"{reuse[2]:.3f}")
    name = f"ImageNet {args.model}, frozen + logistic reg."
    if imagenet is not None:
        _row(name, str(imagenet[0]), f"{imagenet[2]:.3f}")
    else:
        _row(name, "skipped", "no weights")
    print(
        f"\ncut points of the source model, {cv}-fold CV accuracy on the "
        f"{len(train)} labels: "
        + ", ".join(f"{k} {v:.2f}" for k, v in reuse[1].items())
    )
    if imagenet is not None:
        print(f"weights of the ImageNet model: {pretrained.weights_}")
        print(
            f"cut points of {args.model}, {cv}-fold CV accuracy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in imagenet[1].items())
        )
    import torch

    from sktransfer._identity import cpu_model

    print(
        f"\nwhole demo: {time.perf_counter() - start:.0f} s on {cpu_model()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        "float32.\nThe table is reproducible on this machine; another CPU can "
        "give slightly different digits (the training rounds differently)."
    )
    return 0


DESCRIPTION = """\
sktransfer: transfer learning from pretrained image models, as scikit-learn
estimators. Everything the command does can be done in Python with
PretrainedFeatureExtractor and FineTunedClassifier.

commands:
  demo   transfer learning on scikit-learn's digits, offline: raw pixels, a
         network trained from scratch, a source model developed on digits 0-4
         and reused frozen, and a frozen ImageNet model, each with its cut
         point chosen by a grid search (about a minute on 2 CPU cores)
"""


class _Help(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Descriptions as written, and each option's default."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser(
        "demo",
        help="transfer learning on scikit-learn's digits (offline)",
        description=__doc__.split("\n\n", 1)[1].strip().replace("``", "'"),
        formatter_class=_Help,
    )
    p.add_argument(
        "--model",
        default="mobilenet_v2",
        help="the pretrained torchvision model of the ImageNet row",
    )
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="its weights: 'DEFAULT' (else any ImageNet weights in the torch "
        "cache), a weights name, a checkpoint path, or 'none' to skip the row",
    )
    p.add_argument(
        "--size", type=int, default=64, help="input side of the pretrained model"
    )
    p.add_argument(
        "--labels", type=int, default=10, help="labelled target images per class"
    )
    p.add_argument(
        "--cv", type=int, default=5, help="cross-validation folds of the searches"
    )
    p.add_argument(
        "--source-epochs",
        type=int,
        default=10,
        help="epochs of the source model (digits 0-4)",
    )
    p.add_argument(
        "--scratch-epochs",
        type=int,
        default=30,
        help="epochs of the network trained from scratch on the target labels",
    )
    p.add_argument(
        "--batch-size", type=int, default=128, help="images per forward pass"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="use only the first N digits"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
