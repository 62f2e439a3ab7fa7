"""Fault injection: things broken on purpose, and the rows still right.

Each test breaks something a hostile or unlucky user would (settings that
change no tensor, files replaced under the same name, size and timestamp,
files rewritten while they are read, damaged or read-only cache entries,
thin and huge images, ambiguous arrays, typos, link loops, fits that fail)
and asserts that every row equals the row a fresh computation gives, or
that a clear error names what was wrong. ``docs/reliability.md`` lists the
promises these tests hold the library to.
"""

import copy
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from sktransfer import (
    EmbeddingCache,
    FineTunedClassifier,
    PretrainedFeatureExtractor,
    _network,
    load_image_folder,
)
from sktransfer._images import decode as _decode
from sktransfer.exceptions import FolderLinkWarning, ImageReadError

from .conftest import SMALL, TinyCNN, assert_same_rows


def make(model, cache=None, **params):
    params.setdefault("preprocessing", SMALL)
    return PretrainedFeatureExtractor(model=model, cache=cache, verbose=False, **params)


def fresh_rows(model, X, **params):
    """The rows of a recomputation: no memo of networks, no cache."""
    _network.clear()
    return make(model, None, **params).fit(X).transform(X)


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pictures():
    """Four different 24x20 RGB images."""
    return np.random.default_rng(7).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)


# -- 1. network identity covers settings and file content ---------------------
class Scaled(TinyCNN):
    """A TinyCNN whose forward reads a plain (non-tensor) setting."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return super().forward(x * self.scale)


def _stride(model):
    model.block1[0].stride = (1, 1)


def _dilation(model):
    model.block1[0].dilation, model.block1[0].padding = (2, 2), (2, 2)


def _activation(model):
    model.block2[1] = nn.LeakyReLU(0.3)


def _scale(model):
    model.scale = 0.5


def _hook(model):
    model.block1.register_forward_hook(lambda module, args, out: out * 2)


@pytest.mark.parametrize("change", [_stride, _dilation, _activation, _scale, _hook])
@pytest.mark.parametrize("cache", [None, "memory"])
def test_modules_equal_but_for_a_setting_give_their_own_rows(pictures, change, cache):
    """Same code and tensors, another non-tensor setting: other rows, the
    recomputation's, with the cache on or off."""
    torch.manual_seed(0)
    base = Scaled(1.0)
    other = copy.deepcopy(base)
    change(other)
    rows = make(base, cache).fit(pictures).transform(pictures)
    other_rows = make(other, cache).fit(pictures).transform(pictures)
    assert not np.allclose(rows, other_rows)
    assert_same_rows(other_rows, fresh_rows(other, pictures))
    assert_same_rows(rows, fresh_rows(base, pictures))


def test_a_module_changed_in_place_between_fits_is_another_network(pictures):
    """The same module object, mutated after a fit: a refit sees the change."""
    torch.manual_seed(0)
    model = Scaled(1.0)
    extractor = make(model, "memory", layer="block1")
    before = extractor.fit(pictures).transform(pictures)
    _stride(model)
    after = extractor.fit(pictures).transform(pictures)
    assert after.shape == before.shape and not np.allclose(before, after)
    assert_same_rows(after, fresh_rows(model, pictures, layer="block1"))


def test_torchvision_dilation_setting_is_part_of_identity(pictures):
    """resnet50() and resnet50(replace_stride_with_dilation=...) with the same
    tensors give different rows, each its recomputation's."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet50()
    dilated = torchvision.models.resnet50(
        replace_stride_with_dilation=[False, True, True]
    )
    dilated.load_state_dict(plain.state_dict())
    a = make(plain, "memory").fit(pictures).transform(pictures)
    b = make(dilated, "memory").fit(pictures).transform(pictures)
    assert not np.allclose(a, b)
    assert_same_rows(b, fresh_rows(dilated, pictures))


def _save(state, path):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("how", ["in place", "renamed over"])
@pytest.mark.parametrize("cache", [None, "memory", "disk"])
def test_a_checkpoint_replaced_with_the_same_size_and_mtime_is_reloaded(
    pictures, tmp_path, how, cache
):
    """A checkpoint rewritten with other tensors of the same size, its mtime
    set back (``cp -p``, archives with fixed dates): the new tensors are used."""
    torch.manual_seed(0)
    first, second = TinyCNN(), TinyCNN()
    path = tmp_path / "weights.pth"
    _save(first.state_dict(), path)
    stat = path.stat()
    cache = str(tmp_path / "cache") if cache == "disk" else cache
    extractor = make(TinyCNN(), cache, weights=path)
    old = extractor.fit(pictures).transform(pictures)
    if how == "in place":
        _save(second.state_dict(), path)
    else:
        _save(second.state_dict(), tmp_path / "new.pth")
        os.replace(tmp_path / "new.pth", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    new = clone(extractor).fit(pictures).transform(pictures)
    assert not np.allclose(old, new)
    assert_same_rows(new, fresh_rows(second, pictures))


# -- 2. an image's key is the digest of the bytes that were decoded ------------
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_a_file_rewritten_between_hashing_and_decoding(
    pictures, tmp_path, monkeypatch, cache
):
    """Another writer replaces a file after its first read: what was decoded
    is stored under its own digest, never under the other content's."""
    a, b = (png_bytes(image) for image in pictures[:2])
    path = tmp_path / "photo.png"
    path.write_bytes(a)
    reads = []
    real_read = _decode.read_bytes

    def read_then_replace(p, *args):
        data = real_read(p, *args)
        reads.append(data)
        if len(reads) == 1:  # the writer strikes after the first read
            path.write_bytes(b)
        return data

    monkeypatch.setattr(_decode, "read_bytes", read_then_replace)
    store = str(tmp_path / "cache") if cache == "disk" else EmbeddingCache()
    torch.manual_seed(0)
    model = TinyCNN()
    extractor = make(model, store).fit(pictures)
    reads.clear()
    row = extractor.transform([str(path)])
    assert reads[0] == a and reads[-1] == b
    expected = fresh_rows(model, pictures[:2])
    assert_same_rows(row[0], expected[1])  # b was decoded: b's row
    monkeypatch.setattr(_decode, "read_bytes", real_read)
    (tmp_path / "a.png").write_bytes(a)
    again = extractor.transform([str(tmp_path / "a.png"), str(path)])
    assert_same_rows(again, expected)  # a's row is a's, b's is b's


# -- 3. damaged cache entries are misses, recomputed and rewritten --------------
def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        middle = len(data) // 2
        data = data or b"\x00"
        path.write_bytes(
            data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        )
    elif how == "swapped":  # a valid entry of another key
        path.write_bytes(other.read_bytes())
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "npy":  # an entry of the old format
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(8, np.float32))
        path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "how", ["empty", "truncated", "flipped", "swapped", "garbage", "npy"]
)
def test_damaged_disk_entries_are_recomputed_and_rewritten(pictures, tmp_path, how):
    """Every damaged entry gives the uncached row, one warning, and a repaired
    file; the others are still hits."""
    torch.manual_seed(0)
    model = TinyCNN()
    folder = tmp_path / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures).transform(pictures)
    entries = sorted(folder.rglob("*.emb"))
    assert len(entries) == len(pictures)
    for entry in entries[:2]:
        _damage(entry, how, entries[-1])
    cache = EmbeddingCache(directory=folder)  # a new process: memory is empty
    extractor = make(model, cache).fit(pictures[:1])
    with pytest.warns(UserWarning, match="damaged") as record:
        rows = extractor.transform(pictures)
    assert len([w for w in record if "damaged" in str(w.message)]) == 1
    assert_same_rows(rows, expected)
    assert cache.repaired >= 2
    reread = EmbeddingCache(directory=folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no warning any more
        assert_same_rows(
            make(model, reread).fit(pictures[:1]).transform(pictures), expected
        )
    assert reread.repaired == 0


def test_entries_are_written_whole_or_not_at_all(pictures, tmp_path, monkeypatch):
    """A write that dies midway leaves no entry and no temporary file."""
    import sktransfer._cache as cache_module

    torch.manual_seed(0)
    model = TinyCNN()
    folder = tmp_path / "cache"

    def dies(fd):
        raise KeyboardInterrupt

    extractor = make(model, str(folder)).fit(pictures[:1])
    for path in folder.rglob("*.emb"):  # (the probe's entry, if any)
        path.unlink()
    monkeypatch.setattr(cache_module.os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        extractor.transform(pictures)
    assert not list(folder.rglob("*.emb")) and not list(folder.rglob("*.tmp"))


def test_an_unwritable_cache_directory_serves_hits_and_stores_nothing(
    pictures, tmp_path, monkeypatch
):
    """Writes that fail (read-only): hits served, misses computed, one warning."""
    import sktransfer._cache as cache_module

    torch.manual_seed(0)
    model = TinyCNN()
    folder = tmp_path / "cache"
    expected = fresh_rows(model, pictures)
    make(model, EmbeddingCache(directory=folder)).fit(pictures[:2]).transform(
        pictures[:2]
    )
    stored = sorted(folder.rglob("*.emb"))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", refused)
    cache = EmbeddingCache(directory=folder)
    extractor = make(model, cache).fit(pictures[:1])
    with pytest.warns(UserWarning, match="cannot be written") as record:
        rows = extractor.transform(pictures)
    assert len([w for w in record if "cannot be written" in str(w.message)]) == 1
    assert_same_rows(rows, expected)
    assert cache.hits >= 2 and sorted(folder.rglob("*.emb")) == stored


_READ_ONLY_CHILD = """
import sys, warnings
import numpy as np
from numpy.testing import assert_allclose, assert_array_equal
from sktransfer import PretrainedFeatureExtractor
folder, data = sys.argv[1], sys.argv[2]
X = np.load(data + "/X.npy")
expected = np.load(data + "/expected.npy")
extractor = PretrainedFeatureExtractor(
    model="resnet18", weights=None, random_state=0, verbose=False, cache=folder,
    preprocessing={"resize_size": 32, "crop_size": 32}).fit(X[:1])
with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    rows = extractor.transform(X)
assert_same_rows(rows, expected)
messages = [str(w.message) for w in record if "cannot be written" in str(w.message)]
assert len(messages) == 1, messages
print("hits", extractor.cache.__class__.__name__)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_read_only_cache_directory_as_an_ordinary_user(pictures, tmp_path):
    """A directory the user cannot write (as a non-root user: as root, the
    check runs in a child process that drops to ``nobody``)."""
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        folder = base / "cache"
        X = pictures
        seeded = dict(model="resnet18", weights=None, random_state=0)
        make(cache=str(folder), **seeded).fit(X[:2]).transform(X[:2])
        np.save(base / "X.npy", X)
        np.save(base / "expected.npy", make(**seeded).fit(X).transform(X))
        for path in [folder, *folder.rglob("*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        os.chmod(base / "X.npy", 0o444)
        os.chmod(base / "expected.npy", 0o444)
        command = [sys.executable, "-c", _READ_ONLY_CHILD, str(folder), str(base)]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        if os.geteuid() == 0:
            nobody = 65534

            def drop():
                os.setgid(nobody)
                os.setuid(nobody)

            try:
                result = subprocess.run(
                    command, env=env, preexec_fn=drop, capture_output=True, text=True
                )
            except PermissionError as exc:  # this Python is root's alone
                pytest.skip(f"'nobody' cannot run {sys.executable} here: {exc}")
        else:
            result = subprocess.run(command, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o755)
        shutil.rmtree(base)


# -- 4. memory is bounded by what is computed, not what a file claims -----------
@pytest.mark.parametrize("size", [(20000, 1), (1, 100000)])
@pytest.mark.parametrize("kind", ["path", "bytes", "pil"])
def test_thin_images_are_row_errors(pictures, tmp_path, size, kind):
    """A tiny file of an extreme aspect ratio is refused before it is resized
    (it would ask for gigabytes): ImageReadError naming the row, or NaN."""
    thin = Image.new("L", size, 128)
    path = tmp_path / "thin.png"
    thin.save(path)
    assert path.stat().st_size < 1000
    item = {"path": str(path), "bytes": path.read_bytes(), "pil": thin}[kind]
    good = [png_bytes(p) for p in pictures[:2]]
    extractor = make("resnet18", weights=None, random_state=0, preprocessing="auto")
    extractor.fit(good)
    with pytest.raises(ImageReadError, match="aspect ratio") as info:
        extractor.transform([good[0], item, good[1]])
    assert info.value.index == 1
    tolerant = clone(extractor).set_params(on_error="nan").fit(good)
    with pytest.warns(UserWarning, match="could not be read"):
        rows = tolerant.transform([good[0], item, good[1]])
    assert np.isnan(rows[1]).all()
    assert_same_rows(rows[[0, 2]], tolerant.transform(good))


def test_a_thin_array_is_refused_before_it_is_resized():
    """An array batch of thin images: a ValueError, not a raw allocation error."""
    X = np.zeros((2, 1, 20000, 3), np.uint8)
    with pytest.raises(ValueError, match="aspect ratio"):
        make("resnet18", weights=None, preprocessing="auto").fit(X)


def test_a_huge_file_is_refused_unread(tmp_path, pictures, monkeypatch):
    """A 1.5 GB file named .jpg is refused from its size; it is never read."""
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(1_500_000_000)  # sparse: no disk space used
    monkeypatch.setattr(
        _decode, "decode", lambda *a: pytest.fail("the huge file was decoded")
    )
    extractor = make(TinyCNN(), on_error="nan").fit(pictures)
    with pytest.warns(UserWarning, match="could not be read"):
        rows = extractor.transform([str(huge)])
    assert np.isnan(rows).all()
    assert "bytes, more than an image" in str(extractor.errors_[0])
    with pytest.raises(ImageReadError, match="huge.jpg") as info:
        make(TinyCNN()).fit(pictures).transform([str(huge)])
    assert info.value.index == 0 and info.value.path == str(huge)


def test_a_file_that_grows_while_read_is_bounded(tmp_path, monkeypatch):
    """read_bytes never reads more than the bound, whatever stat said."""
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG" + b"\x00" * (2 << 20))
    small = os.stat_result((0o100644, 0, 0, 1, 0, 0, 100, 0, 0, 0))
    monkeypatch.setattr(os, "fstat", lambda fd: small)  # "100 bytes"
    with pytest.raises(ValueError, match="more than an image"):
        _decode.read_bytes(path, max_pixels=10)


# -- 5. ambiguous input is refused, not guessed ---------------------------------
def test_one_image_without_a_batch_axis_is_refused(pictures):
    """(H, W, 3) arrays and (3, H, W) tensors name the shape and the fix."""
    extractor = make(TinyCNN())
    with pytest.raises(ValueError, match=r"X\[None\]"):
        extractor.fit(pictures[0])
    with pytest.raises(ValueError, match=r"\(20, 24, 3\)"):
        extractor.fit(pictures[0])
    tensor = torch.from_numpy(pictures[0]).permute(2, 0, 1)
    with pytest.raises(ValueError, match=r"X\[None\]"):
        extractor.fit(tensor)
    rgba = np.zeros((20, 24, 4), np.uint8)
    with pytest.raises(ValueError, match="4 channels"):
        extractor.fit(rgba)
    # the fixes work and give the batched rows
    fitted = extractor.fit(pictures)
    assert_same_rows(
        fitted.transform(pictures[0][None]), fitted.transform(pictures[:1])
    )


@pytest.mark.parametrize(
    "X, name",
    [
        ({"a.png", "b.png"}, "set"),
        ({"a": 1}, "mapping"),
        ((p for p in ["a.png"]), "generator"),
        (iter(["a.png"]), "iterator"),
    ],
)
def test_unordered_or_one_shot_containers_are_refused(X, name):
    """Sets, dicts and generators: a TypeError naming the container."""
    with pytest.raises(TypeError, match=name):
        make(TinyCNN()).fit(X)


def test_a_pandas_index_of_paths_works_like_a_list(pictures, tmp_path):
    """A pd.Index of paths gives the rows of the same list."""
    pd = pytest.importorskip("pandas")
    paths = []
    for i, image in enumerate(pictures):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    extractor = make(TinyCNN()).fit(paths)
    assert_same_rows(extractor.transform(pd.Index(paths)), extractor.transform(paths))


def test_a_closed_pil_image_names_its_row(pictures):
    """A PIL image closed before it was passed: ImageReadError for its row."""
    images = [Image.fromarray(p) for p in pictures[:3]]
    images[1].close()
    extractor = make(TinyCNN()).fit(images[:1])
    with pytest.raises(ImageReadError, match="closed") as info:
        extractor.transform(images)
    assert info.value.index == 1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_a_pil_image_whose_with_block_ended_names_its_row(pictures, tmp_path, fmt):
    """``with Image.open(path) as image: pass`` and then ``image`` passed: the
    file is closed before the pixels were read. An ImageReadError saying the
    image is closed for its row (not "AssertionError: ."), or with
    on_error="nan" a NaN row and the others in place."""
    paths = []
    for i, picture in enumerate(pictures[:3]):
        paths.append(tmp_path / f"{i}.{fmt.lower()}")
        Image.fromarray(picture).save(paths[-1], format=fmt)
    with Image.open(paths[1]) as unread:
        pass
    images = [Image.open(paths[0]), unread, Image.open(paths[2])]
    extractor = make(TinyCNN()).fit([str(p) for p in paths])
    with pytest.raises(ImageReadError, match="PIL image is closed") as info:
        extractor.transform(images)
    assert info.value.index == 1
    assert "AssertionError" not in str(info.value)
    tolerant = clone(extractor).set_params(on_error="nan").fit([str(p) for p in paths])
    with pytest.warns(UserWarning, match="could not be read"):
        rows = tolerant.transform(images)
    assert [e.index for e in tolerant.errors_] == [1]
    assert "PIL image is closed" in str(tolerant.errors_[0])
    assert np.isnan(rows[1]).all()
    assert_same_rows(rows[[0, 2]], tolerant.transform([str(paths[0]), str(paths[2])]))


# -- 6. parameters that look like typos -------------------------------------------
@pytest.mark.parametrize("word", ["None", "Memory", "disk", "cache"])
def test_a_bare_word_as_cache_is_a_typo(pictures, tmp_path, monkeypatch, word):
    """cache='None' or 'Memory' raises at fit and creates no folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'memory', None, an EmbeddingCache"):
        make(TinyCNN(), word).fit(pictures)
    assert list(tmp_path.iterdir()) == []


def test_cache_paths_expand_the_home_and_accept_pathlike(
    pictures, tmp_path, monkeypatch
):
    """'~/c' is under the home folder; a Path works; a file is refused."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = TinyCNN()
    make(model, "~/c").fit(pictures).transform(pictures)
    assert list((tmp_path / "c").rglob("*.emb")) and not (tmp_path / "~").exists()
    make(model, tmp_path / "p").fit(pictures).transform(pictures)
    assert list((tmp_path / "p").rglob("*.emb"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        make(model, str(tmp_path / "file")).fit(pictures)


# -- 7. folders: no link is followed twice ----------------------------------------
def test_a_symlink_loop_lists_each_file_once_with_its_class(tmp_path):
    """cat/loop -> .. neither loops nor labels the dogs as cats."""
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / label / f"{i}.png")
    os.symlink("..", tmp_path / "cat" / "loop")
    os.symlink("../dog", tmp_path / "cat" / "dogs")
    os.symlink(".", tmp_path / "dog" / "self")
    with pytest.warns(FolderLinkWarning, match="3 link"):
        X, y = load_image_folder(tmp_path)
    assert len(X) == len(set(X)) == 4
    assert [Path(p).parent.name for p in X] == list(y)


# -- 8. fitting is all or nothing --------------------------------------------------
def test_a_failed_refit_leaves_the_classifier_as_it_was(pictures):
    """A refit that fails midway: same classes_, same predictions."""
    X = np.concatenate([pictures, pictures[::-1]])
    clf = FineTunedClassifier(
        model=TinyCNN(),
        weights="DEFAULT",
        max_epochs=1,
        preprocessing=SMALL,
        verbose=False,
        random_state=0,
    ).fit(X, [0, 1] * 4)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="trainable_layers"):
        clf.set_params(trainable_layers=50).fit(X, ["a", "b", "c", "d"] * 2)
    assert clf.classes_.tolist() == [0, 1]
    assert_same_rows(clf.predict_proba(X), before)


def test_a_failed_first_fit_leaves_the_estimator_unfitted(pictures):
    """A first fit that fails: still not fitted, for both estimators."""
    clf = FineTunedClassifier(
        model=TinyCNN(), trainable_layers=50, preprocessing=SMALL, verbose=False
    )
    with pytest.raises(ValueError):
        clf.fit(pictures, [0, 1, 0, 1])
    with pytest.raises(NotFittedError):
        clf.predict(pictures)
    extractor = make(TinyCNN(), layer="nope")
    with pytest.raises(ValueError):
        extractor.fit(pictures)
    with pytest.raises(NotFittedError):
        extractor.transform(pictures)


def test_a_failed_refit_leaves_the_extractor_as_it_was(pictures):
    """An extractor refitted with a bad layer still transforms as before,
    unpickled ones included."""
    extractor = make(TinyCNN(), layer="block1").fit(pictures)
    restored = pickle.loads(pickle.dumps(extractor))
    before = extractor.transform(pictures)
    for est in (extractor, restored):
        with pytest.raises(ValueError, match="layer"):
            est.set_params(layer="block9").fit(pictures)
        assert_same_rows(est.transform(pictures), before)


# -- 9. checkpoint errors name the file ---------------------------------------------
@pytest.mark.parametrize("content", ["random", "text", "truncated", "empty"])
def test_a_bad_checkpoint_names_the_file(tmp_path, pictures, content):
    """Random bytes, text, a truncated checkpoint or an empty file: an error
    naming the file and what was expected."""
    path = tmp_path / "model.pth"
    good = io.BytesIO()
    torch.save(TinyCNN().state_dict(), good)
    data = {
        "random": os.urandom(4096),
        "text": b"this is not a checkpoint\n" * 10,
        "truncated": good.getvalue()[: len(good.getvalue()) // 2],
        "empty": b"",
    }[content]
    path.write_bytes(data)
    with pytest.raises(ValueError, match="model.pth") as info:
        make(TinyCNN(), weights=path).fit(pictures)
    assert "state_dict" in str(info.value)


# -- the property: a cached row is the uncached row --------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_POOL = np.random.default_rng(11).integers(0, 256, (6, 18, 22, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference():
    """The TinyCNN of the property test and its uncached rows of the pool."""
    torch.manual_seed(3)
    model = TinyCNN()
    rows = {
        layer: make(model, None, layer=layer).fit(_POOL).transform(_POOL)
        for layer in ("block1", None)
    }
    return model, rows


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    store=st.sampled_from(["off", "memory", "disk"]),
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(0, 5), min_size=1, max_size=6),
            st.sampled_from(["block1", None]),
            st.sampled_from(["array", "files"]),
            st.lists(
                st.sampled_from(["empty", "truncated", "flipped", "garbage", "none"]),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_every_cached_row_equals_the_uncached_row(
    reference, tmp_path_factory, store, steps
):
    """Random transforms of random subsets, cache off, in memory or on disk,
    entries damaged at random between calls: each row is the uncached row."""
    model, expected = reference
    folder = tmp_path_factory.mktemp("property")
    paths = []
    for i, image in enumerate(_POOL):
        Image.fromarray(image).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    cache = {
        "off": None,
        "memory": EmbeddingCache(),
        "disk": EmbeddingCache(max_bytes=0, directory=folder / "cache"),
    }[store]
    rng = np.random.default_rng(len(steps))
    for rows, layer, kind, damages in steps:
        extractor = make(model, cache, layer=layer, cache_layers=["block1", None])
        X = _POOL[rows] if kind == "array" else [paths[i] for i in rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "damaged ..." warnings
            out = extractor.fit(X).transform(X)
        assert_same_rows(out, expected[layer][rows])
        entries = sorted((folder / "cache").rglob("*.emb")) if store == "disk" else []
        for how in damages:
            if entries and how != "none":
                _damage(entries[rng.integers(len(entries))], how, entries[0])


def test_a_module_that_refers_to_its_parent_has_an_identity(pictures):
    """A plain attribute pointing back to the parent neither recurses forever
    nor shares the network of another parent."""
    torch.manual_seed(0)
    model = TinyCNN()
    object.__setattr__(model.block1, "owner", model)  # not a submodule
    rows = make(model, "memory").fit(pictures).transform(pictures)
    assert_same_rows(rows, fresh_rows(model, pictures))
