"""sktransfer.save / sktransfer.load: sharing without pickle."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._share import TamperedModelError, UntrustedTypesError

pytest.importorskip("skops")
pytest.importorskip("safetensors")

SMALL = {"resize_size": 32, "crop_size": 32}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    return X, np.repeat(["cat", "dog"], 6)


def _extractor(**extra):
    # cache=None: every row computed in one batch on both sides, so that
    # outputs can be compared exactly (a batch of 1 rounds differently).
    params = {"model": "resnet18", "weights": None, "random_state": 0, "cache": None}
    params.update(extra)
    return PretrainedFeatureExtractor(preprocessing=SMALL, verbose=False, **params)


def _in_a_fresh_process(folder, names, trusted, env=None):
    """Load each saved model in a new Python process and return what it
    computes on the saved X (transform, or predict_proba)."""
    script = f"""
import numpy as np, sktransfer
X = np.load({str(folder / "X.npy")!r})
for name in {names!r}:
    model = sktransfer.load({str(folder)!r} + "/" + name, trusted={trusted!r})
    out = getattr(model, "predict_proba", getattr(model, "transform", None))(X)
    np.save({str(folder)!r} + "/" + name + ".out.npy", out)
"""
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={**os.environ, **(env or {})},
        capture_output=True,
    )
    return {name: np.load(folder / f"{name}.out.npy") for name in names}


def test_round_trips_in_a_fresh_process(
    data, tmp_path, shared_weights, hub_with_real_weights
):
    """Published weights, a local checkpoint (deleted before loading: its
    tensors are in the file), a fine-tuned classifier, a pipeline and a grid
    search over cut points: identical outputs after loading elsewhere."""
    X, y = data
    folder = tmp_path / "shared"
    folder.mkdir()
    np.save(folder / "X.npy", X)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    models = {
        "published": _extractor(model="mobilenet_v2", weights="IMAGENET1K_V1").fit(X),
        "published_pipeline": make_pipeline(
            _extractor(
                model="mobilenet_v2", weights="IMAGENET1K_V1", layer="features.13"
            ),
            StandardScaler(),
            LogisticRegression(),
        ).fit(X, y),
        "checkpoint": _extractor(weights=checkpoint, layer="layer3").fit(X),
        "finetuned": FineTunedClassifier(
            model="resnet18",
            weights=None,
            trainable_layers=1,
            max_epochs=1,
            preprocessing=SMALL,
            random_state=0,
            verbose=False,
        ).fit(X, y),  # fmt: skip
        "pipeline": make_pipeline(
            _extractor(), StandardScaler(), LogisticRegression()
        ).fit(X, y),
        "search": GridSearchCV(
            make_pipeline(
                _extractor(cache_layers=["layer2", None]), LogisticRegression()
            ),
            {"pretrainedfeatureextractor__layer": ["layer2", None]},
            cv=2,
        ).fit(X, y),
    }
    # A fine-tuned classifier reused as a frozen backbone.
    models["reused"] = _extractor(
        model=models["finetuned"], weights="DEFAULT", layer="layer3"
    ).fit(X)
    expected = {}
    for name, model in models.items():
        sktransfer.save(model, folder / name)
        expected[name] = (
            model.predict_proba(X)
            if hasattr(model, "predict_proba")
            else model.transform(X)
        )
    checkpoint.unlink()
    # A search holds scikit-learn types that skops does not trust by default
    # (its scorer and splitter; which ones depends on the sklearn version).
    trusted = sktransfer.untrusted_types(folder / "search")
    assert trusted and all(name.startswith("sklearn.") for name in trusted)
    with pytest.raises(UntrustedTypesError, match="needs types that are not trusted"):
        sktransfer.load(folder / "search")
    got = _in_a_fresh_process(
        folder, list(models), trusted, {"TORCH_HOME": str(hub_with_real_weights)}
    )
    for name in models:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # Published weights are a name and a digest, not tensors: a few KB (the
    # pipeline adds its scaler's and classifier's arrays for 96 features).
    assert (folder / "published" / "model.skops").stat().st_size < 8_000
    assert (folder / "published_pipeline" / "model.skops").stat().st_size < 12_000
    assert (folder / "pipeline" / "model.skops").stat().st_size > 40e6
    # A fine-tuned ResNet-18 is about the size of its weights.
    weights = sum(t.numel() * t.element_size() for t in models["finetuned"]
                  ._network().state_dict().values())  # fmt: skip
    size = (folder / "finetuned" / "model.skops").stat().st_size
    assert 0.85 * weights < size < 1.02 * weights  # (deflated: ~7% smaller)


def test_the_folder_is_a_hub_repository_with_a_card(data, tmp_path):
    X, y = data
    pipe = make_pipeline(_extractor(layer="layer2"), LogisticRegression()).fit(X, y)
    sktransfer.save(pipe, tmp_path / "repo", metrics={"cv_accuracy": 0.9})
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        "README.md",
        "config.json",
        "model.skops",
    ]
    card = (tmp_path / "repo" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sktransfer\n")
    for needed in ("| model | `resnet18` |", "| layers | `['layer2']` |",
                   "| pooling | `avg` |", "| cv_accuracy | 0.9 |",
                   "| scikit-learn |", "LogisticRegression()",
                   'sktransfer.load("repo")'):  # fmt: skip
        assert needed in card, needed
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert config["model_file"] == "model.skops"
    assert config["components"][0]["layers"] == ["layer2"]
    # A single .skops file gets its card beside it.
    sktransfer.save(pipe, tmp_path / "one.skops", metrics="a table")
    assert "a table" in (tmp_path / "one.md").read_text()


def test_published_weights_are_checked_at_load(
    data, tmp_path, hub_with_real_weights, offline
):
    X, _ = data
    extractor = _extractor(model="mobilenet_v2", weights="IMAGENET1K_V1").fit(X)
    sktransfer.save(extractor, tmp_path / "m")
    cached = extractor._published_weights_file()
    original = cached.read_bytes()
    torch.save(torchvision.models.mobilenet_v2().state_dict(), cached)  # others
    with pytest.raises(ValueError, match="differs from the one this model was saved"):
        sktransfer.load(tmp_path / "m")
    cached.unlink()  # and offline: said so, with the cache path
    with pytest.raises(FileNotFoundError, match="no longer in the cache"):
        sktransfer.save(extractor, tmp_path / "again")
    sktransfer.clear_caches()
    with pytest.raises(sktransfer.WeightsUnavailableError, match=str(cached)):
        sktransfer.load(tmp_path / "m")
    cached.write_bytes(original)
    again = sktransfer.load(tmp_path / "m")
    np.testing.assert_array_equal(again.transform(X), extractor.transform(X))


def _rewrite(path, change):
    """Rewrite the zip at ``path`` with ``change(name, data) -> data``."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, content in entries:
            z.writestr(info, change(info.filename, content))


def test_a_changed_tensor_blob_or_config_is_refused(data, tmp_path):
    X, _ = data
    sktransfer.save(_extractor(layer="layer2").fit(X), tmp_path / "a.skops")
    sktransfer.save(_extractor(layer="layer2").fit(X), tmp_path / "b.skops")

    def flip_a_byte(name, content):
        if name.endswith(".bin"):  # the safetensors blob
            assert len(content) > 1e6
            content = bytearray(content)
            content[-100] ^= 1
        return bytes(content)

    def other_layer(name, content):
        if name == "schema.json":
            assert b"layer2" in content
            content = content.replace(b"layer2", b"layer3")
        return content

    _rewrite(tmp_path / "a.skops", flip_a_byte)
    _rewrite(tmp_path / "b.skops", other_layer)
    for name in ("a.skops", "b.skops"):
        with pytest.raises(TamperedModelError, match="changed after it was saved"):
            sktransfer.load(tmp_path / name)


class Payload:
    """What an attacker's file would build: its __setstate__ runs code."""

    def __setstate__(self, state):
        open(state["marker"], "w").close()

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import skops.io

    marker = tmp_path / "ran"
    payload = Payload()
    payload.__dict__["marker"] = str(marker)
    skops.io.dump({"model": payload}, tmp_path / "evil.skops")
    with pytest.raises(UntrustedTypesError, match=r"test_share\.Payload"):
        sktransfer.load(tmp_path / "evil.skops")
    # A pickle (of open(marker, "w")) is never opened at all.
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="not a file written by sktransfer.save"):
        sktransfer.load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_what_cannot_be_shared_says_how_to_share_it(data, tmp_path):
    X, _ = data
    module = torchvision.models.resnet18()
    own = _extractor(model=module, weights="DEFAULT").fit(X)
    with pytest.raises(TypeError, match="checkpoint of a known architecture"):
        sktransfer.save(own, tmp_path / "own")
    cached = _extractor(cache=sktransfer.EmbeddingCache()).fit(X)
    with pytest.raises(TypeError, match="Set cache='memory'"):
        sktransfer.save(cached, tmp_path / "cache")
    assert not (tmp_path / "own").exists()  # nothing written


def test_pickle_keeps_working_and_needs_neither_extra(data, monkeypatch):
    X, _ = data
    extractor = _extractor().fit(X)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    again = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_array_equal(again.transform(X), extractor.transform(X))


def test_without_the_extra_the_error_says_what_to_install(data, tmp_path, monkeypatch):
    X, _ = data
    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[share\]'"):
        sktransfer.save(_extractor().fit(X), tmp_path / "m")


def test_the_core_imports_without_the_extras():
    blocked = ["skops", "skops.io", "safetensors", "pyarrow", "matplotlib"]
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        "import sktransfer; print(sktransfer.save.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "save"


# -- untrusted files: bombs (issue 28, class 3) ------------------------------------
BOMB = 300 << 20  # what each bomb inflates to: more than load's 256 MiB floor


def _bomb(path, declared=None):
    """A 300 KB zip whose schema.json inflates to 300 MiB of spaces; with
    ``declared``, its headers claim that size (and its CRC) instead."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("schema.json", "w") as member,
    ):
        for _ in range(BOMB >> 20):
            member.write(b" " * (1 << 20))
    if declared is not None:
        data = bytearray(path.read_bytes())
        crc = zipfile.crc32(b" " * declared).to_bytes(4, "little")
        size = declared.to_bytes(4, "little")
        local, central = data.find(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
        data[local + 14 : local + 18], data[local + 22 : local + 26] = crc, size
        data[central + 16 : central + 20], data[central + 24 : central + 28] = crc, size
        path.write_bytes(bytes(data))
    assert path.stat().st_size < 1e6
    return path


def _peak_of(call) -> tuple[int, Exception | None]:
    """The peak of the memory ``call()`` allocates (tracemalloc), and what
    it raised."""
    import tracemalloc

    import skops.io  # noqa: F401  (its first import is not the bomb's)

    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as exc:  # (returned to be checked)
        raised = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize("how", ["declared", "lying"])
@pytest.mark.parametrize("call", ["load", "untrusted_types"])
def test_a_compression_bomb_is_refused_before_it_is_inflated(tmp_path, how, call):
    """A member that declares 300 MiB is refused from its declared size; one
    that declares 100 bytes and inflates to 300 MiB is refused as soon as it
    gives more. Either way load (and untrusted_types) allocate a few MB."""
    path = _bomb(tmp_path / "bomb.skops", None if how == "declared" else 100)
    peak, raised = _peak_of(lambda: getattr(sktransfer, call)(path))
    assert isinstance(raised, ValueError), raised
    if how == "declared":
        assert "'schema.json' declares 314572800 bytes" in str(raised)
        assert "compression bomb" in str(raised) and "max_bytes" in str(raised)
    else:
        assert "'schema.json' inflates to more than the 100 bytes" in str(raised)
    assert peak < 16e6, f"{peak / 1e6:.0f} MB allocated"


def test_max_bytes_bounds_what_load_inflates(data, tmp_path):
    X, _ = data
    path = sktransfer.save(_extractor(layer="layer2").fit(X), tmp_path / "m.skops")
    assert sktransfer.load(path, max_bytes=100 << 20).n_features_out_ == 128
    with pytest.raises(ValueError, match="more than max_bytes=1000000 bytes"):
        sktransfer.load(path, max_bytes=1_000_000)


# -- untrusted files: cache identity and paths (issue 28, classes 1 and 2) ---------
# A forger edits the state and fixes up the author's checksum: setting the
# attribute before sktransfer.save writes exactly that file.


def test_a_forged_cache_key_poisons_no_cache(data, tmp_path):
    """A file (or a pickle) whose cache_key_ claims the user's own model's
    key stores its rows under its own recomputed key: the user's model reads
    its own rows from the memory cache and from a directory cache."""
    from tests.conftest import assert_same_rows

    X, _ = data
    sktransfer.clear_caches()
    own = _extractor(random_state=0).fit(X)
    expected = own.transform(X)  # (cache=None: computed)
    forged = _extractor(random_state=1).fit(X)
    theirs = forged.transform(X)
    forged.cache_key_ = own.cache_key_
    sktransfer.save(forged, tmp_path / "forged")
    loaded = sktransfer.load(tmp_path / "forged")
    unpickled = pickle.loads(pickle.dumps(forged))
    for cache in ("memory", str(tmp_path / "emb-cache")):
        for model in (loaded, unpickled):
            assert_same_rows(model.set_params(cache=cache).transform(X), theirs)
        assert_same_rows(own.set_params(cache=cache).transform(X), expected)
        assert_same_rows(
            _extractor(random_state=0, cache=cache).fit_transform(X), expected
        )
    assert loaded.cache_key_ != own.cache_key_
    sktransfer.clear_caches()  # the directory cache alone
    assert_same_rows(
        _extractor(random_state=0, cache=str(tmp_path / "emb-cache")).fit_transform(X),
        expected,
    )


def test_a_state_that_contradicts_its_network_is_refused(data, tmp_path, monkeypatch):
    """Widths that split the rows differently, or a file whose network
    tensors were dropped (its checkpoint path would then be read)."""
    X, _ = data
    swapped = _extractor(layer=["layer2", "layer3"]).fit(X)
    assert swapped.computed_widths_ == [128, 256]
    swapped.computed_widths_ = swapped.n_features_per_layer_ = [256, 128]
    sktransfer.save(swapped, tmp_path / "swapped")
    with pytest.raises(TamperedModelError, match=r"widths \[128, 256\]"):
        sktransfer.load(tmp_path / "swapped")
    checkpoint = tmp_path / "author" / "resnet18.pth"
    checkpoint.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    dropped = _extractor(weights=checkpoint).fit(X)
    with monkeypatch.context() as patch:
        patch.setattr(PretrainedFeatureExtractor, "_tensors_to_pickle", lambda *_: None)
        sktransfer.save(dropped, tmp_path / "dropped")
    with pytest.raises(TamperedModelError, match="holds no network tensors"):
        sktransfer.load(tmp_path / "dropped")


def test_a_loaded_model_follows_no_path_from_the_file(data, tmp_path, monkeypatch):
    """Saved with a cache folder and a checkpoint (both then gone) and more
    threads than this machine has: loaded under another HOME, it writes in
    no folder of the author's, reads no checkpoint, gives the same rows."""
    X, _ = data
    author = tmp_path / "home" / "author"
    checkpoint = author / "resnet18.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    model = _extractor(
        weights=checkpoint, cache=str(author / "emb-cache"), num_workers=10_000
    ).fit(X)
    expected = model.set_params(cache=None).transform(X)
    model.set_params(cache=str(author / "emb-cache"))
    sktransfer.save(model, tmp_path / "shared")
    import shutil

    shutil.rmtree(author)
    monkeypatch.setenv("HOME", str(tmp_path / "recipient"))
    loaded = sktransfer.load(tmp_path / "shared")
    assert loaded.cache == "memory" and loaded.num_workers is None
    np.testing.assert_array_equal(loaded.transform(X), expected)
    assert not author.exists()
    # Only what the recipient sets is written.
    loaded.set_params(cache=str(tmp_path / "mine")).transform(X)
    assert (tmp_path / "mine").is_dir() and not author.exists()


def test_loaded_word_vectors_check_the_file_before_converting_it(tmp_path):
    vectors = tmp_path / "author" / "vectors.txt"
    vectors.parent.mkdir()
    vectors.write_text("good 1 0\nbad -1 0\nfilm 0 1\n")
    model = sktransfer.PretrainedWordVectors(vectors=vectors).fit(["good film"])
    sktransfer.save(model, tmp_path / "wv")
    sktransfer.clear_caches()
    for converted in (vectors.parent / ".sktransfer-word-vectors",):
        shutil_rmtree = __import__("shutil").rmtree
        shutil_rmtree(converted, ignore_errors=True)
    vectors.write_text("good 9 9\nbad 9 9\nfilm 9 9\n")  # another file there
    loaded = sktransfer.load(tmp_path / "wv")
    with pytest.raises(ValueError, match="are not those this estimator was fitted"):
        loaded.transform(["good film"])
    assert not (vectors.parent / ".sktransfer-word-vectors").exists()
