"""Embedding throughput from a folder of JPEG files, and memory over many files.

Throughput (the default): images per second from JPEG paths to embeddings,
in one process, on the same files, with the same weights, on the same device:

- ``plain``: the usual torchvision loop: each file opened with Pillow,
  converted to RGB and put through ``weights.transforms()`` one by one, the
  batch stacked and run in float32 through the model with its head replaced
  by ``nn.Identity``;
- ``img2vec``: Pillow images opened from the files, a batch at a time, given
  to ``img2vec_pytorch.Img2Vec.get_vec`` (its documented use);
- ``sktransfer``: ``PretrainedFeatureExtractor(...).transform(paths)`` with
  default settings (decoding on worker threads, float32 on CPUs, large
  JPEGs decoded reduced), and the same with ``precision="bfloat16"``.

The files are ``--n`` generated photos-like JPEGs (smooth colour fields with
grain, quality 90) of ``--size`` pixels, 500x375 by default, each different.

Big photos (``--megapixels M``, e.g. 12 or 24): the files are made from
scikit-learn's two sample photographs instead, cropped, flipped, recoloured,
tiled 2x2 and upscaled to M megapixels (4:3) with fine grain added back
(:func:`make_photos`), quality 90. The contenders are then the plain loop,
img2vec, sktransfer's default (reduced decoding) and sktransfer with
``reduced_decoding=False``; a last row gives sktransfer's default on
``--n`` 0.2-megapixel files (500x375) for comparison. With ``--memory N``,
the memory child runs on N such photos, with and without reduced decoding.
Weights are seeded random tensors saved where torch looks for the DEFAULT
weights (see ``bench_throughput.py``), so every contender loads the same
tensors offline. The embedding cache is off. Each contender runs once to warm
up, then ``--repeats`` times; the median is reported.

Memory (``--memory N``): a fresh process embeds N generated files with the
default extractor and reports its peak resident memory above what it held
after ``fit`` and a warm-up, next to the size of the output array and the
size all the decoded images would have had.

Run: ``.venv/bin/python benchmarks/bench_files.py [--models resnet18
resnet50 --n 256]`` or ``.venv/bin/python benchmarks/bench_files.py
--memory 5000``. img2vec needs ``pip install -e ".[benchmarks]"``.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import (  # noqa: E402
    IMG2VEC_MODELS,
    headless,
    measure_all,
    seed_weights,
)


def make_jpegs(folder: Path, n: int, size=(500, 375), seed=0) -> list[str]:
    """Write ``n`` different photo-like JPEGs; return their paths."""
    rng = np.random.default_rng(seed)
    width, height = size
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        field = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 6, (height, width, 3))
        pixels = np.clip(np.asarray(field) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def make_photos(folder: Path, n: int, megapixels: float, seed=0) -> list[str]:
    """Write ``n`` different photo-like JPEGs of about ``megapixels`` MP (4:3)
    made from scikit-learn's sample photos; return their paths."""
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = width * 3 // 4
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        tiles = []
        for _ in range(4):
            photo = sources[rng.integers(len(sources))]
            left, top = rng.integers(0, 200), rng.integers(0, 120)
            tile = photo.crop((left, top, left + 400, top + 300))
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            gain = rng.uniform(0.7, 1.3, 3)
            tile = np.clip(np.asarray(tile, np.float32) * gain, 0, 255)
            tiles.append(tile.astype(np.uint8))
        mosaic = np.concatenate(
            [np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)]
        )
        big = Image.fromarray(mosaic).resize((width, height), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 5, (height, width, 1)).astype(np.float32)
        pixels = np.clip(np.asarray(big, np.float32) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def plain_loop(name, device, batch_size):
    model, transforms = headless(name, device)

    def run(paths):
        out = []
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                batch = []
                for path in paths[i : i + batch_size]:
                    with Image.open(path) as image:
                        batch.append(transforms(image.convert("RGB")))
                out.append(model(torch.stack(batch).to(device)).float().cpu())
        return torch.cat(out).numpy()

    return run


def img2vec(name, device, batch_size):
    from img2vec_pytorch import Img2Vec

    vectorizer = Img2Vec(cuda=device.type == "cuda", model=name)

    def run(paths):
        out = []
        for i in range(0, len(paths), batch_size):
            images = [Image.open(path) for path in paths[i : i + batch_size]]
            out.append(vectorizer.get_vec(images))
            for image in images:
                image.close()
        return np.concatenate(out)

    return run


def sktransfer(name, device, batch_size, precision, paths, reduced=True):
    from sktransfer import PretrainedFeatureExtractor

    extractor = PretrainedFeatureExtractor(
        model=name,
        batch_size=batch_size,
        device=str(device),
        precision=precision,
        reduced_decoding=reduced,
        cache=None,  # measure decoding and the network, not the cache
        verbose=False,
    )
    return extractor.fit(paths[:1]).transform


def peers(name, device) -> dict:
    """The contenders that are not sktransfer: the plain loop and img2vec."""
    contenders = {"plain torchvision fp32": plain_loop(name, device, 64)}
    if name in IMG2VEC_MODELS:
        try:
            contenders["img2vec_pytorch"] = img2vec(name, device, 64)
        except ImportError:
            print(f"| {name} | img2vec_pytorch | not installed | |")
    return contenders


def throughput(args, device):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TORCH_HOME"] = str(tmp / "torch")
        seed_weights(args.models, tmp / "torch")
        if args.megapixels:
            return big_photos(args, device, tmp)
        paths = make_jpegs(tmp / "jpegs", args.n, tuple(args.size))
        kilobytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e3
        print(
            f"# {args.n} JPEGs of {args.size[0]}x{args.size[1]}, "
            f"{kilobytes:.0f} KB each on average"
        )
        print("| model | contender | img/s | sktransfer speed-up |")
        print("| --- | --- | --- | --- |")
        for name in args.models:
            contenders = peers(name, device)
            for label, precision in (("bf16", "bfloat16"), ("(default)", "auto")):
                contenders[f"sktransfer {label}"] = sktransfer(
                    name, device, args.batch_size, precision, paths
                )
            rates = measure_all(contenders, paths, args.repeats)
            ours = rates["sktransfer (default)"]
            for label, rate in rates.items():
                ratio = "" if label == "sktransfer (default)" else f"{ours / rate:.2f}x"
                print(f"| {name} | {label} | {rate:,.1f} | {ratio} |")
            sys.stdout.flush()


def big_photos(args, device, tmp: Path):
    start = time.perf_counter()
    paths = make_photos(tmp / "photos", args.n, args.megapixels)
    small = make_jpegs(tmp / "small", args.n)
    made = time.perf_counter() - start
    with Image.open(paths[0]) as image:
        size = image.size
    megabytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
    print(
        f"# {args.n} photos of {size[0]}x{size[1]} ({args.megapixels} MP, "
        f"{megabytes:.1f} MB each on average), written in {made:.0f} s; and "
        f"{args.n} JPEGs of 500x375 (0.2 MP)"
    )
    print("| model | contender | files/s | sktransfer speed-up |")
    print("| --- | --- | --- | --- |")
    for name in args.models:
        contenders = peers(name, device)
        bs = args.batch_size
        contenders["sktransfer, reduced_decoding=False"] = sktransfer(
            name, device, bs, "auto", paths, reduced=False
        )
        contenders["sktransfer (default)"] = sktransfer(name, device, bs, "auto", paths)
        rates = measure_all(contenders, paths, args.repeats)
        ours = rates["sktransfer (default)"]
        for label, rate in rates.items():
            ratio = "" if label == "sktransfer (default)" else f"{ours / rate:.2f}x"
            print(f"| {name} | {label}, {args.megapixels} MP | {rate:,.1f} | {ratio} |")
        small_rate = measure_all(
            {"small": sktransfer(name, device, bs, "auto", small)}, small, args.repeats
        )["small"]
        print(
            f"| {name} | sktransfer (default), 0.2 MP | {small_rate:,.1f} | "
            f"{args.megapixels} MP at {ours / small_rate:.0%} of its files/s |"
        )
        sys.stdout.flush()


MEMORY_CHILD = """
import resource, sys, numpy as np
from sktransfer import PretrainedFeatureExtractor, list_images
paths = list_images(sys.argv[1])
extractor = PretrainedFeatureExtractor(model=sys.argv[2], cache=None,
                                       device=sys.argv[3], verbose=False,
                                       reduced_decoding=sys.argv[4] == "1")
extractor.fit(paths[:1]).transform(paths[:64])  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = extractor.transform(paths)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert np.isfinite(out).all() and len(out) == len(paths)
print(before, after, out.nbytes)
"""


def memory(args, device):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, TORCH_HOME=str(tmp / "torch"))
        os.environ["TORCH_HOME"] = env["TORCH_HOME"]
        seed_weights(args.models[:1], tmp / "torch")
        start = time.perf_counter()
        if args.megapixels:
            paths = make_photos(tmp / "jpegs", args.memory, args.megapixels)
        else:
            paths = make_jpegs(tmp / "jpegs", args.memory, tuple(args.size))
        made = time.perf_counter() - start
        with Image.open(paths[0]) as image:
            width, height = image.size
        print(
            f"# {len(paths)} JPEGs of {width}x{height} written in {made:.0f} s; "
            f"embedded with {args.models[0]} in a fresh process each"
        )
        print(
            "| decoding | seconds | peak RSS after fit and warm-up (MB) | after "
            "transform (MB) | growth (MB) |"
        )
        print("| --- | --- | --- | --- | --- |")
        for reduced in (True, False):
            start = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    MEMORY_CHILD,
                    str(tmp / "jpegs"),
                    args.models[0],
                    str(device),
                    "1" if reduced else "0",
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            took = time.perf_counter() - start
            before, after, out_bytes = map(int, result.stdout.split())
            label = "reduced (default)" if reduced else "full"
            print(
                f"| {label} | {took:.0f} | {before / 1e3:,.0f} | {after / 1e3:,.0f} "
                f"| {(after - before) / 1e3:,.0f} |"
            )
        decoded = len(paths) * width * height * 3
        print(
            f"output array: {out_bytes / 1e6:,.1f} MB; all images decoded at "
            f"once (uint8, full size): {decoded / 1e6:,.0f} MB"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--size", type=int, nargs=2, default=[500, 375])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory", type=int, default=0, metavar="N")
    parser.add_argument(
        "--megapixels", type=float, default=0, help="big photos of this size"
    )
    args = parser.parse_args()

    from sktransfer._device import dtype_name, resolve_device, resolve_precision
    from sktransfer._identity import cpu_model

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(
        f"# {time.strftime('%Y-%m-%d')} | CPU {cpu_model()} | "
        f"{os.cpu_count()} CPUs | GPU: {gpu} | torch {torch.__version__} | "
        f"torchvision {torchvision.__version__} | Pillow {Image.__version__} | "
        f"device {device} | auto precision: "
        f"{dtype_name(resolve_precision('auto', device))}"
    )
    if args.memory:
        memory(args, device)
    else:
        throughput(args, device)


if __name__ == "__main__":
    main()
