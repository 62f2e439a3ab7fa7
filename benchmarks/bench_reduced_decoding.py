"""Does reduced JPEG decoding change the answer? Full against reduced decodes
of big photos.

What is compared: embeddings of the same ``--n`` JPEGs of ``--megapixels``
MP, by MobileNetV2 with the real ImageNet checkpoint (``../shared/weights``),
in float32, with the files decoded in full (``reduced_decoding=False``) and
reduced (the default: libjpeg's DCT scaling to 1/2, 1/4 or 1/8, never below
the resize target). For scale, the same full decodes embedded in bfloat16,
the difference that the docs already accept as harmless to accuracy.

Data, made offline: scikit-learn's two sample photographs, each with 8
overlapping regions (4 across, 60 pixels apart; 2 down, 80 apart); a class
is a region (16 classes). Each photo is a crop of its region jittered by up
to 40 pixels (so neighbouring classes overlap), maybe flipped, recoloured,
upscaled to the target size with fine grain added (``--grain`` levels),
saved at JPEG quality 90.

Printed, per cut point: the relative difference of each embedding to the
full-decode float32 one (median, 90th percentile and max of
``|e - e_full| / |e_full|``), the 5-fold cross-validated accuracy of a
standardised logistic regression, and McNemar's counts against the full
decode (right there only / right here only; equal counts mean equal
accuracy). Also the transform's files/s for each.

``--gap`` sets how many times the resize target a reduced decode keeps (the
library's ``REDUCING_GAP``, 2); ``--gap 1`` decodes down to the target.

Run: ``.venv/bin/python benchmarks/bench_reduced_decoding.py [--n 192
--megapixels 12 --grain 5 --gap 2]``
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor
from sktransfer._identity import cpu_model
from sktransfer._images import decode as _decode

WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet.pth"
)
LAYERS = ["features.13", None]
GRAIN = 5.0  # std of the fine grain added back, in levels


def labelled_photos(folder: Path, n: int, megapixels: float, grain=GRAIN, seed=0):
    """``n`` JPEGs in 16 classes (a region of a sample photo each) and labels."""
    photos = load_sample_images().images  # two 427x640 photos
    rng = np.random.default_rng(seed)
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = width * 3 // 4
    paths, labels = [], []
    for i in range(n):
        label = i % 16
        photo = photos[label // 8]
        top = 80 * ((label % 8) // 4)
        left = 60 * (label % 4)
        dy, dx = rng.integers(0, 41, 2)
        crop = photo[top + dy : top + dy + 160, left + dx : left + dx + 213]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.clip(crop * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        big = Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, grain, (height, width, 1)).astype(np.float32)
        pixels = np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
        labels.append(label)
    return paths, np.asarray(labels)


def embed(paths, **params):
    extractor = PretrainedFeatureExtractor(
        model="mobilenet_v2",
        weights=str(WEIGHTS),
        layer=LAYERS,
        cache=None,
        verbose=False,
        **params,
    ).fit(paths[:1])
    start = time.perf_counter()
    features = extractor.transform(paths)
    rate = len(paths) / (time.perf_counter() - start)
    names = extractor.get_feature_names_out().astype(str)
    split = {}
    for layer in LAYERS:
        label = "embedding" if layer is None else layer
        split[label] = features[:, np.char.startswith(names, label + "_")]
    return split, rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--grain", type=float, default=GRAIN)
    parser.add_argument(
        "--gap",
        type=int,
        default=_decode.REDUCING_GAP,
        help="decode reduced to at least this many times the resize target",
    )
    args = parser.parse_args()
    _decode.REDUCING_GAP = args.gap  # (read at each decode)
    if not WEIGHTS.is_file():
        raise SystemExit(f"needs the real checkpoint at {WEIGHTS}")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths, y = labelled_photos(Path(folder), args.n, args.megapixels, args.grain)
        with Image.open(paths[0]) as image:
            size = image.size
        made = time.perf_counter() - start
        print(
            f"CPU: {cpu_model()}; {args.n} photos of {size[0]}x{size[1]} in 16 "
            f"classes, grain {args.grain}, written in {made:.0f} s"
        )
        runs = {
            "full decode, float32": embed(paths, reduced_decoding=False),
            "reduced decode, float32 (default)": embed(paths),
            "full decode, bfloat16": embed(
                paths, reduced_decoding=False, precision="bfloat16"
            ),
        }
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print(
        "| decoding, precision | layer | rel. diff to full fp32: median / p90 / "
        "max | 5-fold accuracy | right in full only / here only | files/s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    reference = runs["full decode, float32"][0]
    for label, (features, rate) in runs.items():
        for layer, emb in features.items():
            exact = reference[layer]
            diff = np.linalg.norm(emb - exact, axis=1) / np.linalg.norm(exact, axis=1)
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
            right = cross_val_predict(probe, emb, y, cv=folds) == y
            base = cross_val_predict(probe, exact, y, cv=folds) == y
            print(
                f"| {label} | {layer} | {np.median(diff):.4f} / "
                f"{np.quantile(diff, 0.9):.4f} / {diff.max():.4f} | "
                f"{right.mean():.4f} | {(base & ~right).sum()} / "
                f"{(right & ~base).sum()} | {rate:.1f} |"
            )


if __name__ == "__main__":
    main()
