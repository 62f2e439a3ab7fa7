"""What trust costs: hashing and verification inside a cached grid search.

What is measured, in one process on one machine:

1. The grid search of ``bench_grid_search.py`` (MobileNetV2, 4 cut points x
   3 values of C x 5 folds, 61 fits, ``cache_layers`` set: every image goes
   through the network once), with the embedding cache in memory and on
   disk. The functions that establish identity and verify entries are
   wrapped by timers: image digests (pixels of arrays, bytes of files),
   network digests (code, settings and tensors of a module; checkpoint
   bytes), the checksum check of every disk entry read, the encoding of
   every entry written and the ``fsync`` that makes it durable; a third run
   reads every vector back from the disk entries of the second (the memory
   layer off), each one verified. Printed:
   the wall time of the search and each part's seconds and share of it.
   The goal is under 5% in all.
2. Hashing a 100 MB checkpoint: the first ``file_digest`` (reads the file),
   a repeated one (remembered per path, inode, size, mtime and ctime), and
   ``torch.load`` of the same file for scale.

Data: the first ``--n`` of scikit-learn's digits, upscaled to ``--size``
pixels (no download); the real ImageNet checkpoint from ``../shared/weights``
when present, else random weights (the timing is the same).

Run: ``.venv/bin/python benchmarks/bench_identity.py [--n 100 --size 224]``
"""

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bench_grid_search import LAYERS, _extractor
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import EmbeddingCache, _cache, _identity, _network, _sources
from sktransfer._identity import cpu_model
from sktransfer._images import inputs as _inputs

SPENT: dict[str, float] = defaultdict(float)


def _timed(label, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start

    return wrapper


def instrument():
    """Wrap the identity and verification functions where they are called."""
    _inputs.image_digest = _timed("image digests", _inputs.image_digest)
    _network.module_digest = _timed("network digests", _network.module_digest)
    for where in (_sources.module, _sources.finetuned):
        where.module_digest = _timed("network digests", where.module_digest)
    for where in (_sources.base, _sources.torchvision, _sources.timm):
        where.file_digest = _timed("checkpoint digests", where.file_digest)
    _sources.checkpoints.content_digest = _timed(
        "checkpoint digests", _sources.checkpoints.content_digest
    )
    _cache.decode_entry = _timed("entry checks (read)", _cache.decode_entry)
    _cache.encode_entry = _timed("entry encoding (write)", _cache.encode_entry)
    real_fsync = os.fsync
    _cache.os = type(os)("os_timed")  # the cache's view of os: fsync timed
    _cache.os.__dict__.update(os.__dict__)
    _cache.os.fsync = _timed("fsync (durable writes)", real_fsync)


def grid_search(X, y, size, cache):
    grid = GridSearchCV(
        make_pipeline(
            _extractor(size, cache),
            StandardScaler(),
            LogisticRegression(max_iter=1000),
        ),
        {
            "pretrainedfeatureextractor__layer": LAYERS,
            "logisticregression__C": [0.1, 1.0, 10.0],
        },
        cv=5,
    )
    SPENT.clear()
    start = time.perf_counter()
    grid.fit(X, y)
    return time.perf_counter() - start


def checkpoint_hashing():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.pth"
        torch.save({"w": torch.randn(25_000_000)}, path)  # 100 MB
        size = path.stat().st_size
        start = time.perf_counter()
        _identity.file_digest(path)
        first = time.perf_counter() - start
        start = time.perf_counter()
        _identity.file_digest(path)
        again = time.perf_counter() - start
        start = time.perf_counter()
        torch.load(path, weights_only=True)
        load = time.perf_counter() - start
    print(
        f"checkpoint of {size / 1e6:.0f} MB: first file_digest {first * 1e3:.0f} ms "
        f"({size / first / 1e9:.2f} GB/s), repeated {again * 1e6:.0f} us; "
        f"torch.load of the same file {load * 1e3:.0f} ms"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    print(
        f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    digits = load_digits()
    X = np.round(digits.images[: args.n] * (255 / 16)).astype(np.uint8)
    y = digits.target[: args.n]
    instrument()
    with tempfile.TemporaryDirectory() as folder:
        for label, cache in (
            ("memory", EmbeddingCache()),
            ("disk", EmbeddingCache(directory=folder)),
            # a later session: every vector is read back from disk and checked
            ("disk, memory layer off, warm", EmbeddingCache(0, directory=folder)),
        ):
            _network.clear()
            seconds = grid_search(X, y, args.size, cache)
            total = sum(SPENT.values())
            print(
                f"{label} cache: search {seconds:6.2f} s; identity and "
                f"verification {total * 1e3:7.1f} ms = {100 * total / seconds:.2f}%"
            )
            for part, spent in sorted(SPENT.items()):
                print(f"         {part:<28} {spent * 1e3:8.1f} ms")
    checkpoint_hashing()


if __name__ == "__main__":
    main()
