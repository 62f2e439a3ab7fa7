"""Embedding throughput from uint8 arrays: sktransfer versus its peers.

What is compared, in one process, on the same images, with the same weights
and on the same device:

- ``plain``: a plain torchvision loop: each batch of the uint8 array becomes a
  tensor, goes through ``weights.transforms()`` and the model with its head
  replaced by ``nn.Identity``, in float32 under ``torch.inference_mode``.
- ``img2vec``: ``img2vec_pytorch.Img2Vec.get_vec`` on a list of PIL images per
  batch (its documented use), float32.
- ``plain timm`` (for ``timm/...`` models): what timm documents: the
  model from ``timm.create_model(name, pretrained=True, num_classes=0)``, each
  image through the eval transform of ``timm.data.create_transform`` (a PIL
  image), batches in float32 under ``torch.inference_mode``.
- ``sktransfer float32`` and ``sktransfer bfloat16``:
  ``PretrainedFeatureExtractor(...).transform`` with ``precision="float32"``
  (the default on CPUs) and ``"bfloat16"`` (the opt-in speed mode on CPUs,
  the default on CUDA). The ratios are those of the default on the device.
- ``sktransfer int8`` (on the CPU, where ``sktransfer[int8]`` is installed):
  ``precision="int8"``, fitted (calibrated) on the ``--n`` images; the time
  of that ``fit`` is printed, and the ratio of int8 to bfloat16.

Data: ``--n`` random uint8 images of 256x256x3 (content does not change the
time). Weights: a seeded random state dict, saved in a temporary
``TORCH_HOME`` under the file names of the models' DEFAULT weights, so that
every contender loads the very same tensors offline (img2vec always asks for
DEFAULT weights); for timm models, in a temporary Hugging Face hub cache, in
the layout a download leaves. A ``timm/resnet50...`` also runs with
torchvision's resize (bilinear to 232, where its weights ask for bicubic to
235), to tell the network from the preprocessing; when ``resnet50`` is
measured too, the last lines compare sktransfer's default on the two. Each
contender runs once to warm up, then ``--repeats`` times, interleaved (each
contender once per round, so that a slow spell of a shared machine falls on
all alike); the median is reported in images per second, with the ratio of
sktransfer's default to each peer. The header names the CPU and the last
lines give the hardware's limit measured in the same run: a 4096x4096 matrix
product in float32 and bfloat16, in TFLOP/s (and in int8, in TOP/s, where
int8 runs). On CUDA, the fraction of
ResNet-50's physical limit (``shared/PERFORMANCE.md``: ~75k img/s by memory
traffic on an H100) is printed too.

``embetter`` (0.9.1) is not among the contenders: its ``TimmEncoder`` calls
``timm.create_model(name, pretrained=True)`` in its constructor, which
downloads the weights from the Hugging Face Hub, and it has no option for
local weights, so it does not run offline.

Run: ``.venv/bin/python benchmarks/bench_throughput.py [--models resnet18
resnet50 timm/resnet50.a1_in1k --n 256 --device auto]``. Needs ``pip
install -e ".[benchmarks]"`` for img2vec (skipped with a note when it is not
installed), ``sktransfer[timm]`` for timm models.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch
import torchvision

IMG2VEC_MODELS = {"resnet18", "resnet50", "efficientnet_b0"}
LIMIT_IMG_S = {"resnet50": 75_000}  # H100, memory-traffic bound, PERFORMANCE.md
#: ResNet50_Weights.IMAGENET1K_V2's resize, for timm's ResNet-50
TORCHVISION_RESIZE = {"resize_size": 232, "interpolation": "bilinear"}


def seed_weights(models, torch_home: Path):
    """Save seeded random weights where torch (timm: the Hugging Face hub)
    looks for DEFAULT weights."""
    for name in models:
        if name.startswith("timm/"):
            publish_timm(name, torch_home / "huggingface")
            continue
        weights = torchvision.models.get_model_weights(name).DEFAULT
        path = torch_home / "hub" / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
        torch.manual_seed(0)  # a benchmark may seed; the library never does
        state = torchvision.models.get_model(name, weights=None).state_dict()
        torch.save(state, path / filename)


def publish_timm(name, hub: Path):
    """Seeded random weights of a timm model, as a download leaves them in
    the hub cache (``HF_HUB_CACHE``)."""
    import safetensors.torch
    import timm

    full = timm.models.get_pretrained_cfg(name[len("timm/") :]).hf_hub_id
    folder = hub / f"models--{full.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(name[len("timm/") :], pretrained=False)
    safetensors.torch.save_file(
        model.state_dict(), folder / "snapshots" / revision / "model.safetensors"
    )


def plain_timm_loop(name, device, batch_size):
    import timm
    from PIL import Image

    model = timm.create_model(name[len("timm/") :], pretrained=True, num_classes=0)
    model = model.eval().to(device)
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)

    def run(X):
        out = []
        with torch.inference_mode():
            for i in range(0, len(X), batch_size):
                x = torch.stack(
                    [transform(Image.fromarray(a)) for a in X[i : i + batch_size]]
                )
                out.append(model(x.to(device)).float().cpu())
        return torch.cat(out).numpy()

    return run


def headless(name, device):
    """The model with DEFAULT weights, its head replaced by identity; its
    preprocessing preset."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=weights).eval().to(device)
    head = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent, _, leaf = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.Identity())
    return model, weights.transforms()


def plain_loop(name, device, batch_size):
    model, transforms = headless(name, device)

    def run(X):
        out = []
        with torch.inference_mode():
            for i in range(0, len(X), batch_size):
                x = torch.from_numpy(X[i : i + batch_size]).permute(0, 3, 1, 2)
                out.append(model(transforms(x.to(device))).float().cpu())
        return torch.cat(out).numpy()

    return run


def img2vec(name, device, batch_size):
    from img2vec_pytorch import Img2Vec
    from PIL import Image

    vectorizer = Img2Vec(cuda=device.type == "cuda", model=name)

    def run(X):
        out = []
        for i in range(0, len(X), batch_size):
            pil = [Image.fromarray(image) for image in X[i : i + batch_size]]
            out.append(vectorizer.get_vec(pil))
        return np.concatenate(out)

    return run


def sktransfer(
    name, device, batch_size, precision="auto", preprocessing="auto", fit_on=None
):
    from sktransfer import PretrainedFeatureExtractor

    extractor = PretrainedFeatureExtractor(
        model=name,
        batch_size=batch_size,
        device=str(device),
        precision=precision,
        preprocessing=preprocessing,
        cache=None,  # measure the network, not the cache
        verbose=False,
    )
    start = time.perf_counter()
    extractor.fit(np.zeros((1, 256, 256, 3), np.uint8) if fit_on is None else fit_on)
    FIT_SECONDS[(name, precision)] = time.perf_counter() - start
    return extractor.transform


FIT_SECONDS: dict = {}


def int8_available(device) -> bool:
    """Whether precision="int8" runs here: the CPU, ONNX Runtime installed."""
    if device.type != "cpu":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def measure_all(contenders, X, repeats):
    """Images per second of each contender: the median of ``repeats`` runs.

    The runs are interleaved (round after round, each contender once per
    round), so a slower spell of a shared machine falls on all alike.
    """
    for run in contenders.values():
        run(X[: min(len(X), 16)])  # warm up (allocators, kernels, cuDNN autotuning)
    times: dict = {label: [] for label in contenders}
    for _ in range(repeats):
        for label, run in contenders.items():
            start = time.perf_counter()
            run(X)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)
    return {label: len(X) / statistics.median(t) for label, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from sktransfer._device import dtype_name, resolve_device, resolve_precision
    from sktransfer._identity import cpu_model

    device = resolve_device(args.device)
    default = dtype_name(resolve_precision("auto", device))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(
        f"# {time.strftime('%Y-%m-%d')} | CPU {cpu_model()} | "
        f"{torch.get_num_threads()} CPU threads | GPU: {gpu} | torch "
        f"{torch.__version__} | torchvision {torchvision.__version__} | python "
        f"{sys.version.split()[0]} | device {device} | auto precision: {default}"
    )
    X = np.random.default_rng(0).integers(0, 256, (args.n, 256, 256, 3), np.uint8)
    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        # (read when huggingface_hub is imported: before timm is)
        os.environ["HF_HUB_CACHE"] = os.path.join(home, "huggingface")
        os.environ["HF_HUB_OFFLINE"] = "1"
        seed_weights(args.models, Path(home))
        print("| model | contender | img/s | sktransfer speed-up |")
        print("| --- | --- | --- | --- |")
        defaults, same_resize = {}, {}
        for name in args.models:
            if name.startswith("timm/"):
                plain = {"plain timm fp32": plain_timm_loop}
            else:
                plain = {"plain torchvision fp32": plain_loop}
            contenders = {
                label: make(name, device, args.batch_size)
                for label, make in plain.items()
            }
            if name in IMG2VEC_MODELS:
                try:
                    contenders["img2vec_pytorch"] = img2vec(
                        name, device, args.batch_size
                    )
                except ImportError:
                    print(f"| {name} | img2vec_pytorch | not installed | |")
            for precision in ("float32", "bfloat16"):
                contenders[f"sktransfer {precision}"] = sktransfer(
                    name, device, args.batch_size, precision
                )
            if int8_available(device):  # calibrated on the images it embeds
                contenders["sktransfer int8"] = sktransfer(
                    name, device, args.batch_size, "int8", fit_on=X
                )
            if name.startswith("timm/resnet50."):
                # the same network with torchvision's resnet50 preprocessing
                # (bilinear to 232, where timm's weights ask for bicubic to
                # 235): the difference to resnet50's row is the network's
                contenders[f"sktransfer {default}, torchvision's resize"] = sktransfer(
                    name, device, args.batch_size, default, TORCHVISION_RESIZE
                )
            rates = measure_all(contenders, X, args.repeats)
            mine = f"sktransfer {default}"
            ours = defaults[name] = rates[mine]
            same_resize[name] = rates.get(f"{mine}, torchvision's resize")
            for label, rate in rates.items():
                ratio = "" if label == mine else f"{ours / rate:.2f}x"
                if label == mine:
                    label += " (default)"
                print(f"| {name} | {label} | {rate:,.1f} | {ratio} |")
            if "sktransfer int8" in rates:
                ratio = rates["sktransfer int8"] / rates["sktransfer bfloat16"]
                print(f"| {name} | int8 against bfloat16 | {ratio:.2f}x | |")
                print(
                    f"| {name} | int8 fit: calibration on {len(X)} images, s | "
                    f"{FIT_SECONDS[(name, 'int8')]:.1f} | |"
                )
            if device.type == "cuda" and name in LIMIT_IMG_S:
                print(
                    f"| {name} | fraction of the ~{LIMIT_IMG_S[name]:,} img/s limit "
                    f"| {ours / LIMIT_IMG_S[name]:.1%} | |"
                )
            sys.stdout.flush()
        for name in defaults:
            if name.startswith("timm/resnet50.") and "resnet50" in defaults:
                print(
                    f"sktransfer {default}: {name} runs at "
                    f"{defaults[name] / defaults['resnet50']:.1%} of torchvision's "
                    f"resnet50; with torchvision's resize, at "
                    f"{same_resize[name] / defaults['resnet50']:.1%}"
                )
    for dtype in (torch.float32, torch.bfloat16):
        print(f"matmul 4096x4096 {dtype}: {matmul_tflops(dtype, device):.2f} TFLOP/s")
    if int8_available(device):
        print(f"matmul 4096x4096 int8 (torch._int_mm): {int8_tops():.2f} TOP/s")


def matmul_tflops(dtype, device, n=4096, repeats=5) -> float:
    """The hardware's limit for this dtype: the best of a large matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def int8_tops(n=4096, repeats=5) -> float:
    """The CPU's int8 limit: the best of a large int8 matmul (int32 sums)."""
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch._int_mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


if __name__ == "__main__":
    main()
