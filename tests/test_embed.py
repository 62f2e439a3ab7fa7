"""Outputs of ``sktransfer embed`` that come in pairs or folders stay
aligned: a ``.npy`` and its paths file, any file name, one job per dataset
folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer import (
    PretrainedFeatureExtractor,
    _embed,
    embed_dataset,
    read_embeddings,
)
from sktransfer._embed import embed_files, paths_file

from .conftest import SMALL, TinyCNN, assert_same_rows

#: Names a file system holds and a naive text file does not round-trip.
ODD = [
    "a\rb.png",
    "line\u2028sep.png",
    "next\x85line.png",
    "new\nline.png",
    "#hash.png",
    " spaced .png",
    "tab\t.png",
    "\\back.png",
    '"quoted".png',
    "caf\u00e9.png",
]
NOT_UTF8 = [os.fsdecode(b"\xff.png"), os.fsdecode(b"lat\xe9.png")]


def extractor():
    torch.manual_seed(0)
    return PretrainedFeatureExtractor(
        model=TinyCNN(), preprocessing=SMALL, cache=None, verbose=False
    )


def images(folder, names, seed=0):
    """An image of its own (random pixels) for each name; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(os.fspath(folder), name)
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")
        paths.append(path)
    return paths


def reference(paths):
    return extractor().fit(paths).transform(paths)


# -- a .npy and its paths file --------------------------------------------------


@pytest.mark.parametrize("names", [ODD, NOT_UTF8, ODD[:3] + NOT_UTF8[:1]])
def test_any_file_name_is_written_and_read_back(tmp_path, names):
    """Line breaks of every kind, comment-like, spaced and non-UTF-8 names:
    the paths file gives back each name, in its row."""
    paths = images(tmp_path / "in", names)
    out = tmp_path / "emb.npy"
    assert embed_files(paths, out, extractor(), verbose=False) == []
    rows, read = read_embeddings(out)
    assert read == paths
    assert_same_rows(rows, reference(paths))
    assert paths_file(out).read_bytes().isascii()


def test_the_embed_command_writes_a_folder_of_odd_names(tmp_path):
    """A folder holding names that are not UTF-8 or hold line breaks: the
    command finishes, and the rows read back under their own names."""
    from sktransfer.cli import main

    paths = images(tmp_path / "in", ODD + NOT_UTF8)
    out = tmp_path / "emb.npy"
    argv = ["embed", str(tmp_path / "in"), "-o", str(out), "--model", "resnet18"]
    argv += ["--weights", "none", "--size", "32", "--quiet"]
    assert main(argv) == 0
    rows, read = read_embeddings(out)
    assert sorted(read) == sorted(paths)
    resnet = PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing={"resize_size": 32, "crop_size": 32},
        verbose=False,
    )
    assert_same_rows(rows, resnet.fit(read).transform(read))


def _interrupted(monkeypatch, when):
    """Make the ``when``-th atomic rename of the next job raise Ctrl-C."""
    calls = []
    replace = _embed.replace_file

    def replace_file(path, write):
        calls.append(path)
        if len(calls) == when:
            raise KeyboardInterrupt
        replace(path, write)

    monkeypatch.setattr(_embed, "replace_file", replace_file)


@pytest.mark.parametrize("count", [4, 6, 3])
def test_a_job_killed_between_its_two_files_never_misaligns(
    tmp_path, monkeypatch, count
):
    """A job killed after its .npy is in place and before its paths file:
    reading the pair is refused (the rows are another job's, even with as
    many rows), never rows under another image's path."""
    first = images(tmp_path / "first", [f"{i}.png" for i in range(4)], seed=1)
    second = images(tmp_path / "second", [f"{i}.png" for i in range(count)], seed=2)
    out = tmp_path / "emb.npy"
    embed_files(first, out, extractor(), verbose=False)
    _interrupted(monkeypatch, when=2)  # the paths file's rename
    with pytest.raises(KeyboardInterrupt):
        embed_files(second, out, extractor(), verbose=False)
    assert_same_rows(np.load(out), reference(second))  # the new rows are there
    with pytest.raises(ValueError, match="does not belong to"):
        read_embeddings(out)
    paths_file(out).unlink()
    with pytest.raises(ValueError, match="is missing"):
        read_embeddings(out)


def test_the_earlier_paths_file_format_is_read(tmp_path):
    """A paths file of one path per line, as text (before the header):
    read, and checked by its row count."""
    paths = images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "emb.npy"
    np.save(out, reference(paths))
    paths_file(out).write_text("".join(p + "\n" for p in paths))
    rows, read = read_embeddings(out)
    assert read == paths and len(rows) == 3
    paths_file(out).write_text("".join(p + "\n" for p in paths[:2]))
    with pytest.raises(ValueError, match="2 paths for 3 rows"):
        read_embeddings(out)


def test_parquet_refuses_a_name_that_is_not_utf8_before_the_work(tmp_path, monkeypatch):
    """Parquet's path column is UTF-8 text: the job stops before embedding,
    naming the image and the format that stores it."""
    pytest.importorskip("pyarrow")
    paths = images(tmp_path / "in", ["ok.png", *NOT_UTF8])
    fits = []
    monkeypatch.setattr(
        PretrainedFeatureExtractor, "fit", lambda self, X, y=None: fits.append(X)
    )
    for run in (
        lambda: embed_files(paths, tmp_path / "e.parquet", extractor()),
        lambda: embed_dataset(paths, tmp_path / "ds", extractor()),
    ):
        with pytest.raises(ValueError, match="Image 1 .* not UTF-8.* Write .npy"):
            run()
    assert fits == []


# -- one job per dataset folder -------------------------------------------------


def test_a_second_job_on_a_dataset_folder_is_refused(tmp_path, monkeypatch):
    """While a job writes a folder, a second one is refused, naming the
    first, and the first's temporary file survives; the first finishes."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(_embed, "active_client", lambda: None)
    paths = images(tmp_path / "in", [f"{i}.png" for i in range(6)])
    folder = tmp_path / "ds"
    run = _embed._run
    live = folder / ".part-00001.parquet.abc123.tmp"
    refused = []

    def first_job(*args):
        live.write_bytes(b"being written")  # (the first job's writer)
        for second in (paths, paths[:3]):  # the same job or another
            with pytest.raises(RuntimeError, match=f"process {os.getpid()}") as e:
                embed_dataset(second, folder, extractor(), partition_size=2)
            refused.append(str(e.value))
            assert live.exists()
        live.unlink()
        return run(*args)

    monkeypatch.setattr(_embed, "_run", first_job)
    summary = embed_dataset(paths, folder, extractor(), partition_size=2)
    assert len(refused) == 2 and summary["written"] == 3
    assert not (folder / _embed.LOCK_FILE).exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    """A job killed with its lock in place (its process gone): the next job
    runs."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(_embed, "active_client", lambda: None)
    paths = images(tmp_path / "in", ["a.png", "b.png"])
    folder = tmp_path / "ds"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket

    owner = {"host": socket.gethostname(), "pid": int(dead.stdout)}
    (folder / _embed.LOCK_FILE).write_text(json.dumps(owner))
    summary = embed_dataset(paths, folder, extractor(), partition_size=1)
    assert summary["written"] == 2
    assert not (folder / _embed.LOCK_FILE).exists()
