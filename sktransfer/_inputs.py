"""Input adapters: from what the user passes to batches of image tensors.

An adapter validates its input up front (shape, dtype, values), so that bad
input fails before anything reaches the network, and then yields
``(start, batch)`` pairs: ``batch`` is an ``(n, C, H, W)`` tensor, C in
{1, 3}, of dtype uint8, uint16 or float32 (in [0, 1]), holding rows
``start:start + n`` of the input. Adapters know nothing of models.

Layout rule, never guessed from the values: numpy arrays are channels-last
``(n, H, W, C)`` or grayscale ``(n, H, W)``; torch tensors are channels-first
``(n, C, H, W)`` or grayscale ``(n, H, W)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sktransfer._cache import digest

__all__ = ["ArrayImages", "as_images"]

# Float images must lie in [0, 1]; this much slack absorbs resampling overshoot.
_FLOAT_SLACK = 0.01
_CHECK_ROWS = 256  # rows per chunk when scanning values (bounds temporary memory)


def _describe(X) -> str:
    return f"{type(X).__module__}.{type(X).__name__}"


def as_images(X) -> ArrayImages:
    """Return the adapter for ``X``, or raise a TypeError/ValueError."""
    if isinstance(X, torch.Tensor):
        return ArrayImages(X, channels_last=False)
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            "Sparse matrices are not images. Pass a dense array of shape "
            "(n_images, height, width, channels)."
        )
    if hasattr(X, "iloc") and hasattr(X, "columns"):
        raise TypeError(
            "A DataFrame is not an image batch. Pass an array of shape "
            "(n_images, height, width, channels)."
        )
    if isinstance(X, (str, bytes)) or np.isscalar(X) or X is None:
        raise TypeError(
            f"Expected a batch of images, got {_describe(X)}: {X!r:.80}. Pass an "
            "array of shape (n_images, height, width, channels)."
        )
    try:
        array = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"Could not read {_describe(X)} as an array of images: {exc}"
        ) from exc
    return ArrayImages(array, channels_last=True)


class ArrayImages:
    """Images held in one numpy array or torch tensor."""

    def __init__(self, data, *, channels_last: bool):
        self.data = data
        self.channels_last = channels_last
        self._validate()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _validate(self) -> None:
        data = self.data
        kind = "numpy array" if self.channels_last else "torch tensor"
        layout = "(n, H, W, C)" if self.channels_last else "(n, C, H, W)"
        dtype = data.dtype
        if isinstance(data, torch.Tensor):
            is_float = dtype.is_floating_point
            is_complex = dtype.is_complex
        else:
            is_float = np.issubdtype(dtype, np.floating)
            is_complex = np.issubdtype(dtype, np.complexfloating)
        if is_complex or not (
            is_float or dtype in (np.uint8, np.uint16, torch.uint8, torch.uint16)
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

    def _check_float_values(self) -> None:
        for start in range(0, len(self), _CHECK_ROWS):
            chunk = self.data[start : start + _CHECK_ROWS]
            if isinstance(chunk, torch.Tensor):
                chunk = chunk.detach().to("cpu", torch.float32).numpy()
            flat = chunk.reshape(len(chunk), -1)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
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
                raise ValueError(
                    f"Float images must have values in [0, 1]; image {start + i} "
                    f"has values in [{low[i]:g}, {high[i]:g}].{hint}"
                )

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        shape = self.data.shape
        if self.data.ndim == 3 or self.channels_last:
            return int(shape[1]), int(shape[2])
        return int(shape[2]), int(shape[3])

    def batches(
        self, batch_size: int, indices=None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, batch)`` with batches of at most ``batch_size``.

        With ``indices``, only those rows, in that order; ``start`` then
        counts positions in ``indices``.
        """
        n = len(self) if indices is None else len(indices)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = slice(start, stop) if indices is None else indices[start:stop]
            yield start, self._batch(rows)

    def digests(self, stop=None) -> list[str]:
        """A digest of each image's (or the first ``stop``'s) pixels, dtype and
        shape: the image part of cache keys."""
        data = self.data[:stop]
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        tag = f"{data.dtype.str}{self.data.shape[1:]}{self.channels_last}"
        return [digest(tag, np.ascontiguousarray(image).data) for image in data]

    def _batch(self, rows) -> torch.Tensor:
        chunk = self.data[rows]
        if isinstance(chunk, torch.Tensor):
            batch = chunk.detach()
            if batch.ndim == 3:
                batch = batch.unsqueeze(1)
            if batch.dtype.is_floating_point and batch.dtype != torch.float32:
                batch = batch.float()
            return batch
        if chunk.dtype.kind == "f" and chunk.dtype != np.float32:
            chunk = chunk.astype(np.float32)  # a copy: the input is never touched
        else:
            chunk = np.ascontiguousarray(chunk)
            if not chunk.flags.writeable:  # read-only or memory-mapped input
                chunk = chunk.copy()
        batch = torch.from_numpy(chunk)
        if batch.ndim == 3:
            return batch.unsqueeze(1)
        return batch.permute(0, 3, 1, 2)  # a view: stays channels_last in memory
