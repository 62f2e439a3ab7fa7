"""Untrusted disks, folders and files around the embedding cache (issue 28).

Each test breaks something on purpose and asserts that the rows equal a
recomputation, that memory and time stay bounded, and that nothing is left
behind: full and failing filesystems (4), hostile entries in a shared cache
folder (5), many caches and big unreadable files against one memory bound
(6), and the modes of every file written (7). ``docs/reliability.md`` lists
each promise with its test.
"""

import errno
import gc
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sktransfer._cache as cache_module
from sktransfer import EmbeddingCache, PretrainedFeatureExtractor, _network
from sktransfer._cache import default_cache, directory_cache
from sktransfer._common import replace_file

from .conftest import SMALL, TinyCNN, assert_same_rows

ROOT = Path(__file__).resolve().parents[1]


def make(model, cache=None, **params):
    params.setdefault("preprocessing", SMALL)
    return PretrainedFeatureExtractor(model=model, cache=cache, verbose=False, **params)


def fresh_rows(model, X):
    _network.clear()
    return make(model).fit(X).transform(X)


@pytest.fixture
def pictures():
    """Six different 24x20 RGB images."""
    return np.random.default_rng(3).integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCNN()


def _cache_warnings(record, text):
    return [w for w in record if text in str(w.message)]


# -- 4. a disk that cannot take an entry: hits served, misses not stored ----------
@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs (as root, where the machine allows mounts)."""
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
            capture_output=True,
        )
    except OSError as exc:
        pytest.skip(f"mount cannot run here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Take every free byte of the filesystem of ``folder``."""
    try:
        with open(folder / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    for i in range(10_000):  # and the inodes
        try:
            (folder / f"i{i}").touch()
        except OSError:
            break


def test_a_full_filesystem_serves_hits_and_stores_nothing(
    pictures, model, small_filesystem
):
    """A real full disk (tmpfs): the entries already there are hits, the
    others computed and not stored, one warning, no temporary file."""
    folder = small_filesystem / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures[:2]).transform(
        pictures[:2]
    )
    stored = sorted(folder.rglob("*.emb"))
    assert stored
    _fill(small_filesystem)
    cache = EmbeddingCache(directory=folder)  # (a new process: memory empty)
    extractor = make(model, cache).fit(pictures[:1])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows = extractor.transform(pictures)
    assert len(_cache_warnings(record, "cannot be written")) == 1
    assert_same_rows(rows, expected)
    assert cache.hits >= 2
    assert sorted(folder.rglob("*.emb")) == stored
    assert not list(folder.rglob("*.tmp"))


def _failing(real, step, code, folder):
    """``real`` (os.write, os.fsync or os.replace), failing with ``code``
    for the files of ``folder`` only; "midway": a write that takes half
    of the entry, then fails."""
    calls = []

    def ours(first) -> bool:
        if not isinstance(first, str):
            first = os.readlink(f"/proc/self/fd/{first}")
        return str(folder) in first

    def fake(*args, **kwargs):
        if not ours(args[0]):
            return real(*args, **kwargs)
        calls.append(args[0])
        if step == "midway" and len(calls) % 2 == 1:
            return real(args[0], args[1][: len(args[1]) // 2])
        raise OSError(code, os.strerror(code))

    return fake


@pytest.mark.parametrize("step", ["write", "midway", "fsync", "replace"])
@pytest.mark.parametrize(
    "code",
    [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS],
    ids=errno.errorcode.get,
)
def test_every_write_failure_is_one_warning_and_no_temporary_file(
    pictures, model, tmp_path, monkeypatch, step, code
):
    """Whatever step of a write fails, and with whatever error: the rows of
    a recomputation, one warning, no new entry, no temporary file."""
    folder = tmp_path / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures[:2]).transform(
        pictures[:2]
    )
    stored = sorted(folder.rglob("*.emb"))
    name = {"midway": "write"}.get(step, step)
    real = getattr(cache_module.os, name)
    monkeypatch.setattr(cache_module.os, name, _failing(real, step, code, folder))
    cache = EmbeddingCache(directory=folder)
    extractor = make(model, cache).fit(pictures[:1])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows = extractor.transform(pictures)
    assert len(_cache_warnings(record, "cannot be written")) == 1
    assert_same_rows(rows, expected)
    assert cache.hits >= 2
    assert sorted(folder.rglob("*.emb")) == stored
    assert not list(folder.rglob("*.tmp"))


def test_a_directory_where_an_entry_goes_is_a_write_failure(pictures, model, tmp_path):
    """Directories in place of the entries: computed, one warning per kind
    (damaged entry, unwritable directory), nothing stored, nothing left."""
    folder = tmp_path / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures).transform(pictures)
    for entry in folder.rglob("*.emb"):
        entry.unlink()
        entry.mkdir()
    cache = EmbeddingCache(directory=folder)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows = make(model, cache).fit(pictures[:1]).transform(pictures)
    assert len(_cache_warnings(record, "cannot be written")) == 1
    assert len(_cache_warnings(record, "damaged")) == 1
    assert_same_rows(rows, expected)
    assert not list(folder.rglob("*.tmp"))


# -- 5. hostile entries in a shared folder: misses, never a hang or a bomb -------
_CHILD = """
import pickle, sys, warnings, resource
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
folder = sys.argv[1]
extractor = pickle.load(open(folder + "/model.pkl", "rb"))
with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    rows = extractor.transform(np.load(folder + "/X.npy"))
np.save(folder + "/out.npy", rows)
print(sum("damaged" in str(w.message) for w in record))
"""


def _hostile(entry: Path, how: str, valid: Path) -> None:
    entry.unlink()
    if how == "fifo":
        os.mkfifo(entry)
    elif how == "dev-zero":
        entry.symlink_to("/dev/zero")
    elif how == "directory":
        entry.mkdir()
    elif how == "overlong":  # a valid entry, then 16 GiB (sparse) of zeros
        entry.write_bytes(valid.read_bytes())
        os.truncate(entry, 16 << 30)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero")
@pytest.mark.parametrize("how", ["fifo", "dev-zero", "directory", "overlong"])
def test_hostile_entries_are_misses_in_bounded_time(pictures, model, tmp_path, how):
    """A FIFO, a link to /dev/zero, a directory or an overlong (16 GiB)
    file in place of entries: the child's transform ends within
    its timeout and a 6 GiB address space, with the rows of a
    recomputation and one warning."""
    folder = tmp_path / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures).transform(pictures)
    entries = sorted(folder.rglob("*.emb"))
    for entry in entries[:2]:
        _hostile(entry, how, entries[-1])
    job = tmp_path / "job"
    job.mkdir()
    extractor = make(model, EmbeddingCache(directory=folder)).fit(pictures[:1])
    (job / "model.pkl").write_bytes(pickle.dumps(extractor))
    np.save(job / "X.npy", pictures)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(job)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a {how} in the cache folder hangs transform")
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 120
    assert int(done.stdout.split()[-1]) == 1
    assert_same_rows(np.load(job / "out.npy"), expected)
    if how != "directory":  # rewritten as regular entries
        for entry in entries[:2]:
            assert entry.is_file() and not entry.is_symlink()


# -- 6. one memory bound for all caches ------------------------------------------
@pytest.fixture
def process_bound():
    """Restore the process-wide bound after the test."""
    before = default_cache().max_bytes
    yield
    default_cache().max_bytes = before


def test_all_memory_layers_share_one_bound(tmp_path, process_bound):
    """30 directory caches and 30 caches of one's own, 100 vectors each: the
    memory layers hold at most default_cache().max_bytes together, the
    most recently used vectors."""
    budget = cache_module._BUDGET
    default_cache().max_bytes = 40_000
    caches = [directory_cache(tmp_path / f"job{i}") for i in range(30)]
    caches += [EmbeddingCache() for _ in range(30)]
    caches.append(default_cache())
    for i in range(100):
        for j, cache in enumerate(caches):
            cache._remember(("c", None, f"{i}"), np.full(100, j, np.float32))
            total = sum(c.nbytes for c in caches)
            assert total <= 40_000 and budget.weight <= 40_000
    assert budget.weight == 40_000  # (full: exactly 100 vectors of 400 bytes)
    newest = caches[-1].get(("c", None, "99"))
    assert newest is not None and newest[0] == len(caches) - 1
    assert caches[0].get(("c", None, "0")) is None


def test_setting_max_bytes_takes_effect_at_once(process_bound):
    """Lowering a cache's bound (and default_cache()'s) drops vectors then,
    not at the next put."""
    budget = cache_module._BUDGET
    mine = EmbeddingCache(max_bytes=100 * 400)
    for i in range(100):
        mine.put(("c", None, str(i)), np.full(100, i, np.float32))
    assert mine.nbytes == 40_000
    mine.max_bytes = 4000
    assert mine.nbytes <= 4000 and len(mine) == 10
    assert mine.get(("c", None, "99")) is not None
    default_cache().clear()
    for i in range(100):
        default_cache().put(("c", None, str(i)), np.full(100, i, np.float32))
    default_cache().max_bytes = 8000
    assert default_cache().nbytes <= 8000 and budget.weight <= 8000
    default_cache().max_bytes = 0
    assert len(default_cache()) == 0 and len(mine) == 0 and budget.weight == 0


def test_errors_keep_messages_not_the_bytes_of_unreadable_files(model, tmp_path):
    """errors_ of 10 unreadable 4 MiB files (on_error="nan", no workers and
    two) holds their messages, rows and paths, not their bytes."""
    paths = []
    for i in range(10):
        path = tmp_path / f"bad{i}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4 << 20))
        paths.append(str(path))
    X = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    for workers in (0, 2):
        extractor = make(model, on_error="nan", num_workers=workers).fit(X)
        gc.collect()
        tracemalloc.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = extractor.transform(paths)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert np.isnan(rows).all()
        assert [(e.index, e.path) for e in extractor.errors_] == list(enumerate(paths))
        assert all("not an image" in str(e) for e in extractor.errors_)
        assert held < 8 << 20, f"{held / 1e6:.1f} MB held for 42 MB of files"


# -- 7. files honour the umask ---------------------------------------------------
@pytest.fixture(params=[0o022, 0o077], ids=["022", "077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_cache_entries_honour_the_umask(pictures, model, tmp_path, umask):
    folder = tmp_path / "cache"
    make(model, EmbeddingCache(directory=folder)).fit(pictures).transform(pictures)
    entries = list(folder.rglob("*.emb"))
    assert entries and {_mode(e) for e in entries} == {0o666 & ~umask}


def test_replaced_files_honour_the_umask(tmp_path, umask):
    path = tmp_path / "out" / "file.txt"
    replace_file(path, lambda tmp: tmp.write_text("x"))
    assert _mode(path) == 0o666 & ~umask


@pytest.mark.parametrize("kind", [".npy", ".parquet", "dataset"])
def test_embed_outputs_honour_the_umask(pictures, model, tmp_path, umask, kind):
    """``.npy`` and its paths file, a Parquet file, a Parquet dataset and its
    job record."""
    from PIL import Image

    from sktransfer._embed import embed_dataset, embed_files

    if kind != ".npy":
        pytest.importorskip("pyarrow")
    paths = []
    for i, picture in enumerate(pictures[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(picture).save(paths[-1])
    out = tmp_path / "out"
    if kind == "dataset":
        embed_dataset(paths, out, make(model), verbose=False)
    else:
        embed_files(paths, out / f"rows{kind}", make(model), verbose=False)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and {_mode(p) for p in written} == {0o666 & ~umask}


def test_a_saved_model_its_card_and_config_honour_the_umask(pictures, tmp_path, umask):
    import sktransfer

    extractor = make("resnet18", weights=None, random_state=0).fit(pictures)
    folder = tmp_path / "shared"
    sktransfer.save(extractor, folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) >= 2 and {_mode(p) for p in files} == {0o666 & ~umask}
