"""Fine-tuning throughput: training images per second per epoch.

``FineTunedClassifier`` on ``--n`` random uint8 images of 256x256 (resized
and cropped to 224 as the weights expect; content does not change the time)
with 10 classes, for each model, ``trainable_layers`` value and precision.
The time of one epoch is ``(t(3 epochs) - t(1 epoch)) / 2``, which leaves out
loading the network and the first-epoch warm-up. With ``trainable_layers=0``
the frozen backbone runs once and the head trains on its outputs, so further
epochs cost almost nothing: its "per epoch" figure is then the head alone,
and the one-off pass is reported as the first epoch.

Weights: seeded random tensors saved where torch looks for the DEFAULT
weights (see ``bench_throughput.py``), so that the run is offline.

Run: ``.venv/bin/python benchmarks/bench_training.py [--models resnet18
--n 128 --device auto]``.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import seed_weights  # noqa: E402


def fit_time(name, X, y, device, trainable, precision, epochs):
    from sktransfer import FineTunedClassifier

    clf = FineTunedClassifier(
        model=name,
        trainable_layers=trainable,
        precision=precision,
        max_epochs=epochs,
        batch_size=32,
        device=str(device),
        random_state=0,
        verbose=False,
    )
    start = time.perf_counter()
    clf.fit(X, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--trainable", nargs="+", default=["0", "2", "all"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "auto"])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from sktransfer._device import dtype_name, resolve_device, resolve_precision

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    auto = dtype_name(resolve_precision("auto", device))
    print(
        f"# {time.strftime('%Y-%m-%d')} | {platform.machine()} | "
        f"{os.cpu_count()} CPUs | GPU: {gpu} | torch {torch.__version__} | "
        f"torchvision {torchvision.__version__} | device {device} | auto "
        f"precision: {auto} | {args.n} images of 224x224, batch 32"
    )
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (args.n, 256, 256, 3), dtype=np.uint8)
    y = np.arange(args.n) % 10
    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        seed_weights(args.models, Path(home))
        print(
            "| model | trainable_layers | precision | fit with 1 epoch, s "
            "| each further epoch, s | img/s per further epoch |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name in args.models:
            for trainable in args.trainable:
                layers = trainable if trainable == "all" else int(trainable)
                for precision in args.precisions:
                    one = fit_time(name, X, y, device, layers, precision, 1)
                    three = fit_time(name, X, y, device, layers, precision, 3)
                    epoch = (three - one) / 2
                    shown = auto if precision == "auto" else precision
                    rate = f"{args.n / epoch:,.0f}" if epoch > 0.05 else "(head only)"
                    print(
                        f"| {name} | {trainable} | {shown} | {one:.1f} | "
                        f"{max(epoch, 0):.2f} | {rate} |"
                    )
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
