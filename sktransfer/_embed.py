"""Embed a list of image files to a file: Parquet, or ``.npy`` and a paths file.

The job behind ``sktransfer embed``. Images go through the extractor in
chunks; each chunk's rows land in the extractor's cache before the next one
starts, so with a directory cache an interrupted job (a crash, Ctrl-C)
resumes where it stopped: a re-run takes the finished chunks from the cache.
The output file is written at the end, atomically (a temporary file renamed
into place), so it is either absent or complete.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sktransfer._common import replace_file, require
from sktransfer.exceptions import ImageReadError

__all__ = ["FORMATS", "embed_files", "paths_file"]

FORMATS = (".parquet", ".npy")


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
        needs pyarrow) or ``*.npy`` (float32 rows) with the paths, one per
        line, in ``<stem>.paths.txt`` beside it.
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
    output = Path(output)
    if output.suffix not in FORMATS:
        raise ValueError(
            f"The output {str(output)!r} must end with {' or '.join(FORMATS)}."
        )
    if output.suffix == ".parquet":  # before the work, not after
        require("pyarrow", "parquet", "Writing Parquet")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("No images to embed.")
    if output.suffix == ".npy" and any("\n" in p for p in paths):
        raise ValueError(
            "A path holds a line break, which the .npy output's paths file "
            "(one path per line) cannot store. Write Parquet instead."
        )
    extractor.set_params(verbose=False).fit(paths)
    rows = np.empty((len(paths), extractor.n_features_out_), dtype=np.float32)
    errors = []
    with tqdm(
        total=len(paths), desc="Embedding", unit="img", disable=not verbose
    ) as bar:
        for start in range(0, len(paths), chunk_size):
            chunk = paths[start : start + chunk_size]
            with warnings.catch_warnings():  # reported once, at the end
                warnings.simplefilter("ignore", UserWarning)
                try:
                    rows[start : start + len(chunk)] = extractor.transform(chunk)
                except ImageReadError as exc:  # on_error="raise"
                    raise _shifted(exc, start) from exc.__cause__
            errors += [_shifted(error, start) for error in extractor.errors_]
            bar.update(len(chunk))
    metadata = {
        "model": str(extractor.model),
        "weights": str(extractor.weights_),
        "layers": str(extractor.layers_),
        "pooling": str(extractor.pooling),
        "precision": extractor.precision_,
    }
    if output.suffix == ".parquet":
        _write_parquet(output, paths, rows, errors, metadata)
    else:
        _write_npy(output, paths, rows)
    return errors


def _shifted(error: ImageReadError, start: int) -> ImageReadError:
    """An error of a chunk, numbered as a row of the whole job."""
    if not start or error.index is None:
        return error
    index = error.index + start
    message = str(error).replace(f"Image {error.index} ", f"Image {index} ", 1)
    shifted = ImageReadError(message, index=index, path=error.path)
    shifted.__cause__ = error.__cause__
    return shifted


def _write_parquet(output, paths, rows, errors, metadata) -> None:
    pa = require("pyarrow", "parquet", "Writing Parquet")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    failed = {e.index: str(e) for e in errors}
    width = rows.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), width)
    mask = pa.array([i in failed for i in range(len(paths))])
    table = pa.table(
        {
            "row": pa.array(np.arange(len(paths), dtype=np.int64)),
            "path": pa.array(paths, pa.string()),
            "embedding": pc.if_else(
                mask, pa.nulls(len(paths), embedding.type), embedding
            ),
            "error": pa.array([failed.get(i) for i in range(len(paths))], pa.string()),
        }
    ).replace_schema_metadata({f"sktransfer.{k}": v for k, v in metadata.items()})
    replace_file(output, lambda path: pq.write_table(table, path))


def _write_npy(output, paths, rows) -> None:
    def write(path):
        with open(path, "wb") as f:
            np.save(f, rows)

    replace_file(output, write)
    replace_file(
        paths_file(output),
        lambda path: Path(path).write_text("".join(p + "\n" for p in paths)),
    )
