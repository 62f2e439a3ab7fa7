"""The engine: the input path and the inference loop.

:func:`batches` and :func:`device_input` are the one input path of
inference, validation and training (``_training`` builds on them): batches
from the input adapter (nvJPEG decoding of JPEG files on CUDA), copied to the
device (on CUDA: pinned, non-blocking, on a copy stream), resized and
normalised there, channels_last. :func:`extract` runs any module that maps
such a batch to a list of ``(n, d_i)`` tensors over all the images, and
writes the concatenated rows, in input order, into one preallocated
float32 array (an ordinary one: on CUDA the rows come through a few small
pinned staging buffers, :class:`StagedRows`). The device and precision are
chosen elsewhere (``_device``); the engine knows nothing of sklearn.

Speed, in order of value: large batches; uint8 batches to the device,
resized and normalised there; reduced precision (autocast) where the
hardware has it; channels_last. On CUDA: the host prepares batch k+1 while
the device computes batch k; cuDNN autotuning. On the CPU: batch norms
folded and convolutions fused with their activations and residual adds
(``_layers``, ``_fusion``; this applies to the extractor's networks), and
batches run in blocks of a few images that stay in cache. Out of memory,
the batch is halved and retried (down to one image) and the result is
unchanged. :func:`counting_images` counts the images the network runs on
(:func:`run_batch`, whatever the network, int8 included), in one context.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import gc
import traceback
from typing import Any

import numpy as np
import torch

from sktransfer._common import progress
from sktransfer._device import autocast, cudnn_settings, own_stream
from sktransfer.exceptions import NumericsWarning, warn

__all__ = [
    "StagedRows",
    "batches",
    "check_finite",
    "count_inputs",
    "counting_images",
    "device_input",
    "extract",
    "free_after_oom",
    "is_oom",
    "oom_error",
    "run_batch",
    "to_gpu",
]

# On the CPU, the network runs on blocks of about this many 224x224 images
# whatever the batch size: a block's activations stay in the caches and below
# the C allocator's threshold for fresh, page-faulting memory (measured in
# benchmarks/RESULTS.md, the CPU engine's table).
CPU_BLOCK_PIXELS = 16 * 224 * 224


@dataclasses.dataclass
class ImageCount:
    """The images the network ran on, within :func:`counting_images`."""

    images: int = 0


# The counts open in this context (nested ones all count), not process-wide:
# another thread's or task's network adds nothing to them.
_COUNTS: contextvars.ContextVar[tuple[ImageCount, ...]] = contextvars.ContextVar(
    "sktransfer_image_counts", default=()
)


@contextlib.contextmanager
def counting_images():
    """Count the images that :func:`run_batch` runs through a network in this
    context (each image once per run, whatever the number of layers tapped).

    Yields an :class:`ImageCount` whose ``images`` grows as they run.
    """
    count = ImageCount()
    token = _COUNTS.set((*_COUNTS.get(), count))
    try:
        yield count
    finally:
        _COUNTS.reset(token)


def _counted(n: int) -> None:
    for count in _COUNTS.get():
        count.images += n


def count_inputs(n: int) -> None:
    """Count ``n`` inputs run through a network by a loop of its own (the
    text encoder's), as :func:`run_batch` counts its images."""
    _counted(n)


def cpu_block(height: int, width: int) -> int:
    """Images per block on the CPU for inputs of this size."""
    return max(1, CPU_BLOCK_PIXELS // max(1, height * width))


def run_batch(
    net,
    preprocessing,
    batch,
    device,
    dtype=torch.float32,
    split=False,
    resized=False,
):
    """Preprocess one batch on ``device`` and return its float32 features.

    The features of all layers come concatenated, or as a list with ``split``.
    ``resized``: the batch has been through ``preprocessing.geometry``
    already (image by image, by the input adapter). On the CPU the batch runs
    in blocks (:func:`cpu_block`).
    """
    with torch.inference_mode():
        if device.type == "cpu":
            size = batch.shape[-2:]  # (the adapter has resized it already)
            block = cpu_block(*(size if resized else preprocessing.output_size(*size)))
            parts = [
                _forward(net, preprocessing, part, device, dtype, resized)
                for part in batch.split(block)
            ]
            feats = [torch.cat(layer) for layer in zip(*parts, strict=True)]
        else:
            feats = _forward(net, preprocessing, batch, device, dtype, resized)
        _counted(len(batch))
        return feats if split else torch.cat(feats, dim=1)


def batches(images, preprocessing, batch_size, device, indices=None):
    """Yield ``(start, batch)``: the images (or those at ``indices``) in
    batches of at most ``batch_size``, as the input adapter gives them.

    The one input path of inference, validation and training: on CUDA, JPEG
    files are decoded by nvJPEG on the device, a batch at a time; elsewhere
    by Pillow on the adapter's threads. Pass each batch to
    :func:`device_input`.
    """
    decode_on = device if device.type == "cuda" else None
    return images.batches(batch_size, indices, preprocessing.geometry, decode_on)


def device_input(preprocessing, batch, device, resized) -> torch.Tensor:
    """A batch from :func:`batches`, on ``device`` (from the host to a GPU:
    :func:`to_gpu`), resized, cropped and normalised there, channels_last:
    what the network takes. ``resized``: the adapter has applied
    ``preprocessing.geometry`` already."""
    if device.type == "cuda" and batch.device.type == "cpu":
        batch = to_gpu(batch, device)
    else:
        # Non-blocking only towards a GPU, whose stream orders the reads: a
        # non-blocking copy from a GPU to the CPU returns before the rows arrive.
        batch = batch.to(device, non_blocking=device.type == "cuda")
    x = preprocessing.finish(batch) if resized else preprocessing(batch)
    return x.contiguous(memory_format=torch.channels_last)


def to_gpu(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch copied to a GPU, pinned and non-blocking, on a copy
    stream of this thread's own (:func:`~sktransfer._device.own_stream`):
    the copy overlaps the kernels queued on the compute stream (the current
    one: the previous batch's), which waits for it before anything reads
    it. The copy is recorded on the compute stream, so that its memory is
    not reused for the next copy before the kernels that read it have run.
    """
    compute = torch.cuda.current_stream(device)
    copier = own_stream(device, "copy")
    pinned = batch.pin_memory()
    with torch.cuda.stream(copier):
        on_device = pinned.to(device, non_blocking=True)
    compute.wait_stream(copier)
    on_device.record_stream(compute)
    return on_device


def _forward(net, preprocessing, batch, device, dtype, resized) -> list:
    x = device_input(preprocessing, batch, device, resized)
    with autocast(device, dtype):
        feats = net(x)
    return [f.float() for f in feats]


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed device allocation: PyTorch's, or one
    inside cuBLAS or cuDNN (``CUBLAS_STATUS_ALLOC_FAILED``...)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "status_alloc_failed" in text
    )


def free_after_oom(device: torch.device) -> None:
    """Give a failed batch's memory back to the GPU before a smaller batch.

    Call it after the ``except`` block that caught the out-of-memory error:
    inside it, the traceback still holds the batch's activations, so
    ``empty_cache`` would free little."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def oom_error(exc: BaseException, message: str) -> RuntimeError:
    """The error to raise (``from exc``) when even one input does not fit:
    ``exc``'s frames are cleared first, so that an error kept by the user
    (Jupyter's ``sys.last_value``) does not keep the batch's GPU memory."""
    traceback.clear_frames(exc.__traceback__)
    return RuntimeError(message)


def extract(
    net,
    preprocessing,
    images,
    *,
    n_features,
    batch_size,
    device,
    dtype=torch.float32,
    indices=None,
    verbose=True,
    desc="Extracting features",
) -> tuple[np.ndarray, int]:
    """Run ``net`` over the images (or those at ``indices``), rows in order.

    Returns the ``(n, n_features)`` float32 rows and the batch size that was
    finally used (smaller than ``batch_size`` after an out-of-memory back-off).
    Rows the adapter skips (unreadable images, ``on_error="nan"``) are NaN.
    """
    n = len(images) if indices is None else len(indices)
    out = np.full((n, n_features), np.nan, dtype=np.float32)
    host = torch.from_numpy(out)
    staged = None
    if device.type == "cuda":
        staged = StagedRows(host, torch.cuda.current_stream(device))
    size = batch_size
    resized = images.resizes
    computed = np.zeros(n, dtype=bool)  # (skipped rows stay NaN, by design)
    # cuDNN autotunes each new input shape: worth it where every batch has
    # one (an array's images share a size), not for files of many sizes.
    tune = preprocessing.fixed_size or not images.resizes
    with (
        cudnn_settings(device, dtype, tune),
        progress(total=n, desc=desc, unit="img", verbose=verbose, leave=False) as bar,
    ):
        for start, batch in batches(images, preprocessing, batch_size, device, indices):
            offset = 0
            while offset < len(batch):
                chunk = batch[offset : offset + size]
                try:
                    feats = run_batch(
                        net, preprocessing, chunk, device, dtype, resized=resized
                    )
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    if size == 1:
                        raise oom_error(
                            exc,
                            f"Out of memory on {device} with a single image "
                            f"(row {start + offset}). Use smaller images "
                            "(preprocessing={'crop_size': ...}), a smaller model, "
                            "or device='cpu'.",
                        ) from exc
                    size = max(1, size // 2)
                    feats = None
                if feats is None:  # (out of memory: the except block has ended)
                    free_after_oom(device)
                    continue
                if feats.shape[1] != n_features:
                    first = start + offset
                    if indices is not None:
                        first = int(indices[first])
                    raise ValueError(
                        f"Image {first} and its batch give {feats.shape[1]} "
                        f"features, but the extractor was fitted with {n_features}. "
                        "With pooling='flatten' or no crop, every image must have "
                        "the size seen in fit; set preprocessing={'crop_size': ...} "
                        "to make them equal."
                    )
                rows = slice(start + offset, start + offset + len(chunk))
                if staged is None:
                    host[rows].copy_(feats)
                else:
                    staged.write(rows, feats)
                computed[rows] = True
                offset += len(chunk)
                bar.update(rows.stop - bar.n)  # skipped rows count as done
        bar.update(n - bar.n)
    if staged is not None:
        staged.finish()
    check_finite(out, computed, indices, dtype)
    return out, size


def _pinned(shape: tuple[int, int]) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32, pin_memory=True)


class StagedRows:
    """Rows computed on a GPU, copied into an ordinary host array ``out``
    (a CPU tensor) through a ring of ``slots`` small pinned buffers.

    A copy from the GPU runs asynchronously only into pinned memory, but
    PyTorch's pinned allocator rounds each block up to a power of two and
    keeps it for the rest of the process: the whole output there (a million
    rows of 2048 floats: 8.2 GB) held 16 GiB of pinned memory for good. So
    :meth:`write` copies a batch's rows from the device into the next
    buffer of the ring (one batch in size) and records ``new_event()`` on
    ``stream`` (the stream the rows were computed on) after the copy. A
    buffer is reused only once its rows have landed: its event waited for
    and its rows copied into ``out`` on the host. The host thus runs at most
    ``slots`` batches ahead of the GPU, and never waits for the batch it
    has just queued. :meth:`finish` lands what remains, oldest first.
    ``pinned(shape)`` makes a buffer.
    """

    def __init__(
        self,
        out: torch.Tensor,
        stream,
        slots: int = 3,
        *,
        pinned=_pinned,
        new_event=torch.cuda.Event,
    ):
        self.out, self.stream = out, stream
        self._pinned, self._new_event = pinned, new_event
        self._slots = [_Slot() for _ in range(slots)]
        self._next = 0

    def write(self, rows: slice, feats: torch.Tensor) -> None:
        """Queue the copy of ``feats`` (on the device) to ``out[rows]``."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        self._land(slot)
        if len(slot.buffer) < len(feats):
            slot.buffer = self._pinned(tuple(feats.shape))
        if slot.event is None:
            slot.event = self._new_event()
        slot.buffer[: len(feats)].copy_(feats, non_blocking=True)
        slot.event.record(self.stream)
        slot.rows = rows

    def finish(self) -> None:
        """Land every row still in a buffer, in the order written."""
        for i in range(len(self._slots)):
            self._land(self._slots[(self._next + i) % len(self._slots)])

    def _land(self, slot: _Slot) -> None:
        if slot.rows is None:
            return
        slot.event.synchronize()
        self.out[slot.rows].copy_(slot.buffer[: slot.rows.stop - slot.rows.start])
        slot.rows = None


@dataclasses.dataclass
class _Slot:
    """A staging buffer of :class:`StagedRows`, the event recorded after
    its last copy, and the rows of the output it holds (None: none)."""

    buffer: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    event: Any = None
    rows: slice | None = None


def check_finite(rows: np.ndarray, computed, indices, dtype) -> None:
    """Warn if computed rows hold inf or NaN (float16 overflows above 65504;
    a network may compute them too): never a silent non-finite row.
    ``computed``: a mask of the rows computed (None: all); the others (those
    of unreadable images) are NaN by design and not counted. ``indices``:
    the input rows that ``rows`` are (None: in order from 0), which the
    warning names."""
    finite = np.isfinite(rows).all(axis=1)
    bad = np.flatnonzero(~finite if computed is None else computed & ~finite)
    if not len(bad):
        return
    where = bad if indices is None else np.asarray(indices)[bad]
    hint = (
        "float16 overflows above 65504: use precision='bfloat16' or 'float32'"
        if dtype == torch.float16
        else "the network computed them"
    )
    warn(
        f"{len(bad)} of {len(rows)} rows hold inf or NaN values (rows "
        f"{', '.join(map(str, where[:5]))}{', ...' if len(bad) > 5 else ''}); "
        f"{hint}.",
        NumericsWarning,
    )
