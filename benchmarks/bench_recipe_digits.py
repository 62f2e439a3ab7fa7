"""The whole recipe on a real labelled image set (issue 31).

Data: scikit-learn's handwritten digits (1,797 real scanned 8x8 images,
bundled, no download), scaled to ``--size`` pixels, RGB. ``--train`` images
(stratified) are for choosing and training; the others are the test set.
Model: MobileNetV2 with real ImageNet weights (``../shared/weights``).

1. ``sktransfer.probe(..., finetune=True)`` on the training images, 3-fold
   CV: the linear probe at each cut point, and the recipe
   (``FineTunedClassifier``: kept layers frozen under a linear head and a
   hidden layer of 256; then the best of these with its last kept stages
   trainable). Its plot is saved as ``docs/images/recipe_digits.png``.
2. At the cut point each method ranked best in (1), fitted on all training
   images, scored on the test images, timed (fit + predict):
   (a) extractor + StandardScaler + LogisticRegression,
   (b) FineTunedClassifier with a hidden layer of 256, kept layers frozen,
   (c) the same with the last kept stage trainable.
3. A regression task from the same real images: predict the digit's value
   (0-9, a number) with ``FineTunedRegressor`` (hidden layer of 256, frozen,
   at (b)'s cut point); R^2 on the test images, against ridge regression on
   the raw pixels and against predicting the mean (R^2 = 0).

Run: ``.venv/bin/python benchmarks/bench_recipe_digits.py``; prints the CPU,
the probe's table and one line per method.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    FineTunedClassifier,
    FineTunedRegressor,
    PretrainedFeatureExtractor,
    probe,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
CUTS = ["features.3", "features.6", "features.10", "features.13", None]


def cpu() -> str:
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"]
    present = [flag for flag in wanted if flag in flags]
    return f"{name}, {torch.get_num_threads()} threads, {present}"


def timed(estimator, X_train, y_train, X_test):
    start = time.perf_counter()
    estimator.fit(X_train, y_train)
    predicted = estimator.predict(X_test)
    return predicted, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    if not WEIGHTS.exists():
        raise SystemExit(f"{WEIGHTS} is needed (real ImageNet weights).")
    digits = load_digits()
    X = np.round(digits.images * (255 / 16)).astype(np.uint8)
    X = np.repeat(X[..., None], 3, axis=-1)
    y = digits.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=args.train, stratify=y, random_state=0
    )
    size = {"resize_size": args.size, "crop_size": args.size}
    common = dict(model="mobilenet_v2", weights=str(WEIGHTS), preprocessing=size)
    tuned = dict(max_epochs=args.epochs, random_state=0, verbose=False, **common)
    print(f"CPU: {cpu()}; torch {torch.__version__}")
    print(f"digits: {len(X_train)} training images, {len(X_test)} test, {args.size} px")

    start = time.perf_counter()
    result = probe(
        X_train, y_train, models=[f"mobilenet_v2:{WEIGHTS}"], layers=CUTS, cv=3,
        finetune=True, finetune_epochs=args.epochs, preprocessing=size,
        verbose=False,
    )  # fmt: skip
    print(result.table())
    print(f"probe with --finetune: {time.perf_counter() - start:.1f} s")
    import matplotlib

    matplotlib.use("Agg")
    ax = result.plot()
    ax.set_title("The recipe on digits: accuracy against the kept layers")
    out = ROOT / "docs" / "images" / "recipe_digits.png"
    ax.figure.savefig(out, dpi=110)
    print(f"plot: {out.relative_to(ROOT)}")

    def best(method, head=None, trainable=None):
        rows = [
            r
            for r in result.rows
            if r["method"] == method
            and (head is None or tuple(r["hidden_layer_sizes"] or ()) == head)
            and (trainable is None or r["trainable_layers"] == trainable)
        ]
        return rows[0]  # (ranked best first)

    a, b = best("linear probe"), best("fine-tuned", (256,), 0)
    c = best("fine-tuned", trainable=1)
    methods = {
        "(a) extractor + logistic regression": (
            a,
            make_pipeline(
                PretrainedFeatureExtractor(layer=a["layer"], verbose=False, **common),
                StandardScaler(),
                LogisticRegression(max_iter=1000),
            ),
        ),
        "(b) cut classifier + hidden 256, frozen": (
            b,
            FineTunedClassifier(layer=b["layer"], hidden_layer_sizes=(256,), **tuned),
        ),
        "(c) the same, last kept stage trainable": (
            c,
            FineTunedClassifier(
                layer=c["layer"],
                hidden_layer_sizes=tuple(c["hidden_layer_sizes"] or ()),
                trainable_layers=1,
                **tuned,
            ),
        ),
    }
    for name, (row, estimator) in methods.items():
        predicted, seconds = timed(estimator, X_train, y_train, X_test)
        accuracy = float(np.mean(predicted == y_test))
        print(
            f"{name}: cut {row['layer'] or 'final'} (CV {row['cv_accuracy']:.3f}); "
            f"test accuracy {accuracy:.3f}; fit + predict {seconds:.1f} s"
        )

    value = y.astype(np.float32)  # the digit's value, as a number
    v_train, v_test = y_train.astype(np.float32), y_test.astype(np.float32)
    regressor = FineTunedRegressor(layer=b["layer"], hidden_layer_sizes=(256,), **tuned)
    predicted, seconds = timed(regressor, X_train, v_train, X_test)
    r2 = 1 - np.sum((predicted - v_test) ** 2) / np.sum((v_test - v_test.mean()) ** 2)
    flat = lambda images: images[..., 0].reshape(len(images), -1) / 255.0  # noqa: E731
    ridge = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(flat(X_train), v_train)
    print(
        f"regression, the digit's value (std {value.std():.2f}): FineTunedRegressor "
        f"at {b['layer'] or 'final'} R^2 {r2:.3f} ({seconds:.1f} s); ridge on raw "
        f"pixels R^2 {ridge.score(flat(X_test), v_test):.3f}; the mean: R^2 0"
    )


if __name__ == "__main__":
    main()
