"""precision="int8": static quantization calibrated in fit (issue 18).

Small networks on small images (a tiny CNN, ResNet-18 with random weights
at 64x64), and the real ImageNet MobileNetV2 where it is at hand.
"""

import copy
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import sktransfer
from sktransfer import EmbeddingCache, PretrainedFeatureExtractor
from sktransfer._runtime import int8 as _int8
from tests.conftest import assert_same_rows, transform_in_fresh_process

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = {"resize_size": 64, "crop_size": 64}
needs_int8_cpu = pytest.mark.skipif(
    _int8.int8_kernels() is None, reason="this CPU has no int8 dot-product instructions"
)


def relative_differences(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def photos():
    """Smooth random images (neighbouring pixels alike, as in photos)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (24, 8, 8, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(small).permute(0, 3, 1, 2), size=64, mode="bilinear"
    )
    return big.permute(0, 2, 3, 1).round().clamp(0, 255).numpy().astype(np.uint8)


def resnet18(**params):
    settings = dict(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing=SIZE,
        cache=None,
        verbose=False,
    )
    return PretrainedFeatureExtractor(**{**settings, **params})


@needs_int8_cpu
def test_int8_rows_are_close_to_float32(photos):
    layers = [None, "layer2"]
    exact = resnet18(layer=layers).fit(photos).transform(photos)
    int8 = resnet18(layer=layers, precision="int8").fit(photos)
    assert int8.precision_ == "int8"
    assert int8.numerics_.startswith("int8-cpu-")
    assert int8.quantization_["calibration_images"] == len(photos)
    assert int8.quantization_["float_ops"] == []  # every convolution is int8
    rows = int8.transform(photos)
    assert rows.shape == exact.shape and rows.dtype == np.float32
    differences = relative_differences(rows, exact)
    assert np.median(differences) < 0.05, differences
    assert differences.max() > 0  # it is not the float network


@needs_int8_cpu
def test_int8_is_close_to_float32_with_real_weights(shared_weights, photos):
    """The real ImageNet MobileNetV2 (whose depthwise convolutions quantize
    worst: rows move by about 15% here, see docs/speed.md): each image's
    int8 row is nearer to its own float32 row than to any other image's."""
    params = dict(model="mobilenet_v2", weights=shared_weights, preprocessing=SIZE)
    exact = resnet18(**params).fit(photos).transform(photos)
    rows = resnet18(**params, precision="int8").fit(photos).transform(photos)
    assert np.median(relative_differences(rows, exact)) < 0.25
    distances = np.linalg.norm(rows[:, None] - exact[None], axis=2)
    np.testing.assert_array_equal(distances.argmin(axis=1), np.arange(len(rows)))


@needs_int8_cpu
def test_images_of_other_sizes_run_through_the_same_model(photos):
    """Without a crop, the network takes any size: so does its int8 model
    (exported with a dynamic height and width)."""
    free = {"resize_size": None, "crop_size": None}
    int8 = resnet18(preprocessing=free, precision="int8").fit(photos[:8])
    exact = resnet18(preprocessing=free).fit(photos[:8])
    other = photos[:3, :48, :40]
    differences = relative_differences(int8.transform(other), exact.transform(other))
    assert np.median(differences) < 0.1


@needs_int8_cpu
def test_onnx_runtime_calibrates_what_torch_did_not_range(photos, monkeypatch):
    """The ranges come from torch; a value without one (an image size the
    exported program refuses, a value torch.onnx made up) sends the whole
    calibration to ONNX Runtime's own: slower, the same kind of model."""
    fast = resnet18(precision="int8").fit(photos)
    calls = []

    def partial(program, inputs, dtype):
        calls.append(len(inputs))
        ranges = ranged(program, inputs, dtype)
        return dict(list(ranges.items())[: len(ranges) // 2])

    ranged = _int8._ranges
    monkeypatch.setattr(_int8, "_ranges", partial)
    _int8.clear()
    slow = resnet18(precision="int8").fit(photos)
    assert calls and slow.quantization_["digest"] != fast.quantization_["digest"]
    exact = resnet18().fit(photos).transform(photos)
    for fitted in (fast, slow):
        assert np.median(relative_differences(fitted.transform(photos), exact)) < 0.05


@needs_int8_cpu
def test_calibration_is_deterministic_and_part_of_the_identity(photos):
    first = resnet18(precision="int8").fit(photos)
    again = resnet18(precision="int8").fit(photos.copy())
    assert again.quantization_["digest"] == first.quantization_["digest"]
    assert again.cache_key_ == first.cache_key_
    np.testing.assert_array_equal(again.transform(photos), first.transform(photos))

    other = resnet18(precision="int8").fit(photos[::-1][:12])
    assert other.quantization_["digest"] != first.quantization_["digest"]
    assert other.cache_key_ != first.cache_key_
    exact = resnet18().fit(photos)
    assert len({first.cache_key_, other.cache_key_, exact.cache_key_}) == 3


@needs_int8_cpu
def test_calibration_size_bounds_the_sample_drawn_by_random_state(photos):
    fitted = {
        seed: resnet18(precision="int8", calibration_size=8, random_state=seed).fit(
            photos
        )
        for seed in (0, 1)
    }
    assert fitted[0].quantization_["calibration_images"] == 8
    assert fitted[0].quantization_["digest"] != fitted[1].quantization_["digest"]
    evenly = resnet18(precision="int8", calibration_size=8)
    evenly.set_params(random_state=None, weights=None)
    rows = _int8.calibration_rows(
        len(photos), evenly.calibration_size, evenly.random_state
    )
    np.testing.assert_array_equal(rows, np.linspace(0, 23, 8).round())


@needs_int8_cpu
def test_the_cache_never_mixes_calibrations(photos):
    store = EmbeddingCache()
    exact = resnet18(cache=store).fit(photos).transform(photos)
    one = resnet18(cache=store, precision="int8").fit(photos).transform(photos)
    other = resnet18(cache=store, precision="int8").fit(photos[:12])
    rows = other.transform(photos)
    assert relative_differences(one, exact).min() > 0
    assert not np.array_equal(rows, one)
    uncached = resnet18(precision="int8").fit(photos[:12]).transform(photos)
    np.testing.assert_array_equal(rows, uncached)


@needs_int8_cpu
def test_clones_of_a_search_share_one_quantization(photos, monkeypatch):
    from sklearn.base import clone

    calls = []
    export = _int8._export
    monkeypatch.setattr(_int8, "_export", lambda *a: calls.append(1) or export(*a))
    _int8.clear()
    base = resnet18(
        precision="int8", cache=EmbeddingCache(), cache_layers=["layer2", None]
    )
    first = clone(base).set_params(layer="layer2").fit(photos)
    second = clone(base).set_params(layer=None).fit(photos)
    assert len(calls) == 1
    assert first.quantization_["digest"] == second.quantization_["digest"]
    assert len(_int8._RATES) == 1  # the speed check ran once too


@needs_int8_cpu
def test_pickles_carry_the_quantized_model(photos, tmp_path):
    fitted = resnet18(precision="int8").fit(photos)
    rows = fitted.transform(photos)
    data = pickle.dumps(fitted)
    # the int8 model and no float tensors (ResNet-18's are 45 MB)
    assert len(data) < 1.2 * len(fitted.quantization_["model"])
    loaded = pickle.loads(data)
    np.testing.assert_array_equal(loaded.transform(photos), rows)
    np.testing.assert_array_equal(copy.deepcopy(fitted).transform(photos), rows)
    assert_same_rows(transform_in_fresh_process(fitted, photos, tmp_path), rows)


@needs_int8_cpu
def test_shared_files_carry_the_quantized_model(photos, tmp_path):
    pytest.importorskip("skops")
    import sktransfer

    fitted = resnet18(precision="int8").fit(photos)
    sktransfer.save(fitted, tmp_path / "int8")
    loaded = sktransfer.load(tmp_path / "int8")
    assert loaded.precision_ == "int8"
    np.testing.assert_array_equal(loaded.transform(photos), fitted.transform(photos))


def test_no_int8_instructions_warns_and_runs_in_float(photos, monkeypatch):
    monkeypatch.setattr(_int8, "int8_kernels", lambda: None)
    with pytest.warns(UserWarning, match="no int8 dot-product instructions"):
        fitted = resnet18(precision="int8").fit(photos)
    assert fitted.precision_ in ("bfloat16", "float32")
    assert fitted.quantization_ is None
    expected = resnet18(precision=fitted.precision_).fit(photos).transform(photos)
    assert_same_rows(fitted.transform(photos), expected)


@needs_int8_cpu
def test_a_network_that_cannot_be_exported_warns_and_runs_in_float(photos, monkeypatch):
    def fail(*args):
        raise RuntimeError("no export for this one")

    monkeypatch.setattr(_int8, "_export", fail)
    _int8.clear()
    with pytest.warns(UserWarning, match="could not export.*no export for this one"):
        fitted = resnet18(precision="int8").fit(photos)
    assert fitted.precision_ in ("bfloat16", "float32")
    assert fitted.quantization_ is None


def test_int8_needs_the_cpu_and_the_extra(photos, monkeypatch):
    with pytest.raises(ValueError, match="int8.*CPU|CUDA is not available"):
        resnet18(precision="int8", device="cuda").fit(photos)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[int8\]'"):
        resnet18(precision="int8").fit(photos)


def test_calibration_size_is_validated(photos):
    with pytest.raises(InvalidParameterError, match="calibration_size"):
        resnet18(precision="int8", calibration_size=0).fit(photos)


@needs_int8_cpu
def test_float_compute_ops_names_what_stays_float(photos):
    fitted = resnet18(precision="int8").fit(photos)
    assert _int8.float_compute_ops(fitted.quantization_["model"]) == []
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(fitted.quantization_["model"])
    for node in model.graph.node:  # cut the first convolution off its DQ input
        if node.op_type == "Conv":
            node.input[0] = model.graph.input[0].name
            break
    left = _int8.float_compute_ops(model.SerializeToString())
    assert len(left) == 1 and left[0].startswith("Conv")


@needs_int8_cpu
def test_an_int8_network_slower_than_float_is_not_silent(photos, monkeypatch):
    monkeypatch.setattr(
        _int8, "rates", lambda *args: {"int8": 50.0, "float": 100.0, "images": 8}
    )
    with pytest.warns(UserWarning, match="slower here than.*50 against 100"):
        fitted = resnet18(precision="int8").fit(photos)
    assert fitted.precision_ == "int8"  # (what was asked for, said to be slow)
    monkeypatch.undo()
    exact = resnet18().fit(photos)
    batch = torch.rand(4, 3, 64, 64)
    measured = _int8.rates(fitted.network_, exact.network_, batch, torch.float32)
    assert measured["images"] == 4 and measured["int8"] > 0 and measured["float"] > 0


@needs_int8_cpu
def test_compile_is_ignored_under_int8(photos):
    fitted = resnet18(precision="int8", compile=True).fit(photos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted.transform(photos[:2])


@needs_int8_cpu
def test_cached_rows_are_the_int8_networks_own(photos):
    """fit's probe image runs the float network (for the widths): its row is
    not cached as the int8 network's, so a cached transform gives the rows
    of an uncached one, the probe image's included."""
    sktransfer.clear_caches()  # (so that fit probes an image)
    store = EmbeddingCache()
    cached = resnet18(precision="int8", cache=store).fit(photos).transform(photos)
    uncached = resnet18(precision="int8").fit(photos).transform(photos)
    assert_same_rows(cached, uncached)


def degenerate_calibrations(photos):
    """(name, calibration images, what the warning says) whose int8 ranges
    would leave ordinary photos' rows tens of percent off float32's."""
    rng = np.random.default_rng(1)
    shape = (8, *photos.shape[1:])
    colours = rng.integers(0, 256, (8, 1, 1, 3)).astype(np.uint8)
    return [
        ("all black", np.zeros(shape, np.uint8), "one flat colour"),
        ("one black image", np.zeros(shape[1:], np.uint8)[None], "one flat colour"),
        ("all one colour", np.full(shape, (200, 30, 90), np.uint8), "one flat colour"),
        ("flat colours", np.broadcast_to(colours, shape).copy(), "one flat colour"),
        ("dark noise", rng.integers(0, 17, shape).astype(np.uint8), r"span [67]%"),
        ("gray noise", rng.integers(120, 140, shape).astype(np.uint8), r"span [78]%"),
    ]


@needs_int8_cpu
def test_degenerate_calibration_images_fall_back_to_float(photos):
    """Calibration images of one flat colour (all black, one colour) or of a
    sliver of the pixel scale cannot set the int8 ranges (rows of photos
    came out 40-90% off float32's): fit warns why and runs the float
    fallback, recorded in precision_, whose rows are float32's."""
    exact = resnet18().fit(photos).transform(photos)
    fallback = _int8.fallback_precision()
    expected = resnet18(precision=fallback).fit(photos).transform(photos)
    for name, calibration, why in degenerate_calibrations(photos):
        with pytest.warns(sktransfer.PrecisionFallbackWarning, match=why) as record:
            fitted = resnet18(precision="int8").fit(calibration)
        message = str(record[0].message)
        assert "precision='int8' is not used" in message, name
        assert "Calibrate on images like those to be transformed" in message
        assert fitted.precision_ == fallback, name
        assert fitted.quantization_ is None, name
        rows = fitted.transform(photos)
        assert_same_rows(rows, expected)
        assert np.median(relative_differences(rows, exact)) < 0.02, name


@needs_int8_cpu
def test_degenerate_calibration_under_a_calibration_sample(photos):
    """The check is on the images calibrated on: a flat sample of varied
    images falls back; one photo (calibration_size=1) still quantizes."""
    flat = np.zeros_like(photos)
    flat[::2] = photos[::2]  # the evenly spaced sample of 2 is rows 0 and 23
    with pytest.warns(sktransfer.PrecisionFallbackWarning, match="flat colour"):
        fitted = resnet18(precision="int8", calibration_size=2).fit(flat[1::2])
    assert fitted.quantization_ is None
    exact = resnet18().fit(photos).transform(photos)
    for params, X in (({"calibration_size": 1}, photos), ({}, photos[:1])):
        with warnings.catch_warnings():
            warnings.simplefilter("error", sktransfer.PrecisionFallbackWarning)
            one = resnet18(precision="int8", **params).fit(X)
        assert one.precision_ == "int8"
        assert one.quantization_["calibration_images"] == 1
        rows = one.transform(photos)
        assert np.median(relative_differences(rows, exact)) < 0.07


def test_unfit_for_calibration_reads_the_pixel_scale():
    """Flatness and span are judged on the [0, 1] pixel scale, through the
    preprocessing's std: normalised inputs of photos pass, flat or narrow
    ones do not, whatever the normalisation."""
    rng = np.random.default_rng(2)
    pixels = torch.from_numpy(rng.random((4, 3, 16, 16), dtype=np.float32))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    for std in (None, (0.229, 0.224, 0.225), (0.5,)):
        scale = torch.tensor((1.0,) if std is None else std).view(1, -1, 1, 1)

        def norm(x, scale=scale, std=std):
            return x if std is None else (x - mean) / scale

        assert _int8.unfit_for_calibration([norm(pixels)], std) is None
        split = [norm(pixels[:1]), norm(pixels[1:])]
        assert _int8.unfit_for_calibration(split, std) is None
        flat = torch.ones_like(pixels) * torch.rand(4, 3, 1, 1)
        assert "4 calibration images are each of one flat colour" in (
            _int8.unfit_for_calibration([norm(flat)], std)
        )
        assert "calibration image is of one flat colour" in (
            _int8.unfit_for_calibration([norm(flat[:1])], std)
        )
        narrow = 0.5 + 0.2 * pixels  # spans 20% of the scale
        assert "span 20%" in _int8.unfit_for_calibration([norm(narrow)], std)
        # flat images beside one photo: the photo sets the ranges
        assert _int8.unfit_for_calibration([norm(flat), norm(pixels[:1])], std) is None
