"""
Throughput: batch size and precision
====================================

Images per second of :class:`~sktransfer.PretrainedFeatureExtractor` on the
machine that builds these pages, for a ResNet-18 at 112x112 with random
weights (the content of the weights does not change the time), in float32
and, where the CPU has bfloat16 instructions, in bfloat16. Measured at
build time: the figures are this machine's, and the measurement is short,
so take them as an illustration; ``benchmarks/bench_throughput.py`` measures
properly.
"""

import platform
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from sktransfer import PretrainedFeatureExtractor

X = np.random.default_rng(0).integers(0, 256, (96, 112, 112, 3), dtype=np.uint8)
precisions = ["float32"]
if (
    torch.backends.mkldnn.is_available()
    and torch.ops.mkldnn._is_mkldnn_bf16_supported()
):
    precisions.append("bfloat16")


def rate(batch_size, precision):
    extractor = PretrainedFeatureExtractor(
        model="resnet18", weights=None, batch_size=batch_size, precision=precision,
        preprocessing={"resize_size": 112, "crop_size": 112}, cache=None,
        verbose=False, random_state=0,
    ).fit(X[:2])  # fmt: skip
    extractor.transform(X[:16])  # warm-up
    start = time.perf_counter()
    extractor.transform(X)
    return len(X) / (time.perf_counter() - start)


sizes = [1, 8, 32]
fig, ax = plt.subplots(figsize=(6, 3.5))
for precision in precisions:
    rates = [rate(size, precision) for size in sizes]
    print(precision, [f"{r:.0f} img/s" for r in rates])
    ax.plot(sizes, rates, marker="o", label=precision)
ax.set_xscale("log", base=2)
ax.set_xlabel("batch_size")
ax.set_ylabel("images per second")
ax.set_title(
    f"ResNet-18, 112x112, {platform.machine()}, {torch.get_num_threads()} threads"
)
ax.legend()
fig.tight_layout()
