"""Where and in what precision networks run: the choice of device and dtype,
the settings each needs, and the layout of a network's weights.

The engine (``_engine``) and the training loop (``_training``) take a
resolved ``torch.device`` and ``torch.dtype`` from here and decide nothing
about them.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, TypeVar

import torch

from sktransfer.exceptions import DeviceWarning, warn

__all__ = [
    "PRECISIONS",
    "autocast",
    "cuda_index",
    "cudnn_settings",
    "dtype_name",
    "prepare_network",
    "resolve_device",
    "resolve_precision",
    "fitted_runtime",
    "own_stream",
    "restore_runtime",
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
        return torch.bfloat16 if _native_bf16(device) else torch.float16
    return torch.float32


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` (not the current GPU) computes bfloat16 natively:
    Ampere (sm80) and later. ``torch.cuda.is_bf16_supported()`` counts
    emulation by default (True on a T4 or V100, where bf16 is several times
    slower than float16) and asks about the current device."""
    chosen = (
        contextlib.nullcontext() if device.index is None else torch.cuda.device(device)
    )
    with chosen:  # (is_bf16_supported asks about the current device)
        check = torch.cuda.is_bf16_supported
        if "including_emulation" in inspect.signature(check).parameters:
            return bool(check(including_emulation=False))
        return torch.cuda.get_device_capability(device) >= (8, 0)


#: Where an estimator that fell back to the CPU when unpickled keeps what it
#: was fitted with, to pickle again: a copy that goes back to a GPU machine
#: (a Dask client without CUDA scattering it to GPU workers) runs on CUDA.
FITTED_DEVICE = "_fitted_device"
FITTED_PRECISION = "_fitted_precision"


def restore_runtime(state: dict, what: str) -> None:
    """Set ``device_`` (and ``precision_``) of an unpickled estimator's
    ``state`` to what runs here, keeping what it was fitted with.

    Without CUDA, a CUDA-fitted estimator runs on the CPU (with a
    :class:`DeviceWarning`), and with ``precision="auto"`` in float32, what
    ``"auto"`` means on a CPU (a GPU's bfloat16 or float16 autocast is slow
    on most CPUs). Its pickle still says CUDA and the fitted precision
    (:func:`fitted_runtime`), so a copy sent on to a GPU machine runs there.
    """
    name = state.pop(FITTED_DEVICE, None) or state["device_"]
    fitted_precision = state.pop(FITTED_PRECISION, None) or state.get("precision_")
    fitted = torch.device(name)
    if fitted.type == "cuda" and not torch.cuda.is_available():
        auto = state.get("precision") == "auto" and fitted_precision in (
            "bfloat16",
            "float16",
        )
        warn(
            f"This {what} was fitted on CUDA, which is not available here; it "
            "will run on the CPU"
            + (
                f" in float32 (precision='auto' ran {fitted_precision} there)"
                if auto
                else ""
            )
            + ". Pickled again, it runs on CUDA where CUDA is available.",
            DeviceWarning,
        )
        state[FITTED_DEVICE] = str(fitted)
        state["device_"] = torch.device("cpu")
        if auto:
            state[FITTED_PRECISION] = fitted_precision
            state["precision_"] = "float32"
        return
    if fitted.type == "cuda" and (fitted.index or 0) >= torch.cuda.device_count():
        here = torch.device("cuda", torch.cuda.current_device())
        warn(
            f"This {what} was fitted on {fitted}, but this machine has "
            f"{torch.cuda.device_count()} visible GPU(s); it will run on {here}. "
            f"Pickled again, it runs on {fitted} where that GPU exists.",
            DeviceWarning,
        )
        state[FITTED_DEVICE] = str(fitted)
        state["device_"] = here
        return
    state["device_"] = fitted


_STREAMS = threading.local()


def own_stream(device: torch.device, purpose: str):
    """A CUDA stream on ``device`` of this thread's own, one per ``purpose``
    (``"decode"``, ``"copy"``): made at the first call, then reused. Each
    thread has its own, so that threads (Dask workers) never wait for each
    other's work."""
    streams = vars(_STREAMS).setdefault("streams", {})
    key = (purpose, device.type, device.index)
    if key not in streams:
        streams[key] = torch.cuda.Stream(device)
    return streams[key]


def cuda_index(device: torch.device) -> int:
    """The index of a CUDA device; ``"cuda"`` alone is the current one (not
    always 0: ``torch.cuda.set_device`` moves it)."""
    return torch.cuda.current_device() if device.index is None else device.index


def fitted_runtime(state: dict) -> None:
    """The pickled ``device_`` and ``precision_`` of a ``__getstate__``
    state: those it was fitted with (see :func:`restore_runtime`)."""
    name = state.pop(FITTED_DEVICE, None)
    state["device_"] = name or str(state["device_"])
    precision = state.pop(FITTED_PRECISION, None)
    if precision is not None:
        state["precision_"] = precision


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


class _CudnnFlags:
    """cuDNN's process-wide flags, shared by the calls that run at once.

    The first call to enter saves the flags, the last to leave restores
    them, and in between: autotuning while a call that asks for it runs
    (unless the user asked for deterministic kernels), else the user's
    setting; and no TF32 in convolutions while a float32 call runs. (TF32
    changes only float32 convolutions: under bf16/fp16 autocast they do not
    run in float32, so a reduced-precision call sharing these flags
    computes what it would alone.) Threads (Dask workers, the threaded
    scheduler, joblib) enter and leave in any order under one lock.

    TF32 is read and written without mixing PyTorch's two APIs: the legacy
    ``torch.backends.cudnn.allow_tf32`` while it can be read, else (the
    user set the new ``torch.backends.cudnn.conv.fp32_precision`` of torch
    >= 2.9 apart from it, after which reading the legacy flag raises) the
    new one (:meth:`_read_tf32`).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._calls = 0
        self._float32_calls = 0
        self._tuned_calls = 0
        self._saved: tuple | None = None

    @staticmethod
    def _read_tf32() -> tuple:
        """The user's TF32 setting for convolutions, as ``(legacy, new)``.

        ``legacy``: ``torch.backends.cudnn.allow_tf32``, or None where
        reading it raises: torch >= 2.9 keeps it apart from the new
        ``fp32_precision`` flags, and refuses to read it once those were set
        to disagree with it (a mix of the two APIs). ``new``: the
        ``fp32_precision`` of the convolutions and RNNs (None before torch
        2.9).
        """
        cudnn: Any = torch.backends.cudnn  # (fp32_precision: torch >= 2.9)
        conv: Any = getattr(cudnn, "conv", None)
        rnn: Any = getattr(cudnn, "rnn", None)
        new = None
        if hasattr(conv, "fp32_precision") and hasattr(rnn, "fp32_precision"):
            new = (conv.fp32_precision, rnn.fp32_precision)
        try:
            legacy = cudnn.allow_tf32
        except RuntimeError:
            legacy = None
        return legacy, new

    @staticmethod
    def _write_tf32(legacy, new) -> None:
        """Set TF32 as :meth:`_read_tf32` gives it. Through the legacy flag
        where it can be read (which keeps the new ones in step with it, so
        it stays readable), else through the convolutions' new flag only."""
        cudnn: Any = torch.backends.cudnn
        if legacy is not None:
            cudnn.allow_tf32 = legacy
        if new is not None and (
            legacy is None
            or (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) != new
        ):
            cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = new

    def _apply(self) -> None:
        assert self._saved is not None
        benchmark, (legacy, new) = self._saved
        cudnn: Any = torch.backends.cudnn
        cudnn.benchmark = not cudnn.deterministic if self._tuned_calls else benchmark
        if self._float32_calls and self._calls:
            if legacy is not None:
                cudnn.allow_tf32 = False
            else:
                cudnn.conv.fp32_precision = "ieee"
        else:
            self._write_tf32(legacy, new)

    @contextlib.contextmanager
    def __call__(self, dtype: torch.dtype, tune: bool):
        float32 = dtype == torch.float32
        with self._lock:
            if self._calls == 0:
                self._saved = (torch.backends.cudnn.benchmark, self._read_tf32())
            self._calls += 1
            self._float32_calls += float32
            self._tuned_calls += tune
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1
                self._float32_calls -= float32
                self._tuned_calls -= tune
                self._apply()
                if self._calls == 0:
                    self._saved = None


_CUDNN_FLAGS = _CudnnFlags()


def cudnn_settings(device: torch.device, dtype: torch.dtype, tune: bool = True):
    """cuDNN while a call runs: autotuned kernels, and for float32 no TF32
    (10-bit mantissas in convolutions, which PyTorch allows by default and
    which move rows by about 1e-3): ``precision="float32"`` means float32.
    ``tune=False`` for inputs of many sizes (files without a crop): each
    new shape would be tuned again, at a cost of many batches; the user's
    setting then holds. The flags are process-wide: overlapping calls
    (threads) share them, and the last to leave restores the user's
    (:class:`_CudnnFlags`). Matrix products follow the user's TF32 setting
    for them (``torch.backends.cuda.matmul``; off unless the user set it)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _CUDNN_FLAGS(dtype, tune)


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``: the key of :data:`PRECISIONS`."""
    return str(dtype).removeprefix("torch.")
