"""Embed a list of image files to a file (Parquet, or ``.npy`` and a paths
file), or to a Parquet dataset (a folder, one file per partition).

The jobs behind ``sktransfer embed``. To one file: images go through the
extractor in chunks; each chunk's rows land in the extractor's cache before
the next one starts, so with a directory cache an interrupted job (a crash,
Ctrl-C) resumes where it stopped: a re-run takes the finished chunks from
the cache. The output file is written at the end, atomically (a temporary
file renamed into place), so it is either absent or complete.

To ``.npy``: the rows, then the paths file (``<stem>.paths.txt``), each
renamed into place; the paths file's header records the row count and the
digest of the ``.npy`` it goes with, so :func:`read_embeddings` detects a
pair that does not belong together (a job killed between the two renames)
instead of returning rows under another image's path.

To a dataset (:func:`embed_dataset`): each partition of ``partition_size``
rows is one task that embeds its images and writes its own file, atomically;
a re-run computes only the partitions whose file is missing. With a Dask
``distributed`` client active, the tasks run on its cluster (the extractor
sent once to each worker); a worker lost mid-job has its tasks re-run by
Dask, and since a partition's file appears only complete, and identical
whoever writes it, the output is the same as an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import warnings
from pathlib import Path

import numpy as np

from sktransfer._common import progress, replace_file, require
from sktransfer._dask import active_client, worker_memory
from sktransfer.exceptions import ImageReadError, UnreadableImagesWarning

__all__ = [
    "FORMATS",
    "embed_dataset",
    "embed_files",
    "embed_texts",
    "paths_file",
    "read_embeddings",
]

FORMATS = (".parquet", ".npy")


def _checked_output(output) -> Path:
    """The output path, refused unless it ends in a known format; Parquet's
    extra is checked before the work, not after."""
    output = Path(output)
    if output.suffix not in FORMATS:
        raise ValueError(
            f"The output {str(output)!r} must end with {' or '.join(FORMATS)}."
        )
    if output.suffix == ".parquet":
        require("pyarrow", "parquet", "Writing Parquet")
    return output


def paths_file(output) -> Path:
    """The paths file written beside a ``.npy`` output."""
    output = Path(output)
    return output.with_name(output.stem + ".paths.txt")


def embed_files(paths, output, extractor, *, chunk_size=1024, verbose=True):
    """Embed ``paths`` with ``extractor`` and write the rows to ``output``.

    Parameters
    ----------
    paths : sequence of str
        The image files, in the order of the output rows.
    output : path-like
        ``*.parquet`` (columns ``row``, ``path``, ``embedding``, ``error``;
        needs pyarrow) or ``*.npy`` (float32 rows) with the paths in
        ``<stem>.paths.txt`` beside it, read back, checked, by
        :func:`read_embeddings`.
    extractor : PretrainedFeatureExtractor
        Not fitted; its ``cache`` makes the job resumable.
    chunk_size : int, default=1024
        Images per transform call: the work a crash can lose.
    verbose : bool, default=True
        A progress bar on stderr.

    Returns
    -------
    errors : list of ImageReadError
        The images that could not be read (``on_error="nan"``): their rows
        are NaN (Parquet: an empty embedding and the error's text).
    """
    output = _checked_output(output)
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("No images to embed.")
    if output.suffix == ".parquet":
        _check_utf8(paths, "a Parquet file's path column")
    extractor.set_params(verbose=False).fit(paths)
    rows = np.empty((len(paths), extractor.n_features_out_), dtype=np.float32)
    errors = []
    with progress(
        total=len(paths), desc="Embedding", unit="img", verbose=verbose
    ) as bar:
        for start in range(0, len(paths), chunk_size):
            chunk = paths[start : start + chunk_size]
            with warnings.catch_warnings():  # reported once, at the end
                warnings.simplefilter("ignore", UnreadableImagesWarning)
                try:
                    rows[start : start + len(chunk)] = extractor.transform(chunk)
                except ImageReadError as exc:  # on_error="raise"
                    raise _shifted(exc, start) from exc.__cause__
            errors += [_shifted(error, start) for error in extractor.errors_]
            bar.update(len(chunk))
    metadata = _metadata(extractor)
    if output.suffix == ".parquet":
        _write_parquet(output, paths, rows, errors, metadata)
    else:
        _write_npy(output, paths, rows)
    return errors


def embed_texts(texts, output, extractor, *, chunk_size=1024, verbose=True):
    """Embed ``texts`` with a text ``extractor`` and write the rows to
    ``output``, in input order.

    Parameters
    ----------
    texts : sequence of str
        The texts, in the order of the output rows.
    output : path-like
        ``*.parquet`` (columns ``row``, ``text``, ``embedding``, ``error``;
        needs pyarrow) or ``*.npy`` with the texts in ``<stem>.paths.txt``
        beside it (a JSON header with the row count, then one text per line
        as a JSON string), read back, checked, by :func:`read_embeddings`.
    extractor : PretrainedTextExtractor or PretrainedWordVectors
        Not fitted; the cache of a ``PretrainedTextExtractor`` makes the job
        resumable.
    chunk_size : int, default=1024
        Texts per transform call: the work a crash can lose.
    verbose : bool, default=True
        A progress bar on stderr.
    """
    output = _checked_output(output)
    texts = list(texts)
    if not texts:
        raise ValueError("No texts to embed.")
    if "verbose" in extractor.get_params():
        extractor.set_params(verbose=False)
    extractor.fit(texts)
    rows = np.empty((len(texts), extractor.n_features_out_), dtype=np.float32)
    with progress(
        total=len(texts), desc="Embedding", unit="text", verbose=verbose
    ) as bar:
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            rows[start : start + len(chunk)] = extractor.transform(chunk)
            bar.update(len(chunk))
    if output.suffix == ".parquet":
        params = extractor.get_params()
        metadata = {
            "model": str(params.get("model", params.get("vectors"))),
            "layers": str(getattr(extractor, "layers_", None)),
            "pooling": str(params["pooling"]),
            "precision": str(getattr(extractor, "precision_", "float32")),
        }
        _write_parquet(output, texts, rows, [], metadata, column="text")
    else:
        _write_npy(output, texts, rows)


def _metadata(extractor) -> dict:
    """What a fitted extractor's output files say of it."""
    return {
        "model": str(extractor.model),
        "weights": str(extractor.weights_),
        "layers": str(extractor.layers_),
        "pooling": str(extractor.pooling),
        "precision": extractor.precision_,
    }


def _shifted(error: ImageReadError, start: int) -> ImageReadError:
    """An error of a chunk, numbered as a row of the whole job."""
    if not start or error.index is None:
        return error
    index = error.index + start
    message = str(error).replace(f"Image {error.index} ", f"Image {index} ", 1)
    shifted = ImageReadError(message, index=index, path=error.path)
    shifted.__cause__ = error.__cause__
    return shifted


def _write_parquet(
    output, paths, rows, errors, metadata, start=0, column="path"
) -> None:
    """Rows ``start``.. of a job to one Parquet file, atomically; ``paths``
    in the column ``column`` (``"text"`` for texts)."""
    pa = require("pyarrow", "parquet", "Writing Parquet")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    failed = {e.index: str(e) for e in errors}
    ids = range(start, start + len(paths))
    width = rows.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), width)
    mask = pa.array([i in failed for i in ids])
    table = pa.table(
        {
            "row": pa.array(np.asarray(ids, dtype=np.int64)),
            column: pa.array(paths, pa.string()),
            "embedding": pc.if_else(
                mask, pa.nulls(len(paths), embedding.type), embedding
            ),
            "error": pa.array([failed.get(i) for i in ids], pa.string()),
        }
    ).replace_schema_metadata({f"sktransfer.{k}": v for k, v in metadata.items()})
    replace_file(output, lambda path: pq.write_table(table, path))


def _write_npy(output, paths, rows) -> None:
    """The rows to ``output`` and the paths to its paths file, each
    atomically: the ``.npy`` first, then the paths file, whose header
    records the ``.npy``'s row count and digest. A pair that does not
    belong together (a job killed between the two renames, two jobs
    writing one output) is detected by :func:`read_embeddings`."""
    digest = []

    def write(path):
        with open(path, "wb") as f:
            np.save(f, rows)
        digest.append(_sha256(path))

    replace_file(output, write)
    header = {"sktransfer": "paths", "version": 2, "rows": len(paths)}
    header["npy_sha256"] = digest[0]
    # one JSON string per line, in ASCII: any name round-trips (line breaks
    # of every kind, names that are not UTF-8 as os.fsdecode gives them)
    lines = [json.dumps(header), *(json.dumps(p) for p in paths)]
    replace_file(
        paths_file(output),
        lambda path: Path(path).write_bytes("".join(f"{x}\n" for x in lines).encode()),
    )


def _sha256(path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def read_embeddings(output):
    """The rows and paths of a ``.npy`` output of ``sktransfer embed``
    (:func:`embed_files`), checked to belong together.

    The paths file (``<stem>.paths.txt``) starts with a JSON header that
    records the row count and the SHA-256 of the ``.npy`` file it was
    written with; each further line is one path as a JSON string. A paths
    file of the earlier format (one path per line, as text) is read too,
    checked by its row count only.

    Parameters
    ----------
    output : path-like
        The ``.npy`` file.

    Returns
    -------
    rows : ndarray of shape (n_images, n_features)
        The embeddings.
    paths : list of str
        ``paths[i]`` is the image of ``rows[i]`` (a name that is not UTF-8
        as :func:`os.fsdecode` gives it).

    Raises
    ------
    ValueError
        If the paths file is missing or does not belong to the ``.npy`` file
        (another job's, or one interrupted between writing the two).
    """
    output = Path(output)
    listing = paths_file(output)
    if not listing.exists():
        raise ValueError(
            f"The paths file {str(listing)!r} of {str(output)!r} is missing: "
            "embed the images again."
        )
    data = listing.read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    rows = np.load(output, allow_pickle=False)
    if lines and lines[0].startswith(b'{"sktransfer": "paths"'):
        header = json.loads(lines[0])
        paths = [json.loads(line) for line in lines[1:]]
        agree = header["rows"] == len(paths) == len(rows) and header[
            "npy_sha256"
        ] == _sha256(output)
    else:  # the earlier format: a path per line, as text
        paths = [os.fsdecode(line) for line in lines]
        agree = len(paths) == len(rows)
    if not agree:
        raise ValueError(
            f"The paths file {str(listing)!r} does not belong to {str(output)!r} "
            f"({len(paths)} paths for {len(rows)} rows, or rows of another job: "
            "a job interrupted between writing the two, or two jobs writing one "
            "output). Embed the images again."
        )
    return rows, paths


def _check_utf8(paths, what: str) -> None:
    """Parquet stores paths as UTF-8 text: a name that is not UTF-8 (bytes
    that os.fsdecode kept as surrogates) is refused before the work."""
    for index, path in enumerate(paths):
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"Image {index} ({path!r}) has a name that is not UTF-8, which "
                f"{what} (UTF-8 text) cannot store. Write .npy instead: its paths "
                "file stores any name."
            ) from None


#: A dataset folder's record of its job: what its partitions hold.
JOB_FILE = "_sktransfer_job.json"


def partition_file(folder, index: int) -> Path:
    return Path(folder) / f"part-{index:05d}.parquet"


def embed_dataset(paths, folder, extractor, *, partition_size=1000, verbose=True):
    """Embed ``paths`` to a Parquet dataset: one file per partition.

    Parameters
    ----------
    paths : sequence of str
        The image files; row ``i`` of the dataset is ``paths[i]``.
    folder : path-like
        The dataset: ``part-00000.parquet``, ``part-00001.parquet``... with
        the columns of :func:`embed_files`'s Parquet output (``row`` is the
        row in the whole job), and ``_sktransfer_job.json``, the job's
        record (the paths' digest, the partition size, the extractor's
        configuration). Read it with ``pyarrow.dataset.dataset(folder)`` or
        ``pandas.read_parquet(folder)``.
    extractor : PretrainedFeatureExtractor
        Not fitted. Use ``on_error="nan"`` for a long job: unreadable images
        then get an empty embedding and their error's text.
    partition_size : int, default=1000
        Rows per file and per task: the work a crash can lose.
    verbose : bool, default=True
        A progress bar on stderr.

    Raises
    ------
    RuntimeError
        If another job is writing to ``folder``: one job at a time holds
        its lock, ``_sktransfer_job.lock`` (its host and process id; a lock
        whose process of this host is gone is taken over).
    ValueError
        If a path is not UTF-8 (Parquet stores paths as UTF-8 text), before
        any work.

    Returns
    -------
    summary : dict
        ``partitions`` (in all), ``written`` (by this run), ``skipped``
        (already there), ``unreadable`` (images of the written partitions
        that could not be read).
    """
    require("pyarrow", "parquet", "Writing Parquet")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("No images to embed.")
    _check_utf8(paths, "a Parquet dataset's path column")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _job_lock(folder):
        extractor.set_params(verbose=False).fit(paths)
        _check_job(folder, paths, partition_size, extractor)
        return _embed_partitions(paths, folder, extractor, partition_size, verbose)


def _embed_partitions(paths, folder, extractor, partition_size, verbose) -> dict:
    """The partitions missing from ``folder``, written (the job's lock held)."""
    count = math.ceil(len(paths) / partition_size)
    todo = [i for i in range(count) if not partition_file(folder, i).exists()]
    tasks = [
        (paths[i * partition_size : (i + 1) * partition_size], i * partition_size)
        for i in todo
    ]
    targets = [str(partition_file(folder, i)) for i in todo]
    metadata = _metadata(extractor)
    with progress(
        total=len(todo), desc="Partitions", unit="file", verbose=verbose
    ) as bar:
        unreadable = _run(extractor, tasks, targets, metadata, bar)
    # left by a killed writer of this job or an earlier one: the lock keeps
    # any other job from writing here now
    for stale in folder.glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)
    return {
        "partitions": count,
        "written": len(todo),
        "skipped": count - len(todo),
        "unreadable": unreadable,
    }


#: Held by the job writing a dataset folder: its owner (host, process).
LOCK_FILE = "_sktransfer_job.lock"


@contextlib.contextmanager
def _job_lock(folder: Path):
    """One job at a time in ``folder``: a second one is refused, naming the
    first (whose temporary files it would otherwise delete as stale). A
    lock left by a process of this host that is gone is taken over."""
    lock = folder / LOCK_FILE
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):  # being written, or damaged
                holder = {}
            if holder.get("host") == owner["host"] and not _alive(holder.get("pid")):
                lock.unlink(missing_ok=True)  # (its process is gone)
                continue
            raise RuntimeError(
                f"The folder {str(folder)!r} is being written by another job "
                f"(process {holder.get('pid', '?')} on {holder.get('host', '?')}). "
                f"Wait for it to finish, or delete {str(lock)!r} if that job "
                "is gone."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        break
    else:
        raise RuntimeError(f"Could not lock the folder {str(folder)!r}.")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid) -> bool:
    """Whether process ``pid`` of this host runs (assumed where it cannot be
    told)."""
    if not isinstance(pid, int) or os.name == "nt":  # (os.kill would end it)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True


def _check_job(folder: Path, paths, partition_size, extractor) -> None:
    """Record the job in ``folder``, or check that its partitions are this
    job's: a resume with other paths, another partition size or another
    extractor would mix rows that do not belong together."""
    import hashlib

    from sktransfer._identity import digest

    listing = hashlib.blake2b(digest_size=16)
    for path in paths:
        listing.update(os.fsencode(path) + b"\n")
    job = {
        "rows": len(paths),
        "partition_size": int(partition_size),
        "paths": listing.hexdigest(),
        "extractor": digest(extractor.cache_key_, extractor.numerics_),
        "layers": [str(layer) for layer in extractor.layers_],
    }
    record = folder / JOB_FILE
    if record.exists():
        earlier = json.loads(record.read_text())
        different = sorted(k for k in job if earlier.get(k) != job[k])
        if different:
            raise ValueError(
                f"The folder {str(folder)!r} holds the partitions of another job "
                f"(its {', '.join(different)} differ). Write to another folder, "
                "or delete this one to start again."
            )
        return
    replace_file(record, lambda path: Path(path).write_text(json.dumps(job, indent=1)))


def _write_partition(extractor, paths, start, target, metadata) -> int:
    """One partition: its rows, written atomically; returns how many of its
    images could not be read."""
    worker_memory()  # (on a Dask worker: see _dask)
    extractor._network()  # built once on the shared estimator (a worker's)
    extractor = extractor._sibling()  # (errors_ of its own)
    with warnings.catch_warnings():  # (the file records them)
        warnings.simplefilter("ignore", UnreadableImagesWarning)
        try:
            rows = extractor.transform(paths)
        except ImageReadError as exc:  # on_error="raise"
            raise _shifted(exc, start) from exc.__cause__
    errors = [_shifted(error, start) for error in extractor.errors_]
    _write_parquet(target, paths, rows, errors, metadata, start=start)
    return len(errors)


def _run(extractor, tasks, targets, metadata, bar) -> int:
    """The partitions' tasks: on the active Dask client's cluster, else
    here, one after the other."""
    client = active_client()
    if client is None:
        unreadable = 0
        for (paths, start), target in zip(tasks, targets, strict=True):
            unreadable += _write_partition(extractor, paths, start, target, metadata)
            bar.update()
        return unreadable
    distributed = sys.modules["distributed"]
    shared = client.scatter(extractor, hash=False)
    futures = [
        client.submit(
            _write_partition, shared, paths, start, target, metadata, pure=False
        )
        for (paths, start), target in zip(tasks, targets, strict=True)
    ]
    unreadable = 0
    for future in distributed.as_completed(futures):
        unreadable += future.result()
        bar.update()
    return unreadable
