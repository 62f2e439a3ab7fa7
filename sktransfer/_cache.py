"""The embedding cache: pooled vectors, computed once, reused everywhere.

``GridSearchCV`` clones the extractor for every candidate and fold, so the
cache cannot live on an instance: :class:`EmbeddingCache` objects are shared
(``copy.deepcopy`` and ``clone`` return the same object) and the process-wide
default one is what ``cache="memory"`` uses. Entries are keyed by

- the *configuration*: the network (model and weights, or a digest of the
  weights' tensors when they are not published ones), the preprocessing and
  the pooling,
- the layer,
- the *image*: a digest of its pixels, dtype and shape (never ``id()`` or
  position),

so changing any of them is a miss, not a stale hit. Memory is bounded by an
LRU over bytes; a directory adds a persistent layer that other processes
(``GridSearchCV(n_jobs>1)``) and later sessions share.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "EmbeddingCache",
    "default_cache",
    "digest",
    "directory_cache",
    "state_digest",
]

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB


def digest(*parts) -> str:
    """A short hex digest of bytes-like or str parts."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        h.update(part)
        h.update(b"\x00")
    return h.hexdigest()


class EmbeddingCache:
    """A thread-safe cache of image embeddings, bounded by bytes.

    Parameters
    ----------
    max_bytes : int, default=1 GiB
        Memory bound of the in-memory LRU; the least recently used vectors
        are dropped past it. 0 keeps nothing in memory.
    directory : str or path-like, default=None
        If given, every vector is also written there (one ``.npy`` file per
        image, layer and configuration, written atomically) and read back on
        a memory miss: a cache shared by processes and sessions, unbounded
        (delete the directory to clear it).

    Examples
    --------
    >>> from sktransfer import EmbeddingCache, PretrainedFeatureExtractor
    >>> cache = EmbeddingCache(max_bytes=200_000_000)
    >>> extractor = PretrainedFeatureExtractor(model="resnet18", cache=cache)
    """

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES, directory=None):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"max_bytes must be an int. Got {max_bytes!r}.")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0. Got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.directory = None if directory is None else Path(directory)
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # Shared, never copied: clones of an estimator must see the same cache.
    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __reduce__(self):
        # Another process gets an empty memory layer with the same bound and
        # the same directory (the part that can really be shared).
        return (EmbeddingCache, (self.max_bytes, self.directory))

    def __repr__(self):
        where = f", directory={str(self.directory)!r}" if self.directory else ""
        return f"EmbeddingCache(max_bytes={self.max_bytes}{where})"

    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every in-memory entry (files in ``directory`` stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _path(self, key: tuple) -> Path:
        config, layer, image = key
        return self.directory / config / digest(str(layer)) / f"{image}.npy"

    def get(self, key: tuple) -> np.ndarray | None:
        """The vector stored under ``(config, layer, image)``, or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return value
        if self.directory is not None:
            path = self._path(key)
            try:
                value = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                value = None
            if value is not None:
                self._remember(key, value)
                with self._lock:
                    self.hits += 1
                return value
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: tuple, value: np.ndarray) -> None:
        """Store a vector (a copy) under ``(config, layer, image)``."""
        value = np.array(value, dtype=np.float32, copy=True)
        value.setflags(write=False)
        self._remember(key, value)
        if self.directory is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, value, allow_pickle=False)
                os.replace(tmp, path)  # atomic: readers never see half a file
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _remember(self, key: tuple, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes


_DEFAULT = EmbeddingCache()


def default_cache() -> EmbeddingCache:
    """The process-wide cache used by ``cache="memory"`` (1 GiB by default).

    Change its bound with ``default_cache().max_bytes = ...`` or empty it
    with ``default_cache().clear()``.
    """
    return _DEFAULT


_DIRECTORIES: dict[str, EmbeddingCache] = {}
_DIRECTORIES_LOCK = threading.Lock()


def directory_cache(path) -> EmbeddingCache:
    """The process-wide cache backed by directory ``path`` (one per path)."""
    key = os.path.abspath(os.fspath(path))
    with _DIRECTORIES_LOCK:
        if key not in _DIRECTORIES:
            _DIRECTORIES[key] = EmbeddingCache(_DEFAULT.max_bytes, key)
        return _DIRECTORIES[key]


def _code_parts(code):
    """Stable parts of a code object and the code objects nested in it."""
    yield code.co_code
    yield repr((code.co_names, code.co_varnames)).encode()
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from _code_parts(const)
        else:
            yield repr(const).encode()


def state_digest(module) -> str:
    """A digest of what a module computes: code, parameter names and values.

    Covers, for each submodule, its class and the bytecode of its ``forward``
    (so a class redefined in a notebook is another network), and every
    tensor of the state dict.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        cls = type(sub)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}".encode())
        forward = getattr(cls.forward, "__code__", None)
        if forward is not None:
            for part in _code_parts(forward):
                h.update(part)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
