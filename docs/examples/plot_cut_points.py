"""Which cut point transfers best? Accuracy against depth, from one grid search.

A grid search over every stage boundary of an ImageNet MobileNetV2 (plus its
final embedding) and the regularisation C of a logistic regression, on
scikit-learn's bundled 8x8 digits. ``cache_layers="stages"`` taps all cut
points in the same forward pass, so the 19 x 3 x 5 + 1 = 286 fits of the
search (``features.1`` to ``features.18`` and the embedding, 3 values of C,
5 folds, and the refit) run each image through the network once.

Run: ``.venv/bin/python docs/examples/plot_cut_points.py [--weights PATH]``
Writes ``docs/images/cut_points.png``.
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sktransfer import PretrainedFeatureExtractor, list_layers  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared/weights/mobilenet_v2_imagenet.pth"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--weights", default=str(SHARED) if SHARED.is_file() else "DEFAULT"
    )
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    digits = load_digits()
    X = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target
    stages = list(list_layers("mobilenet_v2", input_size=args.size))
    layers = stages[1:] + [None]  # features.1 .. features.18, embedding

    extractor = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=args.weights,
        preprocessing={"resize_size": args.size, "crop_size": args.size},
        cache_layers="stages",
        verbose=False,
    )
    pipe = make_pipeline(extractor, StandardScaler(), LogisticRegression(max_iter=1000))
    search = GridSearchCV(
        pipe,
        {
            "pretrainedfeatureextractor__layer": layers,
            "logisticregression__C": [0.01, 0.1, 1.0],
        },
        cv=5,
        n_jobs=1,
    )
    start = time.perf_counter()
    search.fit(X, y)
    print(
        f"{len(search.cv_results_['params']) * 5 + 1} fits in "
        f"{time.perf_counter() - start:.0f} s"
    )

    results = search.cv_results_
    best, spread = [], []
    for layer in layers:
        rows = [
            i
            for i, p in enumerate(results["params"])
            if p["pretrainedfeatureextractor__layer"] == layer
        ]
        i = max(rows, key=lambda r: results["mean_test_score"][r])
        best.append(results["mean_test_score"][i])
        spread.append(results["std_test_score"][i])
        print(f"{str(layer):>12}  {best[-1]:.3f} ± {spread[-1]:.3f}")

    raw = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        {"logisticregression__C": [0.01, 0.1, 1.0]},
        cv=5,
    ).fit(X.reshape(len(X), -1), y)

    labels = [str(layer).replace("features.", "") for layer in layers]
    labels[-1] = "emb."
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.errorbar(
        range(len(layers)),
        best,
        yerr=spread,
        marker="o",
        capsize=3,
        label="logistic regression on pooled features",
    )
    ax.axhline(
        raw.best_score_,
        color="grey",
        linestyle="--",
        label=f"raw pixels ({raw.best_score_:.3f})",
    )
    ax.set_xticks(range(len(layers)), labels, rotation=0, fontsize=8)
    ax.set_xlabel(
        "cut point: features.N of MobileNetV2, shallow to deep; emb. = layer=None"
    )
    ax.set_ylabel("5-fold CV accuracy (best C)")
    ax.set_title(
        "Digits: ImageNet features transfer best from the middle of the network"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = HERE.parent / "images" / "cut_points.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
