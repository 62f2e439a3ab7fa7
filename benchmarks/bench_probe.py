"""``sktransfer probe`` on 1,200 files: one pass per image per model, and
where the time goes.

Data: the first 1,200 of scikit-learn's digits written as 48x48 PNG files in
one folder per class (``digits_folder.py``), read back as files, at each
model's own preprocessing (224x224). Models, 6 cut points each, 5 folds:

- mobilenet_v2 with the real ImageNet checkpoint from ``../shared/weights``
  (random weights, ``random_state=0``, when it is absent);
- resnet18 and efficientnet_b0 with random weights (no download here; the
  time is the same as with trained weights).

Printed: the images each network saw (counted by ``probe``: a forward hook on
the extractor's network, fit's one-image probe included), the seconds of the
networks (decoding included) and of the 90 linear-probe fits, and the top of
the ranking. A second run of the probe on a directory cache shows a repeat
costs no network pass at all. Last, the linear probes of one cut point with
the default number of BLAS threads and with one (as ``probe`` runs them).

Run: ``.venv/bin/python benchmarks/bench_probe.py [--n 1200]``
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

import sktransfer
from sktransfer import load_image_folder, probe
from sktransfer._identity import cpu_model

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
LAYERS = {
    "mobilenet_v2": ["features.3", "features.6", "features.10", "features.13",
                     "features.16", None],
    "resnet18": ["layer1", "layer2", "layer3.0", "layer3", "layer4.0", None],
    "efficientnet_b0": ["features.2", "features.3", "features.4", "features.5",
                        "features.6", None],
}  # fmt: skip


def main() -> None:
    import sys

    sys.path.insert(0, str(HERE))
    from digits_folder import write_digits_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args()
    mobilenet = str(CHECKPOINT) if CHECKPOINT.exists() else "none"
    models = [f"mobilenet_v2:{mobilenet}", "resnet18:none", "efficientnet_b0:none"]
    with tempfile.TemporaryDirectory() as tmp:
        write_digits_folder(Path(tmp) / "digits", args.n)
        X, y = load_image_folder(Path(tmp) / "digits")
        cache = Path(tmp) / "cache"
        print(
            f"{len(X)} files, {len(set(y))} classes; {cpu_model()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        )
        for run in ("first", "repeat"):
            sktransfer.clear_caches()  # the repeat has the directory only
            start = time.perf_counter()
            result = probe(
                X, y, models=models, layers=LAYERS, cv=args.cv, cache=cache,
                verbose=False, log=print,
            )  # fmt: skip
            total = time.perf_counter() - start
            networks = sum(r["seconds"] for r in result.runs)
            print(f"\n{run} probe: {total:.1f} s in all")
            for r in result.runs:
                print(
                    f"  {r['model']:<16} {r['network_images']:>5} images through "
                    f"the network, {r['seconds']:.1f} s"
                )
            print(
                f"  networks {networks:.1f} s ({networks / total:.0%}), linear "
                f"probes {result.classifier_seconds:.1f} s "
                f"({result.classifier_seconds / total:.0%}), "
                f"{len(result.rows)} rows x {args.cv} folds"
            )
        print("\n" + "\n".join(result.table().splitlines()[:8]))
        blas_threads(X, y, cache, mobilenet)


def blas_threads(X, y, cache, weights) -> None:
    """5 folds of the linear probe on MobileNetV2's final embedding (1,280
    features), with one BLAS thread (as ``probe`` runs them) and with the
    default number."""
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from threadpoolctl import threadpool_info, threadpool_limits

    from sktransfer import PretrainedFeatureExtractor
    from sktransfer._probe import linear_probe

    features = PretrainedFeatureExtractor(
        model="mobilenet_v2", weights=None if weights == "none" else weights,
        random_state=0, cache=cache, verbose=False,
    ).fit_transform(X)  # fmt: skip
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    default = max(
        i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
    )
    print(f"\n5 folds of the linear probe on {features.shape} features:")
    for limit in (default, 1):
        with threadpool_limits(limits=limit, user_api="blas"):
            start = time.perf_counter()
            cross_validate(linear_probe(), features, y, cv=folds)
            print(f"  {limit} BLAS thread(s): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
