"""Input adapters: from what the user passes to batches of image tensors.

An adapter validates its input up front (types, shapes, dtypes, values; for
paths, that the files exist), so that bad input fails before anything
reaches the network, and then yields ``(start, batch)`` pairs: ``batch`` is
an ``(n, C, H, W)`` tensor, C in {1, 3}, of dtype uint8, uint16 or float32
(in [0, 1]), holding rows ``start:start + n`` of the input. Adapters know
nothing of models.

- :class:`ArrayImages`: one array or tensor of equal-sized images; batches
  are slices of it, resized later on the device, batch by batch. Arrays of
  other libraries that export DLPack or the CUDA array interface (CuPy)
  are taken as tensors where they are, numpy's layout.
- :class:`ListImages`: a sequence of paths, encoded bytes, PIL images or
  arrays of any sizes. Images are read and resized one by one (the resize
  and crop of the preprocessing, ``geometry``) in a pool of worker threads
  that runs ahead of the network by about one batch, so memory stays bounded
  whatever the number of images; equal-sized results are stacked into
  batches. An image that cannot be read raises
  :class:`~sktransfer.exceptions.ImageReadError` naming its row, or, with
  ``on_error="nan"``, is recorded in ``errors`` and skipped: its row is never
  yielded, and the rows around it keep their positions.

Layout rule, never guessed from the values: numpy arrays (and CuPy's, and
other libraries' arrays) are channels-last ``(n, H, W, C)`` or grayscale
``(n, H, W)``; torch tensors are channels-first
``(n, C, H, W)`` or grayscale ``(n, H, W)``. In a sequence, each numpy array
is one ``(H, W, C)`` or ``(H, W)`` image, each tensor one ``(C, H, W)`` or
``(H, W)`` image.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sktransfer import _engine
from sktransfer._identity import digest
from sktransfer._images import decode as _decode
from sktransfer.exceptions import ImageReadError, PerformanceWarning, warn

__all__ = ["ArrayImages", "ListImages", "as_images", "default_num_workers"]

# Float images must lie in [0, 1]; this much slack absorbs resampling overshoot.
_FLOAT_SLACK = 0.01
_CHECK_ROWS = 256  # rows per chunk when scanning values (bounds temporary memory)


def _describe(X) -> str:
    return f"{type(X).__module__}.{type(X).__name__}"


def default_num_workers() -> int:
    """Decoding threads when ``num_workers=None``: one per CPU, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def as_images(
    X,
    *,
    num_workers: int | None = None,
    max_pixels: int | None = _decode.DEFAULT_MAX_PIXELS,
    on_error: str = "raise",
) -> ArrayImages | ListImages:
    """Return the adapter for ``X``, or raise a TypeError/ValueError.

    The keyword arguments apply to sequences (:class:`ListImages`).
    """
    if isinstance(X, torch.Tensor):
        return ArrayImages(X, channels_last=False)
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            "Sparse matrices are not images. Pass a dense array of shape "
            "(n_images, height, width, channels)."
        )
    if hasattr(X, "iloc") and hasattr(X, "columns"):
        raise TypeError(
            "A DataFrame is not an image batch. Pass the column that holds the "
            "images or their paths, e.g. X['path'], or an array of shape "
            "(n_images, height, width, channels)."
        )
    if isinstance(X, (set, frozenset, dict, Mapping, Iterator)):
        what = "generator or iterator" if isinstance(X, Iterator) else "set or mapping"
        raise TypeError(
            f"Expected a batch of images in a fixed order, got a {what} "
            f"({_describe(X)}), whose rows could not be matched to the output's. "
            "Pass a list, e.g. list(X), or an array."
        )
    if isinstance(X, (str, bytes, os.PathLike, Image.Image)):
        raise TypeError(
            f"Expected a batch of images, got a single {_describe(X)}: "
            f"{X!r:.80}. Pass a list, e.g. [image]."
        )
    if np.isscalar(X) or X is None:
        raise TypeError(
            f"Expected a batch of images, got {_describe(X)}: {X!r:.80}. Pass an "
            "array of shape (n_images, height, width, channels) or a list of "
            "paths, PIL images or arrays."
        )
    items = None
    if isinstance(X, (list, tuple)):
        items = list(X)
        if items and all(isinstance(item, (list, tuple)) for item in items):
            # Nested lists of numbers (X.tolist(), tabular data): one array.
            try:
                array = np.asarray(items)
            except ValueError:
                array = None  # ragged: images of different sizes, one by one
            if array is not None and array.dtype != object:
                return ArrayImages(array, channels_last=True)
    elif hasattr(X, "iloc") or _is_pandas_index(X):
        # a pandas Series or Index: by position, whatever its index
        items = list(X.to_numpy(dtype=object))
    elif isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1:
        items = list(X)
    if items is not None:
        return ListImages(
            items, num_workers=num_workers, max_pixels=max_pixels, on_error=on_error
        )
    if not isinstance(X, np.ndarray) and (
        hasattr(X, "__dlpack__") or hasattr(X, "__cuda_array_interface__")
    ):
        # CuPy (the blocks of a dask-cuda array), JAX...: taken where they
        # are, a GPU's memory included, which np.asarray refuses; numpy's
        # layout, channels last
        return ArrayImages(_shared_tensor(X), channels_last=True)
    try:
        array = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"Could not read {_describe(X)} as an array of images: {exc}"
        ) from exc
    return ArrayImages(array, channels_last=True)


def _shared_tensor(X) -> torch.Tensor:
    """A tensor that shares the memory of an array of another library,
    through DLPack or the CUDA array interface, without a copy."""
    try:
        if hasattr(X, "__dlpack__"):
            return torch.from_dlpack(X)
        return torch.as_tensor(X)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"Could not read {_describe(X)} as an array of images: {exc}"
        ) from exc


def _is_pandas_index(X) -> bool:
    return type(X).__module__.startswith("pandas") and hasattr(X, "to_numpy")


def image_digest(image, channels_last: bool) -> str:
    """Digest of one image's pixels, dtype and shape (a cache key part)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = _native(image)  # (the same pixels in either byte order, one key)
    tag = f"{image.dtype.str}{image.shape}{channels_last}"
    return digest(tag, np.ascontiguousarray(image).data)


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order (a converted copy if it is not:
    big-endian ``>u2`` or ``>f4`` data, as some file formats store it)."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def _is_missing(item) -> bool:
    """Whether ``item`` is a missing value: None, a float NaN, or pandas'
    ``pd.NA`` / ``pd.NaT`` (what a ``string`` column holds where a path is
    missing)."""
    if item is None:
        return True
    if isinstance(item, (float, np.floating)):
        return bool(np.isnan(item))
    kind = type(item)
    return kind.__module__.startswith("pandas") and kind.__name__ in (
        "NAType",
        "NaTType",
    )


class ArrayImages:
    """Images held in one numpy array or torch tensor.

    ``row`` is set when the array is one element of a sequence (the array
    then holds that single image): messages name the element.
    """

    resizes = False  # batches are resized by the caller, on the device
    decode_min_side: int | None = None  # (no files to decode)
    errors: dict[int, ImageReadError] = {}  # arrays are validated up front

    def __init__(self, data, *, channels_last: bool, row: int | None = None):
        self.data = data
        self.channels_last = channels_last
        self.row = row
        self._validate()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _validate(self) -> None:
        data = self.data
        kind = "numpy array" if self.channels_last else "torch tensor"
        layout = "(n, H, W, C)" if self.channels_last else "(n, C, H, W)"
        if self.row is not None:  # one image of a sequence
            kind = f"{kind} (image {self.row} of the input)"
        dtype = data.dtype
        if isinstance(data, torch.Tensor):
            is_float = dtype.is_floating_point
            is_complex = dtype.is_complex
        else:
            is_float = np.issubdtype(dtype, np.floating)
            is_complex = np.issubdtype(dtype, np.complexfloating)
        # any byte order: big-endian data is converted batch by batch
        native = dtype.newbyteorder("=") if isinstance(dtype, np.dtype) else dtype
        if is_complex or not (
            is_float or native in (np.uint8, np.uint16, torch.uint8, torch.uint16)
        ):
            raise TypeError(
                f"Images must be uint8 (0..255), uint16 (0..65535) or float in "
                f"[0, 1]. Got a {kind} of dtype {dtype}. Convert with "
                "X.astype(np.uint8) if its values are 0..255."
            )
        if data.ndim in (1, 2):
            raise ValueError(
                f"Expected images, got a {data.ndim}-D {kind} of shape "
                f"{tuple(data.shape)} (tabular data?). Pass images as a {kind} "
                f"of shape {layout} or (n, H, W) for grayscale."
            )
        if data.ndim == 3 and self.row is None:
            self._refuse_single_image(data)
        if data.ndim > 4:
            raise ValueError(
                f"Expected a {kind} of shape {layout} or (n, H, W); got "
                f"{data.ndim} dimensions, shape {tuple(data.shape)}."
            )
        if data.ndim == 4:
            channels = data.shape[3] if self.channels_last else data.shape[1]
            if channels not in (1, 3):
                other = data.shape[1] if self.channels_last else data.shape[3]
                hint = ""
                if other in (1, 3):
                    hint = (
                        " It looks channels-first: use X.transpose(0, 2, 3, 1)."
                        if self.channels_last
                        else " It looks channels-last: use X.permute(0, 3, 1, 2)."
                    )
                elif channels == 4:
                    hint = " Drop or composite the alpha channel first."
                raise ValueError(
                    f"A {kind} of images must be laid out {layout} with 1 or 3 "
                    f"channels; got shape {tuple(data.shape)}, i.e. {channels} "
                    f"channels.{hint}"
                )
        if data.shape[0] == 0:
            raise ValueError("Found 0 images; at least 1 is required.")
        height, width = self.image_size()
        if height == 0 or width == 0:
            raise ValueError(
                f"Images must not be empty; got shape {tuple(data.shape)}."
            )
        if is_float:
            self._check_float_values()

    def _refuse_single_image(self, data) -> None:
        """A 3-D batch whose colour axis is where one image's would be: one
        image without its batch axis, or a batch of grayscale images? Never
        guessed."""
        shape = tuple(data.shape)
        if self.channels_last and shape[2] in (3, 4):
            raise ValueError(
                f"Got one numpy array of shape {shape}: one {shape[0]}x{shape[1]} "
                f"image with {shape[2]} channels, or {shape[0]} grayscale images "
                f"{shape[2]} pixels wide? For one image, add the batch axis: "
                f"X[None] (shape {(1, *shape)}). For grayscale images, add the "
                f"channel axis: X[..., None] (shape {(*shape, 1)})."
            )
        if not self.channels_last and shape[0] in (3, 4):
            raise ValueError(
                f"Got one torch tensor of shape {shape}: one {shape[1]}x{shape[2]} "
                f"image with {shape[0]} channels, or {shape[0]} grayscale images? "
                f"For one image, add the batch axis: X[None] (shape "
                f"{(1, *shape)}). For grayscale images, add the channel axis: "
                f"X[:, None] (shape {(shape[0], 1, *shape[1:])})."
            )

    def _check_float_values(self) -> None:
        for start in range(0, len(self), _CHECK_ROWS):
            chunk = self.data[start : start + _CHECK_ROWS]
            if isinstance(chunk, torch.Tensor):
                chunk = chunk.detach().to("cpu", torch.float32).numpy()
            flat = chunk.reshape(len(chunk), -1)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                row = (
                    self.row if self.row is not None else start + int(np.argmin(finite))
                )
                raise ValueError(
                    f"Image {row} contains NaN or infinity. Every pixel must be a "
                    "finite value in [0, 1]."
                )
            low, high = flat.min(axis=1), flat.max(axis=1)
            bad = (low < -_FLOAT_SLACK) | (high > 1 + _FLOAT_SLACK)
            if bad.any():
                i = int(np.argmax(bad))
                hint = (
                    " It looks like 0..255 data: divide by 255 or cast to uint8."
                    if high[i] > 2
                    else ""
                )
                row = self.row if self.row is not None else start + i
                raise ValueError(
                    f"Float images must have values in [0, 1]; image {row} "
                    f"has values in [{low[i]:g}, {high[i]:g}].{hint}"
                )

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        shape = self.data.shape
        if self.data.ndim == 3 or self.channels_last:
            return int(shape[1]), int(shape[2])
        return int(shape[2]), int(shape[3])

    def first(self, geometry=None) -> tuple[int, torch.Tensor]:
        """The first image, as a batch of one, and its row (0).

        ``geometry`` is ignored: the caller resizes (``resizes`` is False).
        """
        return 0, self._batch(slice(0, 1))

    def decoded_digest(self, i: int) -> str | None:
        """The image part of the cache key of row ``i``."""
        return self.digests([i])[0]

    def batches(
        self, batch_size: int, indices=None, geometry=None, decode_device=None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, batch)`` with batches of at most ``batch_size``.

        With ``indices``, only those rows, in that order; ``start`` then
        counts positions in ``indices``. ``geometry`` and ``decode_device``
        are ignored: the caller resizes whole batches (``resizes`` is False)
        on its device.
        """
        n = len(self) if indices is None else len(indices)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = slice(start, stop) if indices is None else indices[start:stop]
            yield start, self._batch(rows)

    def digests(self, rows: Iterable[int] | None = None) -> list[str | None]:
        """A digest of each image's (or those at ``rows``) pixels, dtype and
        shape: the image part of cache keys."""
        data = self.data if rows is None else self.data[list(rows)]
        if not isinstance(data, torch.Tensor) or data.device.type == "cpu":
            return [image_digest(image, self.channels_last) for image in data]
        # Images on a GPU come to the host in chunks: one copy (and one wait)
        # per chunk, not per image; the digests are those of the same pixels.
        out: list[str | None] = []
        for start in range(0, len(data), _CHECK_ROWS):
            chunk = data[start : start + _CHECK_ROWS].detach().cpu()
            out += [image_digest(image, self.channels_last) for image in chunk]
        return out

    def _batch(self, rows) -> torch.Tensor:
        chunk = self.data[rows]
        if isinstance(chunk, torch.Tensor):
            batch = chunk.detach()
            if batch.ndim == 3:
                batch = batch.unsqueeze(1)
            elif self.channels_last:  # (another library's array, as a tensor)
                batch = batch.permute(0, 3, 1, 2)
            if batch.dtype.is_floating_point and batch.dtype != torch.float32:
                batch = batch.float()
            return batch
        if chunk.dtype.kind == "f" and chunk.dtype != np.float32:
            chunk = chunk.astype(np.float32)  # a copy: the input is never touched
        elif not chunk.dtype.isnative:  # big-endian uint16: torch reads native
            chunk = _native(chunk)  # (a copy)
        else:
            chunk = np.ascontiguousarray(chunk)
            # read-only or memory-mapped input; or one image of a reversed
            # array (contiguous for numpy, with a negative stride torch refuses)
            if not chunk.flags.writeable or min(chunk.strides, default=0) < 0:
                chunk = chunk.copy()
        batch = torch.from_numpy(chunk)
        if batch.ndim == 3:
            return batch.unsqueeze(1)
        return batch.permute(0, 3, 1, 2)  # a view: stays channels_last in memory


def _reason(exc: BaseException) -> str:
    """Why a file could not be read, in words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        formats = ", ".join(_decode.FORMATS)
        return f"not an image in an accepted format ({formats})"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused by Pillow as a decompression bomb ({exc})"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _drop_frames(exc: BaseException | None) -> None:
    """Cut the tracebacks of ``exc`` and the exceptions chained to it: their
    frames hold the file's bytes and the decoder's buffers (``errors_`` of
    40 unreadable 8 MB files held 320 MB). The messages stay."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _Encoded:
    """A JPEG left undecoded for the device's decoder: its row, bytes and
    pixel count."""

    __slots__ = ("data", "pixels", "row")

    def __init__(self, row: int, data: bytes, pixels: int):
        self.row, self.data, self.pixels = row, data, pixels


#: The most pixels one call of the device's JPEG decoder decodes (its
#: outputs take 3 bytes a pixel: 0.8 GB): a batch of large photos takes
#: several calls rather than all its memory at once (256 12-MP photos:
#: 9.2 GB).
DEVICE_DECODE_PIXELS = 1 << 28


def _device_decoded(device, pending: list) -> tuple[list, RuntimeError | None]:
    """The images of ``pending`` ((position, _Encoded) pairs) decoded on
    ``device``, in order, None where the decoder failed; and its last
    failure.

    Consecutive files go to the decoder in calls of at most
    :data:`DEVICE_DECODE_PIXELS` pixels (a larger file: a call of its own).
    A call out of device memory is halved and retried, its memory freed
    first, down to one file, as the engine's batches are; a single file
    out of memory, or any other failure, leaves that call's files to
    Pillow.
    """
    calls = deque(_by_pixels(pending, DEVICE_DECODE_PIXELS))
    images: list = []
    failure = None
    while calls:
        call = calls.popleft()
        try:
            decoded = _decode.decode_jpegs_on([e.data for _, e in call], device)
        except RuntimeError as exc:
            if _engine.is_oom(exc) and len(call) > 1:
                decoded = None  # (halved once the except block has ended)
            else:
                _drop_frames(exc)
                decoded, failure = [None] * len(call), exc
        if decoded is None:
            _engine.free_after_oom(device)
            half = len(call) // 2
            calls.extendleft([call[half:], call[:half]])  # (first half first)
            continue
        images += decoded
    return images, failure


#: The most pixels of decoded images resized in one call (on CUDA a uint8
#: batch is resized in float: 12 bytes a pixel).
RESIZE_PIXELS = 1 << 26


def _resized_alike(images: list, geometry: Callable) -> list:
    """``geometry`` (the resize and crop) applied to each of ``images``
    (``(C, H, W)`` tensors, or None), images of one size together, in calls
    of at most :data:`RESIZE_PIXELS` pixels: a few kernels a call, not a few
    per image. In order; None stays None; an image whose size cannot be
    resized gets the ValueError in its place."""
    out = list(images)
    alike: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        if image is not None:
            alike.setdefault(tuple(image.shape), []).append(i)
    for shape, rows in alike.items():
        per_call = max(1, RESIZE_PIXELS // (shape[-2] * shape[-1]))
        for start in range(0, len(rows), per_call):
            part = rows[start : start + per_call]
            try:
                resized = list(geometry(torch.stack([images[i] for i in part])))
            except ValueError as exc:
                resized = [exc] * len(part)
            for i, image in zip(part, resized, strict=True):
                out[i] = image
    return out


def _by_pixels(pending: list, cap: int) -> Iterator[list]:
    """Runs of consecutive ``(position, _Encoded)`` pairs of at most ``cap``
    pixels in all (a file larger than ``cap``: a run of its own)."""
    run: list = []
    total = 0
    for pair in pending:
        if run and total + pair[1].pixels > cap:
            yield run
            run, total = [], 0
        run.append(pair)
        total += pair[1].pixels
    if run:
        yield run


#: Devices whose JPEG decoder failed on files that Pillow decodes (warned once).
_DEVICE_DECODING_FAILED: set = set()


def _device_decoding_failed(device, error: RuntimeError) -> None:
    """Say once per device that its decoder failed on good JPEGs, which
    Pillow then decoded on the CPU, one after another (slower)."""
    key = str(device)
    if key in _DEVICE_DECODING_FAILED:
        return
    _DEVICE_DECODING_FAILED.add(key)
    warn(
        f"Decoding JPEG files on {device} failed ({error}); Pillow decodes "
        "them on the CPU instead, which is slower. Pass device='cpu' to decode "
        "on worker threads, or update torchvision.",
        PerformanceWarning,
    )


def _stacked_runs(images: Iterable, batch_size: int, device=None) -> Iterator:
    """Stack consecutive ``(position, image)`` pairs of equal shape, dtype
    and device into batches of at most ``batch_size``; an image of None
    (unreadable) ends a run and is never yielded. Yields ``(start, batch)``.

    ``device``: where the device's decoder puts its images. Images there
    and on the host (decoded by Pillow: PNGs, CMYK JPEGs) share a run,
    stacked on ``device`` (:func:`_stacked`): in a folder that mixes them,
    a change of decoder ends no run, which gave batches of random sizes
    (each a new shape for cuDNN's autotuning; in training, an error).
    """

    def where(image):
        return None if device is not None else image.device

    run: list[torch.Tensor] = []
    start = 0
    for position, image in images:
        if run and (
            image is None
            or len(run) == batch_size
            or (image.dtype, image.shape, where(image))
            != (run[0].dtype, run[0].shape, where(run[0]))
        ):
            yield start, _stacked(run, device)
            run = []
        if image is not None:
            if not run:
                start = position
            run.append(image)
    if run:
        yield start, _stacked(run, device)


def _stacked(run: list[torch.Tensor], device) -> torch.Tensor:
    """The images of ``run`` as one batch: on ``device`` if some of them
    are there (the others copied there: from the host, on the copy stream,
    :func:`~sktransfer._engine.to_gpu`), else where they are."""
    if device is not None and any(image.device != run[0].device for image in run):
        run = [_to_device(image, device) for image in run]
    return torch.stack(run)


def _to_device(image: torch.Tensor, device) -> torch.Tensor:
    if image.device.type == "cpu" and device.type == "cuda":
        return _engine.to_gpu(image, device)
    return image.to(device)


class ListImages:
    """Images given one by one: paths, encoded bytes, PIL images or arrays.

    Parameters
    ----------
    items : list
        One image per element.
    num_workers : int or None
        Threads that read and resize images ahead of the network; 0 reads in
        the calling thread; None is :func:`default_num_workers`.
    max_pixels : int or None
        Images with more pixels are refused before decoding.
    on_error : {"raise", "nan"}
        What an unreadable image does: raise :class:`ImageReadError`, or get
        recorded in ``errors`` and skipped.
    """

    resizes = True  # images are resized one by one, by ``geometry``

    def __init__(
        self,
        items: list,
        *,
        num_workers: int | None = None,
        max_pixels: int | None = _decode.DEFAULT_MAX_PIXELS,
        on_error: str = "raise",
    ):
        if not items:
            raise ValueError("Found 0 images; at least 1 is required.")
        self.items = items
        self.num_workers = (
            default_num_workers() if num_workers is None else int(num_workers)
        )
        self.max_pixels = max_pixels
        self.on_error = on_error
        self.errors: dict[int, ImageReadError] = {}
        self._arrays: dict[int, ArrayImages] = {}
        # The digest of what was decoded for each row (see decoded_digest).
        self._decoded: dict[int, str] = {}
        #: Decode JPEGs reduced to a shorter side of at least this many
        #: pixels (``_decode.decode``); None decodes every file in full.
        self.decode_min_side: int | None = None
        self._kinds = [self._check(i, item) for i, item in enumerate(items)]

    def __len__(self) -> int:
        return len(self.items)

    def _check(self, i: int, item) -> str:
        """The kind of element ``i``, checked (files: that they exist)."""
        if isinstance(item, (str, os.PathLike)):
            try:
                st = os.stat(item)
            except OSError as exc:
                self._fail(i, exc)
            else:
                if stat.S_ISDIR(st.st_mode):
                    self._fail(i, IsADirectoryError(item))
                elif not stat.S_ISREG(st.st_mode):
                    self._fail(i, ValueError("not a regular file"))
                else:
                    try:
                        _decode.check_file_size(st.st_size, self.max_pixels)
                    except ValueError as exc:
                        self._fail(i, exc)
            return "path"
        if isinstance(item, (bytes, bytearray, memoryview)):
            return "bytes"
        if isinstance(item, Image.Image):
            return "pil"
        if isinstance(item, (list, tuple)):
            item = np.asarray(item)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            if item.ndim not in (2, 3):
                layout = "(H, W, C)" if isinstance(item, np.ndarray) else "(C, H, W)"
                raise ValueError(
                    f"Image {i} of the input is a {item.ndim}-D array of shape "
                    f"{tuple(item.shape)}; each image must be {layout} or (H, W)."
                )
            self._arrays[i] = ArrayImages(
                item[None], channels_last=isinstance(item, np.ndarray), row=i
            )
            return "array"
        if _is_missing(item):
            self._fail(i, ValueError(f"a missing value ({item!r}) instead of an image"))
            return "missing"
        raise TypeError(
            f"Image {i} of the input is a {_describe(item)}: {item!r:.60}. Each "
            "element must be a path (str or os.PathLike), the bytes of an image "
            "file, a PIL image, or an array."
        )

    def _fail(self, i: int, exc: BaseException) -> None:
        """Raise or record that image ``i`` could not be read."""
        if i in self.errors:  # already recorded (e.g. by the existence check)
            return
        item = self.items[i]
        path = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None
        what = f"Image {i} ({path!r})" if path is not None else f"Image {i}"
        error = ImageReadError(
            f"{what} could not be read: {_reason(exc).rstrip('.')}.",
            index=i,
            path=path,
        )
        error.__cause__ = exc
        if self.on_error == "raise":
            raise error from exc
        _drop_frames(exc)  # kept: the message and the cause, not the bytes
        self.errors[i] = error

    def _load(self, i: int, data: bytes | None = None) -> torch.Tensor:
        """Image ``i`` as a ``(C, H, W)`` tensor (may share the caller's data).

        ``data``: the bytes of a path or bytes element, if already read."""
        kind, item = self._kinds[i], self.items[i]
        if kind == "array":
            return self._arrays[i]._batch(slice(0, 1))[0]
        if kind in ("path", "bytes"):
            if data is None:
                data = self._read(i)
            min_side = self.decode_min_side
            self._decoded[i] = _decode.encoded_digest(data, min_side)
            array = _decode.decode(data, self.max_pixels, min_side)
        elif kind == "pil":
            array = _decode.to_array(item, self.max_pixels)
            self._decoded[i] = image_digest(array, True)
        else:  # "missing": recorded as an error when checked
            raise ValueError(f"image {i} is missing")
        tensor = torch.from_numpy(array)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)

    def _read(self, i: int) -> bytes:
        """The encoded bytes of a path or bytes element (files: read whole,
        within the size bound of ``max_pixels``)."""
        item = self.items[i]
        if self._kinds[i] == "path":
            return _decode.read_bytes(item, self.max_pixels)
        return bytes(item)

    def decoded_digest(self, i: int) -> str | None:
        """The image part of the cache key of what row ``i`` was computed
        from: the digest of the bytes that were decoded (not of a second
        read of the file, which another writer may have changed since), or
        of the pixels of an in-memory image. None if it was not decoded."""
        if self._kinds[i] == "array":
            return self._arrays[i].digests()[0]
        return self._decoded.get(i)

    def _prepared(
        self, i: int, geometry: Callable | None, data=None, on_device=False
    ) -> torch.Tensor | _Encoded | None:
        """Image ``i`` loaded and resized, or None if it failed (recorded).

        With ``on_device``, a JPEG that the device can decode comes back
        undecoded (:class:`_Encoded`) for :meth:`_decoded_on`.
        """
        if i in self.errors:
            return None
        try:
            if on_device and self._kinds[i] in ("path", "bytes"):
                data = self._read(i)
                pixels = _decode.device_decodable(data, self.max_pixels)
                if pixels:
                    self._decoded[i] = _decode.encoded_digest(data, None)
                    return _Encoded(i, data, pixels)
            image = self._load(i, data)
            # (inside the try: a size that cannot be resized is a row error)
            return image if geometry is None else geometry(image[None])[0]
        except Exception as exc:  # Pillow raises many types for bad files
            if self._kinds[i] == "array":
                raise
            self._fail(i, exc)
            return None

    def _decoded_on(self, device, pending: list, geometry: Callable | None):
        """Decode the JPEGs of ``pending`` ((position, _Encoded) pairs) on
        ``device`` (:func:`_device_decoded`) and yield ``(position, image or
        None)``.

        The files of a call that the device's decoder fails on are decoded
        again by Pillow, which raises or records the error of a bad file.
        The decoded images are resized by size (:func:`_resized_alike`).
        """
        decoded, failure = _device_decoded(device, pending)
        if geometry is not None:
            decoded = _resized_alike(decoded, geometry)
        failed = by_pillow = 0
        for (position, encoded), image in zip(pending, decoded, strict=True):
            if image is None:
                failed += 1
                image = self._prepared(encoded.row, geometry, encoded.data)
                by_pillow += image is not None
            elif isinstance(image, ValueError):  # a size that cannot be resized
                self._fail(encoded.row, image)
                image = None
            yield position, image
        if failure is not None and by_pillow == failed:
            _device_decoding_failed(device, failure)

    def _map(self, fn: Callable, rows: Iterable[int], ahead: int = 1) -> Iterator:
        """``map(fn, rows)`` in order, on worker threads, at most ``ahead``
        (or two per worker) calls ahead of the consumer."""
        if self.num_workers == 0:
            yield from map(fn, rows)
            return
        ahead = max(2 * self.num_workers, ahead)
        pool = ThreadPoolExecutor(self.num_workers, "sktransfer-read")
        try:
            rows = iter(rows)
            pending = deque(pool.submit(fn, i) for i in islice(rows, ahead))
            while pending:
                result = pending.popleft().result()
                for i in islice(rows, 1):
                    pending.append(pool.submit(fn, i))
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def first(self, geometry=None) -> tuple[int, torch.Tensor]:
        """The first readable image, as a batch of one, and its row.

        The image has been through ``geometry`` (as in :meth:`batches`).
        """
        for i in range(len(self)):
            image = self._prepared(i, geometry)  # (decoded here: not on_device)
            if isinstance(image, torch.Tensor):
                return i, image[None]
        raise ImageReadError(
            f"None of the {len(self)} images could be read; the first error: "
            f"{next(iter(self.errors.values()))}"
        )

    def batches(
        self, batch_size: int, indices=None, geometry=None, decode_device=None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, batch)``: runs of at most ``batch_size`` images.

        Each image goes through ``geometry`` (the resize and crop of the
        preprocessing) on a worker thread; consecutive results of equal
        shape and dtype are stacked. With ``indices``, only those rows, in
        that order; ``start`` then counts positions in ``indices``.
        Unreadable images (``on_error="nan"``) end a run; their positions
        are never yielded.

        ``decode_device``: where JPEG files and bytes that it can decode to
        Pillow's pixels (:func:`~sktransfer._images.decode.device_decodable`) are
        decoded, a batch at a time, and then resized (nvJPEG on CUDA); the
        worker threads only read them. Their batches are on that device.
        """
        rows = range(len(self)) if indices is None else [int(i) for i in indices]
        on_device = decode_device is not None
        prepared = self._map(
            lambda i: self._prepared(i, geometry, on_device=on_device), rows, batch_size
        )

        def images():  # (position, image or None), all decoded
            pending: list = []  # JPEGs waiting for the device's decoder
            for position, image in enumerate(prepared):
                if isinstance(image, _Encoded):
                    pending.append((position, image))
                    if len(pending) == batch_size:
                        yield from self._decoded_on(decode_device, pending, geometry)
                        pending = []
                    continue
                if pending:  # (they come before this image)
                    yield from self._decoded_on(decode_device, pending, geometry)
                    pending = []
                yield position, image
            if pending:
                yield from self._decoded_on(decode_device, pending, geometry)

        yield from _stacked_runs(images(), batch_size, decode_device)

    def digests(self, rows: Iterable[int] | None = None) -> list[str | None]:
        """The image part of each cache key (None for unreadable images).

        Files and bytes: a digest of the encoded bytes and the decoding
        rules; PIL images and arrays: of the pixels, as for arrays.
        """
        rows = range(len(self)) if rows is None else rows
        return list(self._map(self._digest, rows))

    def _digest(self, i: int) -> str | None:
        if i in self.errors:
            return None
        kind, item = self._kinds[i], self.items[i]
        if kind == "array":
            return self._arrays[i].digests()[0]
        try:
            if kind == "pil":
                return image_digest(_decode.to_array(item, self.max_pixels), True)
            data = self._read(i)
        except Exception as exc:
            self._fail(i, exc)
            return None
        return _decode.encoded_digest(data, self.decode_min_side)
