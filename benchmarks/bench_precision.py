"""Does reduced precision change the answer? float32 versus bf16 and fp16.

What is compared: embeddings of the real ImageNet MobileNetV2 checkpoint
(``../shared/weights``) computed with ``precision="float32"``, ``"bfloat16"``
and ``"float16"``, on scikit-learn's 1797 digits (upscaled to ``--size``)
and on its two sample photographs. Printed per precision: the relative
difference of each embedding to float32 (median and max of
``|e - e32| / |e32|``), the 5-fold CV accuracy of a standardised logistic
regression on the embeddings of two cut points, the top-1 ImageNet class of
the photographs with its probability, and the throughput of the extraction.

Run: ``.venv/bin/python benchmarks/bench_precision.py [--size 64]``
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits, load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor

SHARED = Path(__file__).resolve().parents[2] / "shared/weights"
WEIGHTS = SHARED / "mobilenet_v2_imagenet.pth"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        raise SystemExit(f"needs the real checkpoint at {WEIGHTS}")
    digits = load_digits()
    X = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target
    photos = np.stack(load_sample_images().images)  # china, flower: 427x640
    classes = (SHARED / "imagenet_classes.txt").read_text().splitlines()
    head = torch.load(WEIGHTS, weights_only=True)
    layers = ["features.13", None]
    print(f"MobileNetV2 (ImageNet), digits at {args.size}px, photos at 224px, CPU")
    print("| precision | layer | rel. diff median / max | 5-fold accuracy | img/s |")
    print("| --- | --- | --- | --- | --- |")
    reference = {}
    tops = {}
    for precision in ("float32", "bfloat16", "float16"):
        common = dict(
            model="mobilenet_v2",
            weights=str(WEIGHTS),
            precision=precision,
            cache=None,
            verbose=False,
        )
        extractor = PretrainedFeatureExtractor(
            layer=layers,
            preprocessing={"resize_size": args.size, "crop_size": args.size},
            **common,
        ).fit(X[:1])
        start = time.perf_counter()
        features = extractor.transform(X)
        rate = len(X) / (time.perf_counter() - start)
        names = extractor.get_feature_names_out().astype(str)
        for layer in layers:
            label = "embedding" if layer is None else layer
            cols = np.char.startswith(names, label + "_")
            emb = features[:, cols]
            reference.setdefault(label, emb)
            diff = np.linalg.norm(emb - reference[label], axis=1) / np.linalg.norm(
                reference[label], axis=1
            )
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            accuracy = cross_val_score(probe, emb, y, cv=5).mean()
            print(
                f"| {precision} | {label} | {np.median(diff):.4f} / {diff.max():.4f} "
                f"| {accuracy:.4f} | {rate:.0f} |"
            )
        photo = PretrainedFeatureExtractor(preprocessing="IMAGENET1K_V1", **common)
        logits = (
            torch.from_numpy(photo.fit_transform(photos))
            @ head["classifier.1.weight"].T
            + head["classifier.1.bias"]
        )
        probs = logits.softmax(1)
        tops[precision] = [
            f"{classes[int(p.argmax())]} ({float(p.max()):.3f})" for p in probs
        ]
    for precision, top in tops.items():
        print(f"{precision}: sample photos classified as {', '.join(top)}")


if __name__ == "__main__":
    main()
