"""Every warning category sktransfer emits, and where it points.

Each test triggers one category through the public API (fit, transform,
predict, probe, load, pickle.loads, an sklearn Pipeline), patching the
library's internals only to stand in for hardware or a failure, and checks
that the warning has its category and points at the test's own line: the
call into sktransfer, not a frame of sktransfer, sklearn, torch, joblib,
Dask or skops (``sktransfer.exceptions.warn``).
"""

import inspect
import io
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

import sktransfer
from sktransfer import (
    CacheWarning,
    DeviceWarning,
    EmbeddingCache,
    FineTunedClassifier,
    FolderLinkWarning,
    FusionWarning,
    MissingTextsWarning,
    NumericsWarning,
    OutOfVocabularyWarning,
    PerformanceWarning,
    PrecisionFallbackWarning,
    PreprocessingWarning,
    PretrainedFeatureExtractor,
    PretrainedTextExtractor,
    PretrainedWordVectors,
    ProbeWarning,
    SktransferWarning,
    TruncationWarning,
    UnreadableImagesWarning,
    exceptions,
)
from tests.conftest import SMALL, TinyCNN

NOT_AN_IMAGE = b"not an image"


def make(model, **params):
    params.setdefault("preprocessing", SMALL)
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    return PretrainedFeatureExtractor(model=model, **params)


@pytest.fixture
def four():
    """Four uint8 RGB images, 32x32."""
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def next_line() -> int:
    """The number of the line after the caller's (the call checked)."""
    return sys._getframe(1).f_lineno + 1


def assert_points_here(record, category, line):
    """``record`` holds a warning of exactly ``category``, and every
    sktransfer warning in it points at ``line`` of this file."""
    ours = [w for w in record if issubclass(w.category, SktransferWarning)]
    assert any(w.category is category for w in ours), [w.category for w in record]
    for w in ours:
        assert (w.filename, w.lineno) == (__file__, line), (
            f"{w.category.__name__} points at {w.filename}:{w.lineno}, not at "
            f"{__file__}:{line}: {w.message}"
        )


def triggers(*categories):
    """Mark a test as triggering ``categories`` (see the last test)."""

    def mark(test):
        test.triggers = categories
        return test

    return mark


# -- UnreadableImagesWarning -------------------------------------------------------


@triggers(UnreadableImagesWarning)
def test_unreadable_images_warning_points_at_transform(tiny_cnn, four):
    """on_error="nan" and a file that is no image: the warning is at transform."""
    extractor = make(tiny_cnn, on_error="nan").fit(four)
    with pytest.warns(UnreadableImagesWarning, match="1 of 3 images") as record:
        line = next_line()
        rows = extractor.transform([png(four[0]), NOT_AN_IMAGE, png(four[1])])
    assert_points_here(record, UnreadableImagesWarning, line)
    assert np.isnan(rows[1]).all() and not np.isnan(rows[[0, 2]]).any()


@triggers(UnreadableImagesWarning)
def test_warnings_inside_a_pipeline_point_at_the_pipeline_call(tiny_cnn, four):
    """Pipeline.fit, Pipeline.transform and Pipeline.predict call the
    extractor from sklearn's frames: the warning is still at the user's line."""
    X = [png(four[0]), NOT_AN_IMAGE, png(four[1]), png(four[2]), png(four[3])]
    y = np.array([0, 0, 1, 1, 0])
    pipe = make_pipeline(
        make(tiny_cnn, on_error="nan"), SimpleImputer(), LogisticRegression()
    )
    with pytest.warns(UnreadableImagesWarning) as record:
        line = next_line()
        pipe.fit(X, y)
    assert_points_here(record, UnreadableImagesWarning, line)
    with pytest.warns(UnreadableImagesWarning) as record:
        line = next_line()
        features = pipe[:-1].transform(X)
    assert_points_here(record, UnreadableImagesWarning, line)
    assert features.shape[0] == len(X) and not np.isnan(features).any()
    with pytest.warns(UnreadableImagesWarning) as record:
        line = next_line()
        predicted = pipe.predict(X)
    assert_points_here(record, UnreadableImagesWarning, line)
    assert predicted.shape == (len(X),)


# -- NumericsWarning ---------------------------------------------------------------


@triggers(NumericsWarning)
def test_numerics_warning_points_at_transform_and_predict(tiny_cnn, four, bf16_cpu):
    """A bf16 fit run on other kernels (numerics_ of another CPU): the
    warning is at transform, also when a Pipeline predicts."""
    extractor = make(tiny_cnn, precision="bfloat16").fit(four)
    restored = pickle.loads(pickle.dumps(extractor))
    restored.numerics_ = "bfloat16-cpu-amx-torch2.14.1"  # fitted on a Xeon
    with pytest.warns(NumericsWarning, match="may shift") as record:
        line = next_line()
        restored.transform(four)
    assert_points_here(record, NumericsWarning, line)
    pipe = make_pipeline(make(TinyCNN(), precision="bfloat16"), LogisticRegression())
    pipe.fit(four, [0, 1, 0, 1])
    pipe[0].numerics_ = "bfloat16-cpu-amx-torch2.14.1"
    with pytest.warns(NumericsWarning, match="may shift") as record:
        line = next_line()
        pipe.predict(four)
    assert_points_here(record, NumericsWarning, line)


@triggers(NumericsWarning)
def test_non_finite_rows_warn_at_transform(four):
    """A network whose rows overflow to inf (as float16 does above 65504):
    a warning at transform naming the rows, not a silent inf row; float16's
    warning names the fix."""
    from sktransfer._engine import check_finite

    net = TinyCNN()
    with torch.no_grad():
        net.block2[0].weight.mul_(1e38)  # (float32 overflows too)
    extractor = make(net).fit(four)
    with pytest.warns(NumericsWarning, match="4 of 4 rows") as record:
        line = next_line()
        rows = extractor.transform(four)
    assert_points_here(record, NumericsWarning, line)
    assert not np.isfinite(rows).all()
    finite = np.zeros((3, 2), dtype=np.float32)
    finite[1, 0] = np.inf
    with pytest.warns(NumericsWarning, match=r"rows 7\).*precision='bfloat16'"):
        check_finite(finite, np.ones(3, bool), [5, 7, 9], torch.float16)
    finite[1, 0] = np.nan  # an unreadable image's row: NaN by design
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_finite(finite, np.array([True, False, True]), None, torch.float16)


@triggers(NumericsWarning)
def test_non_finite_text_rows_warn_at_transform(tiny_text_model):
    """A text encoder whose hidden states overflow to inf for one text (as
    float16 does above 65504): a warning at transform naming its row, as
    for images, not a silent inf row."""
    extractor = PretrainedTextExtractor(
        model=str(tiny_text_model), verbose=False, cache=None
    ).fit(["a"])
    texts = ["a cat", "the cat sat on the mat", "a dog", "a cat"]

    def overflow(module, args, output):  # the longest text runs first
        output[0] = float("inf")
        return output

    embeddings = extractor._network().encoder.embeddings
    with (
        embeddings.register_forward_hook(overflow),
        pytest.warns(NumericsWarning, match=r"1 of 4 rows.*\(rows 1\)") as record,
    ):
        line = next_line()
        rows = extractor.transform(texts)
    assert_points_here(record, NumericsWarning, line)
    assert not np.isfinite(rows[1]).all() and np.isfinite(rows[[0, 2, 3]]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericsWarning)
        assert np.isfinite(extractor.transform(texts)).all()


@triggers(NumericsWarning)
def test_numerics_warning_of_a_dask_array_points_at_compute(tiny_cnn, four, bf16_cpu):
    """A Dask array computed in this thread: the warning, raised from Dask's
    frames, is at the line that computes."""
    da = pytest.importorskip("dask.array")
    extractor = make(tiny_cnn, precision="bfloat16").fit(four)
    extractor.numerics_ = "bfloat16-cpu-amx-torch2.14.1"
    lazy = extractor.transform(da.from_array(four, chunks=2))
    with pytest.warns(NumericsWarning, match="may shift") as record:
        line = next_line()
        rows = lazy.compute(scheduler="synchronous")
    assert_points_here(record, NumericsWarning, line)
    assert rows.shape == (len(four), extractor.n_features_out_)


# -- PrecisionFallbackWarning and PerformanceWarning (precision="int8") -------------


@triggers(PrecisionFallbackWarning)
def test_precision_fallback_warning_points_at_fit(tiny_cnn, four, monkeypatch):
    """int8 where the CPU cannot run it: the warning is at fit."""
    from sktransfer._runtime import int8 as _int8

    monkeypatch.setattr(_int8, "unavailable", lambda: "no int8 instructions here")
    with pytest.warns(PrecisionFallbackWarning, match="no int8 instructions") as record:
        line = next_line()
        fitted = make(tiny_cnn, precision="int8").fit(four)
    assert_points_here(record, PrecisionFallbackWarning, line)
    assert fitted.precision_ in ("bfloat16", "float32")


@triggers(PrecisionFallbackWarning)
def test_precision_fallback_of_a_failed_quantization_points_at_fit(
    tiny_cnn, four, monkeypatch
):
    """A network that cannot be quantized: the warning is at fit."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sktransfer._runtime import int8 as _int8
    from sktransfer.exceptions import QuantizationError

    def fails(*args, **kwargs):
        raise QuantizationError("could not quantize this one")

    monkeypatch.setattr(_int8, "quantize", fails)
    with pytest.warns(PrecisionFallbackWarning) as record:
        line = next_line()
        fitted = make(tiny_cnn, precision="int8").fit(four)
    assert_points_here(record, PrecisionFallbackWarning, line)
    assert fitted.quantization_ is None


@triggers(PerformanceWarning)
@pytest.mark.parametrize("slow", ["slower than float", "float operations"])
def test_performance_warning_points_at_fit(tiny_cnn, four, monkeypatch, slow):
    """int8 measured slower than its float fallback, or convolutions left in
    float32 by ONNX Runtime: the warning is at fit."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sktransfer._runtime import int8 as _int8

    if _int8.int8_kernels() is None:
        pytest.skip("this CPU has no int8 dot-product instructions")
    if slow == "slower than float":
        rates = {"int8": 50.0, "float": 100.0, "images": 4}
        monkeypatch.setattr(_int8, "rates", lambda *args: rates)
    else:
        monkeypatch.setattr(_int8, "float_compute_ops", lambda model: ["Conv_0"])
    with pytest.warns(PerformanceWarning) as record:
        line = next_line()
        fitted = make(tiny_cnn, precision="int8").fit(four)
    assert_points_here(record, PerformanceWarning, line)
    assert fitted.precision_ == "int8"


# -- CacheWarning ------------------------------------------------------------------


@triggers(CacheWarning)
@pytest.mark.parametrize("fault", ["unwritable", "damaged"])
def test_cache_warning_points_at_transform(tmp_path, four, monkeypatch, fault):
    """A cache folder that refuses writes, or a damaged entry: the warning is
    at transform."""
    import sktransfer._cache as cache_module

    folder = tmp_path / "cache"
    torch.manual_seed(0)
    model = TinyCNN()
    if fault == "damaged":
        make(model, cache=EmbeddingCache(directory=folder)).fit(four).transform(four)
        for entry in folder.rglob("*.emb"):
            entry.write_bytes(b"garbage")
    else:

        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(cache_module.tempfile, "mkstemp", refused)
    extractor = make(model, cache=EmbeddingCache(directory=folder)).fit(four[:1])
    with pytest.warns(CacheWarning) as record:
        line = next_line()
        extractor.transform(four)
    assert_points_here(record, CacheWarning, line)


# -- DeviceWarning -----------------------------------------------------------------


def _fitted_on_cuda(estimator):
    """``estimator`` as if fitted on a CUDA machine."""
    estimator.device_ = torch.device("cuda:0")
    return estimator


@triggers(DeviceWarning)
def test_device_warning_points_at_pickle_loads(tiny_cnn, four, monkeypatch):
    """A pickle of an extractor and of a classifier fitted on CUDA, loaded
    where there is none: the warning is at pickle.loads."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extractor = make(tiny_cnn).fit(four)
    data = pickle.dumps(_fitted_on_cuda(make(tiny_cnn).fit(four)))
    with pytest.warns(DeviceWarning, match="fitted on CUDA") as record:
        line = next_line()
        restored = pickle.loads(data)
    assert_points_here(record, DeviceWarning, line)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.transform(four), extractor.transform(four))
    clf = FineTunedClassifier(
        model=TinyCNN(),
        preprocessing=SMALL,
        precision="float32",
        max_epochs=1,
        random_state=0,
        verbose=False,
    )
    data = pickle.dumps(_fitted_on_cuda(clf.fit(four, [0, 1, 0, 1])))
    with pytest.warns(DeviceWarning, match="fitted on CUDA") as record:
        line = next_line()
        restored = pickle.loads(data)
    assert_points_here(record, DeviceWarning, line)
    assert restored.predict(four).shape == (4,)


@triggers(DeviceWarning)
def test_device_warning_points_at_load(four, tmp_path, monkeypatch):
    """A shared model saved on CUDA, loaded where there is none: the warning,
    raised from skops' frames, is at sktransfer.load."""
    pytest.importorskip("skops")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extractor = make(
        "mobilenet_v3_small", weights=None, random_state=0, preprocessing=SMALL
    ).fit(four)
    path = sktransfer.save(_fitted_on_cuda(extractor), tmp_path / "model")
    with pytest.warns(DeviceWarning, match="fitted on CUDA") as record:
        line = next_line()
        loaded = sktransfer.load(path)
    assert_points_here(record, DeviceWarning, line)
    assert loaded.device_.type == "cpu"


# -- FusionWarning -----------------------------------------------------------------


def _broken_operator(monkeypatch, behaviour):
    """oneDNN's fused convolution replaced by one that gives wrong values
    (the self-test fails) or raises (the call fails)."""
    from sktransfer._runtime import fusion as _fusion

    class Broken:
        def __call__(self, x, weight, bias, *args):
            if behaviour == "raise":
                raise RuntimeError("could not create a memory")
            return torch.zeros(len(x), weight.shape[0], 1, 1, dtype=x.dtype)

        def binary(self, x, other, *args):
            if behaviour == "raise":
                raise RuntimeError("could not create a memory")
            return torch.zeros_like(other)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Broken())
    if behaviour == "raise":  # the self-test passes, the real call fails
        monkeypatch.setattr(_fusion, "_self_test", lambda *form: True)


@triggers(FusionWarning)
@pytest.mark.parametrize("behaviour", ["wrong", "raise"])
def test_fusion_warning_points_at_the_network_call(
    fresh_checks, four, monkeypatch, behaviour
):
    """A fused operator that fails its self-test or its call: the warning,
    raised from inside the network's torch.fx frames, is at the call."""
    from sktransfer._runtime import fusion as _fusion

    if not _fusion.operator_works():
        pytest.skip("oneDNN's fused convolution is not available")
    _fusion._self_test.cache_clear()
    _broken_operator(monkeypatch, behaviour)
    torch.manual_seed(0)
    extractor = make(TinyCNN())
    with pytest.warns(FusionWarning, match="run unfused") as record:
        line = next_line()
        rows = extractor.fit(four).transform(four)  # (fit may reuse a network)
    assert_points_here(record, FusionWarning, line)
    assert np.isfinite(rows).all()


# -- PreprocessingWarning ----------------------------------------------------------


@triggers(PreprocessingWarning)
def test_preprocessing_warning_points_at_fit(four, tmp_path, monkeypatch):
    """A hub model whose published preprocessing is of a non-square input:
    the warning is at fit."""
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    constants = pytest.importorskip("huggingface_hub.constants")
    from timm.models._hub import save_for_hf

    from sktransfer._sources import timm as _timm

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(_timm, "UNAVAILABLE", {})
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", pretrained=False, pretrained_cfg_overlay={"input_size": (3, 32, 24)}
    )
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--non-square"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    save_for_hf(model, str(repo / "snapshots" / revision))
    extractor = make("hf-hub:someone/non-square")
    with pytest.warns(PreprocessingWarning, match="non-square input") as record:
        line = next_line()
        extractor.fit(four)
    assert_points_here(record, PreprocessingWarning, line)


# -- ProbeWarning ------------------------------------------------------------------


@triggers(ProbeWarning)
def test_probe_warning_points_at_probe(four, offline):
    """A model whose weights cannot be had (offline), and an image that
    cannot be read: both warnings are at probe."""
    X = [png(image) for image in four] + [NOT_AN_IMAGE]
    y = np.array([0, 0, 1, 1, 0])
    models = [("resnet18", "none"), "mobilenet_v3_small"]  # the second offline
    params = dict(cv=2, preprocessing=SMALL, cache=None, verbose=False)
    with pytest.warns(ProbeWarning) as record:
        line = next_line()
        result = sktransfer.probe(X, y, models=models, **params)
    assert_points_here(record, ProbeWarning, line)
    messages = " ".join(str(w.message) for w in record)
    assert "mobilenet_v3_small: skipped" in messages
    assert "1 of 5 images could not be read" in messages
    assert result.unreadable == [4]


# -- FolderLinkWarning -------------------------------------------------------------


@triggers(FolderLinkWarning)
def test_folder_link_warning_points_at_load_image_folder(tmp_path):
    """A class folder that is a link to another: the warning is at the call."""
    import os

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "0.png")
    os.symlink("cat", tmp_path / "kitty")
    with pytest.warns(FolderLinkWarning, match="kitty") as record:
        line = next_line()
        X, y = sktransfer.load_image_folder(tmp_path)
    assert_points_here(record, FolderLinkWarning, line)
    assert y.tolist() == ["cat"]


# -- OutOfVocabularyWarning -------------------------------------------------------


@triggers(OutOfVocabularyWarning)
def test_out_of_vocabulary_warning_points_at_transform(tmp_path, monkeypatch):
    """A text with no known word: the warning is at transform, also when a
    Pipeline predicts."""
    monkeypatch.setenv("SKTRANSFER_WORD_VECTORS", str(tmp_path / "cache"))
    path = tmp_path / "vectors.txt"
    path.write_text("good 1 0\nbad -1 0\nfilm 0 1\n")
    vectors = PretrainedWordVectors(vectors=path).fit(["good film"])
    with pytest.warns(OutOfVocabularyWarning, match="1 of 2 texts") as record:
        line = next_line()
        rows = vectors.transform(["good film", "nothing known"])
    assert_points_here(record, OutOfVocabularyWarning, line)
    assert not rows[1].any()
    pipe = make_pipeline(PretrainedWordVectors(vectors=path), LogisticRegression())
    pipe.fit(["good film", "bad film"], [1, 0])
    with pytest.warns(OutOfVocabularyWarning) as record:
        line = next_line()
        pipe.predict(["good", "zzz"])
    assert_points_here(record, OutOfVocabularyWarning, line)


# -- text: TruncationWarning, MissingTextsWarning ----------------------------------


@triggers(TruncationWarning)
def test_truncation_warning_points_at_transform(tiny_text_model):
    """A text longer than max_length: one warning, at the user's line."""
    extractor = PretrainedTextExtractor(
        model=str(tiny_text_model), max_length=6, verbose=False, cache=None
    ).fit(["a"])
    with pytest.warns(TruncationWarning, match="1 of 2 texts") as record:
        line = next_line()
        extractor.transform(["the cat sat on the mat again", "a cat"])
    assert_points_here(record, TruncationWarning, line)


@triggers(MissingTextsWarning)
def test_missing_texts_warning_points_at_the_pipeline_call(tiny_text_model):
    """on_error="nan" and a missing text, inside a Pipeline: at its line."""
    X = ["a good movie", None, "an awful film", "a great plot"]
    pipe = make_pipeline(
        PretrainedTextExtractor(
            model=str(tiny_text_model), on_error="nan", verbose=False, cache=None
        ),
        SimpleImputer(),
    )
    with pytest.warns(MissingTextsWarning, match="1 of 4 texts") as record:
        line = next_line()
        pipe.fit_transform(X)
    assert_points_here(record, MissingTextsWarning, line)


# -- every category --------------------------------------------------------------


def test_every_warning_category_has_a_test():
    """Each warning category of sktransfer.exceptions is triggered by a test
    of this file that checks where it points (a new category needs one)."""
    categories = {
        obj
        for obj in vars(exceptions).values()
        if inspect.isclass(obj)
        and issubclass(obj, SktransferWarning)
        and obj is not SktransferWarning
    }
    assert len(categories) >= 9
    covered = {}
    for name, test in globals().items():
        if name.startswith("test_") and callable(test):
            for category in getattr(test, "triggers", ()):
                assert "assert_points_here(record, " in inspect.getsource(test), name
                covered.setdefault(category, []).append(name)
    missing = sorted(c.__name__ for c in categories - set(covered))
    assert not missing, f"no test triggers {missing}"
    assert set(covered) <= categories
