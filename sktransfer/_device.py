"""Where and in what precision networks run: the choice of device and dtype,
the settings each needs, and the layout of a network's weights.

The engine (``_engine``) and the training loop (``_training``) take a
resolved ``torch.device`` and ``torch.dtype`` from here and decide nothing
about them.
"""

from __future__ import annotations

import contextlib
from typing import TypeVar

import torch

from sktransfer.exceptions import DeviceWarning, warn

__all__ = [
    "PRECISIONS",
    "autocast",
    "cudnn_settings",
    "dtype_name",
    "prepare_network",
    "resolve_device",
    "resolve_precision",
    "restore_device",
]

PRECISIONS = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; other values are checked."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            "The 'device' parameter must be 'auto', 'cpu', 'cuda', 'cuda:N' or "
            f"'mps'. Got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"The 'device' parameter is {device!r} but CUDA is not available on "
            "this machine. Use device='auto' or 'cpu'."
        )
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"The 'device' parameter is {device!r} but MPS is not available on "
            "this machine. Use device='auto' or 'cpu'."
        )
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype; ``"auto"`` is float32 except on CUDA.

    CUDA: bfloat16 where supported (Ampere and later), else float16: what GPU
    users expect, several times faster. CPU and MPS: float32, whose rows
    agree across machines to about 1e-6; bfloat16 kernels differ between
    CPUs (AMX against AVX512-BF16) by several percent of a row.
    """
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def restore_device(name: str, what: str) -> torch.device:
    """The device of an unpickled estimator: the CPU, with a warning, if it
    was fitted on CUDA and none is available here."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        warn(
            f"This {what} was fitted on CUDA, which is not available here; it "
            "will run on the CPU.",
            DeviceWarning,
        )
        device = torch.device("cpu")
    return device


_Module = TypeVar("_Module", bound=torch.nn.Module)


def prepare_network(net: _Module) -> _Module:
    """Lay out convolution weights channels_last (faster on CPU and GPU),
    in place. Only 4-D tensors: ``Module.to(memory_format=...)`` also
    converts 5-D buffers, and fails on them (timm's Swin has some)."""
    with torch.no_grad():
        for tensor in (*net.parameters(), *net.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return net


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device`` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cudnn_settings(device: torch.device, dtype: torch.dtype):
    """cuDNN for the duration of one call only: autotuned kernels, and for
    float32 no TF32 (10-bit mantissas in convolutions, which PyTorch allows
    by default and which move rows by about 1e-3): ``precision="float32"``
    means float32. Matrix products follow
    ``torch.backends.cuda.matmul.allow_tf32`` (off unless the user set it)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=not cudnn.deterministic,
        deterministic=cudnn.deterministic,
        allow_tf32=cudnn.allow_tf32 and dtype != torch.float32,
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``: the key of :data:`PRECISIONS`."""
    return str(dtype).removeprefix("torch.")
