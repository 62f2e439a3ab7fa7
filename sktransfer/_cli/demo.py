"""``sktransfer demo``: the two ways of transfer on scikit-learn's digits,
offline (the command's help says what it compares)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer._extractor import PretrainedFeatureExtractor
from sktransfer._finetune import FineTunedClassifier
from sktransfer._identity import cpu_model
from sktransfer._probe import fit_with_weights_at_hand, linear_probe
from sktransfer._sources.checkpoints import weights_folders
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
#: The iteration limit of the demo's linear probes (higher than
#: sktransfer.probe's).
MAX_ITER = 2000


def shifted_digits(limit=None, seed=0):
    """scikit-learn's 8x8 digits as uint8 images, each at a random place in a
    12x12 canvas; and their labels."""
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


def run(args) -> int:
    """Run the demo; print its table."""
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
    developed, scratch = _train(args, X, y, source, train)
    print("Grid searches over cut points...")
    raw = linear_probe(MAX_ITER).fit(X[train].reshape(len(train), -1), y[train])
    reused = PretrainedFeatureExtractor(model=developed, verbose=False)
    reuse = _reuse(reused, SOURCE_LAYERS, X, y, train, test, cv)
    pretrained = _pretrained(args, X)
    imagenet = None
    if pretrained is not None:
        layers = PRETRAINED_LAYERS.get(args.model, [None])
        imagenet = _reuse(pretrained, layers, X, y, train, test, cv)
    raw_accuracy = raw.score(X[test].reshape(len(test), -1), y[test])
    _print_table(args, raw_accuracy, scratch.score(X[test], y[test]), reuse, imagenet)
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
    print(
        f"\nwhole demo: {time.perf_counter() - start:.0f} s on {cpu_model()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        "float32.\nThe table is reproducible on this machine; another CPU can "
        "give slightly different digits (the training rounds differently)."
    )
    return 0


def _train(args, X, y, source, train):
    """The source model, developed from scratch on digits 0-4, and a network
    trained from scratch on the target labels."""
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
    return developed, scratch


def _reuse(extractor, layers, X, y, train, test, cv):
    """Grid search of the cut point (and C) on the training labels; the
    per-layer CV scores and the test accuracy of the chosen pipeline."""
    extractor.set_params(cache_layers=layers)  # one pass for the whole grid
    search = GridSearchCV(
        make_pipeline(extractor, linear_probe(MAX_ITER)),
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


def _pretrained(args, X):
    """The ImageNet extractor, fitted; None (and said so) where it is skipped
    or its weights cannot be had."""
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
        return fit_with_weights_at_hand(
            extractor,
            X[:1],
            lambda at_hand: print(
                f"\nUsing the checkpoint {str(at_hand)!r}, named after "
                f"{args.model}, in the weights folder ($SKTRANSFER_WEIGHTS)."
                if isinstance(at_hand, Path)
                else f"\nThe DEFAULT {args.model} weights are not in the torch "
                f"cache and cannot be downloaded; using {at_hand}, the ImageNet "
                "weights at hand."
            ),
            weights_folders(),
        )
    except WeightsUnavailableError as exc:
        print(
            f"\n!! The pretrained path is SKIPPED: no {args.model} weights here "
            f"({exc}).\n!! Pass --weights PATH to a checkpoint, set "
            "SKTRANSFER_WEIGHTS to a folder of checkpoints named after their model, "
            "or run once online."
        )
        return None


def _print_table(args, raw, scratch, reuse, imagenet) -> None:
    """The test accuracy of each method (and the cut point it chose)."""
    header = "method (target task: digits 5-9)"
    print(f"\n{header:<46}{'cut point (CV)':<16}test accuracy")
    print("-" * 75)
    _print_row("raw pixels + logistic regression", "-", f"{raw:.3f}")
    _print_row(
        f"{SOURCE_MODEL} trained from scratch on the labels", "-", f"{scratch:.3f}"
    )
    _print_row(
        "source model (0-4), frozen + logistic reg.", str(reuse[0]), f"{reuse[2]:.3f}"
    )
    name = f"ImageNet {args.model}, frozen + logistic reg."
    if imagenet is not None:
        _print_row(name, str(imagenet[0]), f"{imagenet[2]:.3f}")
    else:
        _print_row(name, "skipped", "no weights")


def _print_row(name, choice, accuracy):
    print(f"{name:<46}{choice:<16}{accuracy}")
