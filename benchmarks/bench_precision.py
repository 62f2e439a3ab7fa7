"""Does reduced precision change the answer? float32 versus bf16, fp16, int8.

What is compared: embeddings computed with ``precision="float32"``,
``"bfloat16"``, ``"float16"`` and ``"int8"`` (where ``sktransfer[int8]`` is
installed; its ``fit`` calibrates on ``calibration_size=256`` evenly spaced
digits, without their labels, as a pipeline's fit would on its training
images) on scikit-learn's 1797 digits (upscaled to
``--size``), by MobileNetV2 with the real ImageNet checkpoint
(``../shared/weights``) and by any other ``--models`` with seeded random
weights (no other checkpoint is at hand offline; what is measured is whether
the lower precision changes the downstream answer of the same computation).
Printed per model, precision and cut point: the relative difference of each
embedding to float32 (median and max of ``|e - e32| / |e32|``); the 5-fold
cross-validated accuracy of a standardised logistic regression on the
embeddings; how many digits it classifies differently from the float32
embeddings (right in float32 but wrong here, and the reverse: McNemar's
counts; equal counts mean equal accuracy); and the extraction's throughput.
With the real checkpoint, the top-1 ImageNet class of scikit-learn's two
sample photographs with its probability (int8: calibrated on the two).

Run: ``.venv/bin/python benchmarks/bench_precision.py [--size 64]
[--models mobilenet_v2 resnet18 resnet50]``
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits, load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor
from sktransfer._identity import cpu_model

SHARED = Path(__file__).resolve().parents[2] / "shared/weights"
WEIGHTS = SHARED / "mobilenet_v2_imagenet.pth"
STAGE = {"mobilenet_v2": "features.13", "resnet18": "layer3", "resnet50": "layer3"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2"])
    parser.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16", "float16", "int8"]
    )
    args = parser.parse_args()
    if "int8" in args.precisions and not int8_available():
        print("int8 skipped: pip install 'sktransfer[int8]'")
        args.precisions.remove("int8")
    # (float32 first: the reference of the others)
    args.precisions = ["float32"] + [p for p in args.precisions if p != "float32"]
    digits = load_digits()
    X = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target
    cpu = cpu_model()
    print(f"digits at {args.size}px, photos at 224px, CPU: {cpu}")
    print(
        "| CPU | model | precision | layer | rel. diff median / max | 5-fold "
        "accuracy | right in fp32 only / here only | img/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    tops = {}
    for name in args.models:
        real = name == "mobilenet_v2"
        if real and not WEIGHTS.is_file():
            raise SystemExit(f"needs the real checkpoint at {WEIGHTS}")
        layers = [STAGE.get(name), None]
        label_model = name + (" (ImageNet)" if real else " (random weights)")
        reference: dict = {}
        for precision in args.precisions:
            common = dict(
                model=name,
                weights=str(WEIGHTS) if real else None,
                random_state=0,
                precision=precision,
                cache=None,
                verbose=False,
            )
            extractor = PretrainedFeatureExtractor(
                layer=layers,
                preprocessing={"resize_size": args.size, "crop_size": args.size},
                **common,
            ).fit(X if precision == "int8" else X[:1])
            start = time.perf_counter()
            features = extractor.transform(X)
            rate = len(X) / (time.perf_counter() - start)
            names = extractor.get_feature_names_out().astype(str)
            for layer in layers:
                label = "embedding" if layer is None else layer
                emb = features[:, np.char.startswith(names, label + "_")]
                probe = make_pipeline(
                    StandardScaler(), LogisticRegression(max_iter=2000)
                )
                right = cross_val_predict(probe, emb, y, cv=5) == y
                exact_emb, exact_right = reference.setdefault(label, (emb, right))
                diff = np.linalg.norm(emb - exact_emb, axis=1) / np.linalg.norm(
                    exact_emb, axis=1
                )
                print(
                    f"| {cpu} | {label_model} | {precision} | {label} | "
                    f"{np.median(diff):.4f}"
                    f" / {diff.max():.4f} | {right.mean():.4f} | "
                    f"{(exact_right & ~right).sum()} / {(right & ~exact_right).sum()}"
                    f" | {rate:.0f} |"
                )
            if real:
                tops[precision] = classify_photos(common)
    for precision, top in tops.items():
        print(f"{cpu}, mobilenet_v2, {precision}: sample photos classified as {top}")


def int8_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def classify_photos(common) -> str:
    """Top-1 ImageNet class of the two sample photos, with the checkpoint's
    own classifier on the extractor's embeddings."""
    photos = np.stack(load_sample_images().images)  # china, flower: 427x640
    classes = (SHARED / "imagenet_classes.txt").read_text().splitlines()
    head = torch.load(WEIGHTS, weights_only=True)
    photo = PretrainedFeatureExtractor(preprocessing="IMAGENET1K_V1", **common)
    with torch.no_grad():
        logits = (
            torch.from_numpy(photo.fit_transform(photos))
            @ head["classifier.1.weight"].T
            + head["classifier.1.bias"]
        )
        probs = logits.softmax(1)
    return ", ".join(
        f"{classes[int(p.argmax())]} ({float(p.max()):.3f})" for p in probs
    )


if __name__ == "__main__":
    main()
