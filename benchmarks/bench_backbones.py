"""The cost of the backbones recommended in ``docs/backbones.md``.

For each model: its parameters, the width of its default embedding, its
default input size (from the weights' ``pretrained_cfg``), and the images
per second of ``PretrainedFeatureExtractor(...).transform`` on this machine
in float32 (the CPU default) and bfloat16, from 256x256 uint8 arrays, with
the model's own preprocessing. DINOv2 models are also measured at 224x224
(``preprocessing={"resize_size": 256, "crop_size": 224}``), the input size
of their published linear-probe figures, as their default (518) costs about
5x more. Weights are random (``weights=None``): the time does not depend
on them, and nothing is downloaded. Each row: one warm-up call, then the
median of ``--repeats`` timed calls. The last lines give the hardware's
limit in the same run (a 4096x4096 matrix product).

Run: ``.venv/bin/python benchmarks/bench_backbones.py [--n 32]``; needs
``sktransfer[timm]``. Prints a Markdown table.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import matmul_tflops  # noqa: E402

#: (model, input size override or None), cheap to expensive within families
MODELS = [
    ("resnet50", None),
    ("timm/convnext_tiny.fb_in22k", None),
    ("timm/vit_small_patch16_224.dino", None),
    ("timm/vit_small_patch14_dinov2.lvd142m", None),
    ("timm/vit_small_patch14_dinov2.lvd142m", 224),
    ("timm/vit_small_patch14_reg4_dinov2.lvd142m", 224),
    ("timm/vit_base_patch14_dinov2.lvd142m", 224),
    ("timm/vit_base_patch16_clip_224.openai", None),
    ("timm/vit_base_patch16_siglip_224.webli", None),
    ("timm/vit_large_patch14_dinov2.lvd142m", 224),
    ("timm/vit_large_patch14_clip_224.openai", None),
]


def measure(model, size, X, precision, repeats):
    from sktransfer import PretrainedFeatureExtractor

    preprocessing = "auto" if size is None else {"resize_size": 256, "crop_size": size}
    extractor = PretrainedFeatureExtractor(
        model=model,
        weights=None,
        random_state=0,
        preprocessing=preprocessing,
        precision=precision,
        cache=None,
        batch_size=16,
        verbose=False,
    ).fit(X[:1])
    extractor.transform(X[:4])  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor.transform(X)
        times.append(time.perf_counter() - start)
    return extractor, len(X) / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import timm

    from sktransfer._identity import cpu_model

    print(
        f"# {time.strftime('%Y-%m-%d')} | CPU {cpu_model()} | "
        f"{torch.get_num_threads()} threads | torch {torch.__version__} | timm "
        f"{timm.__version__} | python {sys.version.split()[0]}"
    )
    X = np.random.default_rng(0).integers(0, 256, (args.n, 256, 256, 3), np.uint8)
    print("| model | params (M) | input | embedding | img/s float32 | img/s bfloat16 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, size in MODELS:
        extractor, fp32 = measure(model, size, X, "float32", args.repeats)
        _, bf16 = measure(model, size, X, "bfloat16", args.repeats)
        params = sum(p.numel() for p in extractor.network_.backbone.parameters())
        crop = extractor.preprocessing_.crop_size
        print(
            f"| `{model}` | {params / 1e6:.1f} | {crop} | "
            f"{extractor.n_features_out_} | {fp32:.1f} | {bf16:.1f} |"
        )
        sys.stdout.flush()
    for dtype in (torch.float32, torch.bfloat16):
        tflops = matmul_tflops(dtype, torch.device("cpu"))
        print(f"matmul 4096x4096 {dtype}: {tflops:.2f} TFLOP/s")


if __name__ == "__main__":
    main()
