"""Dask collections in, lazy Dask arrays out.

``transform`` (and ``predict``, ``predict_proba``) given a Dask collection
returns a lazy ``dask.array.Array``, built from Dask's own API: each input
partition becomes one block of rows, computed by the fitted estimator's
in-memory method on that partition, in input order. Nothing runs until the
caller computes, on whatever scheduler is active (threads, processes, or a
``distributed`` cluster).

The fitted estimator enters the graph once, as one value every block
depends on (scattered to the cluster when a ``distributed`` client is
active, else a ``dask.delayed`` value): a cluster sends it to each worker
once, not with each task, and each worker unpickles it once and builds its
network once (the estimator keeps the network it built), then reuses it for
every block it computes. An extractor with published weights pickles to their name (a
few KB); other networks travel as their tensors, once per worker.

Dask's nanny starts each worker process with ``MALLOC_TRIM_THRESHOLD_``
set, which also freezes glibc's threshold for memory-mapped allocations at
128 KiB: every activation tensor is then mapped fresh and page-faulted at
every batch, and torch ran 25% slower in a worker than in-process
(``benchmarks/RESULTS.md``). The first sktransfer task in such a worker
gives glibc back the thresholds its own dynamic rule reaches (32 MiB for
mappings, twice that for trimming): :func:`worker_memory`.
``SKTRANSFER_WORKER_MALLOC=0`` leaves the worker's settings alone.

Dask is an optional dependency (``pip install -e '.[dask]'``): nothing
here imports it unless the input already is a Dask collection.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import numpy as np

from sktransfer._common import require

__all__ = ["active_client", "first_images", "is_dask", "lazy", "worker_memory"]

#: Set to ``0`` to keep a Dask worker's malloc settings as its nanny set them.
WORKER_MALLOC_ENV = "SKTRANSFER_WORKER_MALLOC"
_MALLOC_TUNED: list = []  # (set once per process)


def worker_memory() -> bool:
    """In a Dask worker whose nanny set ``MALLOC_TRIM_THRESHOLD_``, set
    glibc's mapping and trimming thresholds to 32 and 64 MiB (once per
    process). Returns whether they were set."""
    if _MALLOC_TUNED:
        return _MALLOC_TUNED[0]
    done = False
    distributed = sys.modules.get("distributed")
    wanted = os.environ.get(WORKER_MALLOC_ENV, "1").strip() not in {"0", "false"}
    if (
        wanted
        and distributed is not None
        and "MALLOC_TRIM_THRESHOLD_" in os.environ
        and sys.platform.startswith("linux")
    ):
        try:
            distributed.get_worker()  # (only in a worker)
            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
            done = bool(
                libc.mallopt(m_mmap_threshold, 32 * 2**20)
                and libc.mallopt(m_trim_threshold, 64 * 2**20)
            )
        except (ValueError, OSError, AttributeError):
            done = False
    _MALLOC_TUNED.append(done)
    return done


def is_dask(X) -> bool:
    """Whether ``X`` is a Dask collection (array, dataframe Series, bag)."""
    dask = sys.modules.get("dask")
    return dask is not None and dask.is_dask_collection(X)


def _apply(block, estimator, method: str):
    """One block's rows: the estimator's in-memory method on it."""
    worker_memory()
    return getattr(estimator, method)(block)


def lazy(estimator, X, method: str, width: int | None, dtype):
    """``estimator.<method>`` of every partition of ``X``, as a lazy array.

    ``width`` is the number of columns of the output (None: one value per
    row, as ``predict`` gives); ``dtype`` its dtype.
    """
    dask = require("dask", "dask", "A Dask collection as input")
    da = require("dask.array", "dask", "A Dask collection as input")
    shape = () if width is None else (width,)
    meta = np.empty((0, *shape), dtype=dtype)
    if isinstance(X, da.Array):
        if X.ndim < 3:
            raise ValueError(
                "A Dask array of images must be (n, H, W) or (n, H, W, C); got "
                f"shape {X.shape}."
            )
        # whole images in every block: the chunks along the rows stay
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
        return X.map_blocks(
            _apply,
            _shared(dask, estimator),  # (once the input is known to be good)
            method,
            dtype=dtype,
            meta=meta,
            chunks=(X.chunks[0], *((s,) for s in shape)),
            drop_axis=list(range(1 + len(shape), X.ndim)),
        )
    parts, lengths = _partitions(dask, X)
    est = _shared(dask, estimator)
    blocks = [
        da.from_delayed(
            dask.delayed(_apply)(part, est, method),
            shape=(n, *shape),
            dtype=dtype,
            meta=meta,
        )
        for part, n in zip(parts, lengths, strict=True)
    ]
    return da.concatenate(blocks) if blocks else da.from_array(meta)


def _kind(X) -> str:
    """``"bag"`` or ``"series"``: the collections of paths (or images)."""
    bag = sys.modules.get("dask.bag")
    if bag is not None and isinstance(X, bag.Bag):
        return "bag"
    frames = sys.modules.get("dask.dataframe")
    if frames is not None and isinstance(X, frames.Series):
        return "series"
    raise TypeError(
        "A Dask collection as input must be a dask.array.Array of images, or "
        "a dask.dataframe Series or dask.bag.Bag of paths (or images). Got "
        f"{type(X).__name__}; for a DataFrame, pass its column of paths."
    )


def _shared(dask, estimator):
    """The estimator as one value of the graph, which each worker fetches
    once: scattered to the cluster when a ``distributed`` client is active
    (its tensors then stay out of the graph and the scheduler), else a
    ``dask.delayed`` value."""
    client = active_client()
    if client is not None:
        return client.scatter(estimator, hash=False)
    return dask.delayed(estimator, pure=True)


def active_client():
    """The active Dask ``distributed`` client, if any (None: the local
    schedulers, or Dask not even imported)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_client()
    except ValueError:  # no client
        return None


def _small_computes(dask):
    """The scheduler for what the estimator computes itself (the first
    images, the partitions' lengths): the user's, where they chose one (a
    Client, or ``dask.config`` ``scheduler``), else threads. ``dask.bag``'s
    own default, processes, would start a pool for a few paths, and under
    the spawn start method re-run the user's script in each process."""
    if active_client() is not None or dask.config.get("scheduler", None) is not None:
        return contextlib.nullcontext()
    return dask.config.set(scheduler="threads")


def _partitions(dask, X):
    """The delayed partitions of a Series or bag of paths (or images), and
    their lengths. The lengths are computed now (the paths, not the
    images), so that the result has known chunk sizes."""
    with _small_computes(dask):
        if _kind(X) == "bag":
            lengths = X.map_partitions(lambda part: [len(list(part))]).compute()
            return [dask.delayed(list)(part) for part in X.to_delayed()], lengths
        return X.to_delayed(), X.map_partitions(len).compute().tolist()


def first_images(X, n: int = 1):
    """The first ``n`` images of a Dask collection, computed: what ``fit``
    needs (it runs one image through the network)."""
    da = require("dask.array", "dask", "A Dask collection as input")
    with _small_computes(require("dask", "dask", "A Dask collection as input")):
        if isinstance(X, da.Array):
            first = X[:n].compute()
        elif _kind(X) == "bag":
            first = list(X.take(n, npartitions=-1, warn=False))
        else:
            first = X.head(n, npartitions=-1).tolist()
    if len(first) == 0:
        raise ValueError("The Dask collection is empty: it has no image to fit on.")
    return first
