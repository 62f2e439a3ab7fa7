"""Input validation and the array/tensor adapters."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sktransfer import Preprocessing, PretrainedFeatureExtractor
from sktransfer._images.inputs import as_images

from .conftest import SMALL, assert_same_rows


@pytest.fixture
def extractor(tiny_cnn, images):
    return PretrainedFeatureExtractor(
        model=tiny_cnn, preprocessing=SMALL, verbose=False, cache=None
    ).fit(images)


@pytest.mark.covers("check_fit2d_1feature", "check_fit2d_predict1d")
def test_tabular_input_raises(extractor):
    """1-D and 2-D data are refused before reaching the network."""
    for X in (np.zeros((5, 3)), np.zeros(5), [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="tabular data"):
            extractor.transform(X)


@pytest.mark.covers("check_estimators_empty_data_messages")
def test_empty_input_raises(extractor):
    """Zero images or zero-sized images are errors."""
    with pytest.raises(ValueError, match="0 images"):
        extractor.transform(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="must not be empty"):
        extractor.transform(np.zeros((2, 0, 8, 3), np.uint8))


@pytest.mark.covers("check_complex_data", "check_dtype_object")
def test_bad_dtypes_raise_type_error(extractor):
    """Complex, object, bool and wide integer arrays get a TypeError."""
    for dtype in (np.complex128, object, bool, np.int64, np.int32):
        with pytest.raises(TypeError, match="uint8"):
            extractor.transform(np.zeros((2, 8, 8, 3), dtype=dtype))


def test_not_images_raise_type_error(extractor):
    """Strings, None, sparse matrices and DataFrames are refused."""
    import pandas as pd
    import scipy.sparse as sp

    for X in ("image.jpg", None, 3):
        with pytest.raises(TypeError, match="batch of images"):
            extractor.transform(X)
    with pytest.raises(TypeError, match="Sparse"):
        extractor.transform(sp.csr_matrix(np.eye(3)))
    with pytest.raises(TypeError, match="DataFrame"):
        extractor.transform(pd.DataFrame(np.eye(3)))


def test_wrong_channel_counts_raise(extractor):
    """Two, four or many channels are errors with a layout hint."""
    with pytest.raises(ValueError, match="channels-first"):
        extractor.transform(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        extractor.transform(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="2 channels"):
        extractor.transform(np.zeros((2, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="channels-last"):
        extractor.transform(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match="5 dimensions"):
        extractor.transform(np.zeros((1, 2, 8, 8, 3), np.uint8))


@pytest.mark.covers("check_estimators_nan_inf")
def test_nan_or_inf_raise_naming_the_row(extractor):
    """A NaN or infinite pixel fails with the index of its image."""
    X = np.full((300, 8, 8, 3), 0.5, np.float32)
    X[270, 3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="Image 270 contains NaN"):
        extractor.transform(X)
    X[270, 3, 3, 1] = np.inf
    with pytest.raises(ValueError, match="Image 270 contains NaN or infinity"):
        extractor.transform(torch.from_numpy(X).permute(0, 3, 1, 2))


@pytest.mark.covers("check_positive_only_tag_during_fit")
def test_float_images_outside_unit_range_raise(extractor):
    """Floats must be in [0, 1]; 0..255 floats and negatives get an error."""
    X = np.full((3, 8, 8, 3), 0.5)
    X[1] = 200.0
    with pytest.raises(
        ValueError, match=r"image 1 has values in \[200, 200\]. It looks like 0..255"
    ):
        extractor.transform(X)
    X[1] = -0.5
    with pytest.raises(ValueError, match="image 1"):
        extractor.transform(X)
    X[1] = 1.005  # resampling overshoot is tolerated
    assert extractor.transform(X).shape == (3, extractor.n_features_out_)


@pytest.mark.covers("check_estimators_dtypes")
def test_supported_dtypes_scale_alike(extractor):
    """uint8, uint16 and float images of the same picture embed alike."""
    rng = np.random.default_rng(1)
    X8 = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # no resize
    expected = extractor.transform(X8.astype(np.float64) / 255)
    assert_allclose(extractor.transform(X8), expected, rtol=1e-4, atol=1e-5)
    assert_allclose(
        extractor.transform(X8.astype(np.uint16) * 257), expected, rtol=1e-4, atol=1e-5
    )
    assert_allclose(
        extractor.transform((X8 / 255).astype(np.float16)), expected, atol=2e-2
    )


def test_grayscale_equals_repeated_rgb(extractor):
    """(n, H, W) and (n, H, W, 1) images equal their 3-channel repetition."""
    gray = np.random.default_rng(2).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    expected = extractor.transform(rgb)
    assert_allclose(extractor.transform(gray), expected, rtol=1e-5, atol=1e-6)
    assert_allclose(
        extractor.transform(gray[..., None]), expected, rtol=1e-5, atol=1e-6
    )
    assert_allclose(
        extractor.transform(torch.from_numpy(gray)), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.covers("check_transformer_data_not_an_array")
def test_tensor_and_array_inputs_agree(extractor, images):
    """An (n, C, H, W) tensor and the (n, H, W, C) array give the same rows."""
    expected = extractor.transform(images)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert_array_equal(extractor.transform(tensor), expected)


@pytest.mark.covers(
    "check_readonly_memmap_input",
    "check_f_contiguous_array_estimator",
    "check_transformer_general(readonly_memmap=True)",
)
def test_readonly_memmap_fortran_strided_inputs_unchanged(extractor, images, tmp_path):
    """Read-only, memory-mapped, Fortran and strided arrays work, untouched."""
    expected = extractor.transform(images)
    readonly = images.copy()
    readonly.setflags(write=False)
    path = tmp_path / "images.npy"
    np.save(path, images)
    memmap = np.load(path, mmap_mode="r")
    fortran = np.asfortranarray(images)
    wide = np.zeros((len(images) * 2, *images.shape[1:]), np.uint8)
    wide[::2] = images
    for X in (readonly, memmap, fortran, wide[::2]):
        before = np.array(X, copy=True)
        assert_array_equal(extractor.transform(X), expected)
        assert_array_equal(X, before)
    floats = images / 255.0
    floats.setflags(write=False)
    extractor.transform(floats)
    assert_array_equal(floats, images / 255.0)


def test_reversed_arrays_work(extractor, images):
    """Negative strides (a reversed array, a flipped image), down to a batch
    of one image, which numpy calls contiguous and torch refuses."""
    expected = extractor.transform(images)
    # (to float32 rounding: on some CPUs, an image's row depends by an ulp on
    # its place in the batch, and on the batch size: see conftest)
    assert_same_rows(extractor.transform(images[::-1]), expected[::-1])
    assert_same_rows(extractor.transform(images[::-1][:1]), expected[-1:])
    flipped = images[:, :, ::-1]
    assert_array_equal(
        extractor.transform(flipped), extractor.transform(flipped.copy())
    )
    extractor.fit(images[::-1])


def test_layout_rule_is_explicit():
    """numpy arrays are read channels-last, tensors channels-first."""
    array = as_images(np.zeros((2, 5, 7, 3), np.uint8))
    tensor = as_images(torch.zeros(2, 3, 5, 7, dtype=torch.uint8))
    assert array.image_size() == tensor.image_size() == (5, 7)
    (_, a), (_, t) = next(array.batches(2)), next(tensor.batches(2))
    assert a.shape == t.shape == (2, 3, 5, 7)


def test_non_native_byte_orders_give_the_native_rows(extractor):
    """Big-endian (and explicitly little-endian) uint8, uint16 and float
    images, in arrays and in lists, give the rows of the native arrays."""
    rng = np.random.default_rng(3)
    X8 = rng.integers(0, 256, (4, 36, 40, 3), dtype=np.uint8)
    natives = [
        X8,
        X8.astype(np.uint16) * 257 + rng.integers(0, 257, X8.shape).astype(np.uint16),
        (X8 / 255).astype(np.float32),
        X8 / 255,
    ]
    for native in natives:
        expected = extractor.transform(native)
        for order in (">", "<"):
            swapped = native.astype(native.dtype.newbyteorder(order))
            assert_array_equal(swapped, native)
            before = swapped.copy()
            assert_same_rows(extractor.transform(swapped), expected)
            assert_same_rows(extractor.transform(list(swapped)), expected)
            assert_array_equal(swapped, before)  # never modified
            assert swapped.dtype.byteorder == before.dtype.byteorder


def test_byte_order_does_not_change_the_cache_key():
    """The same pixels in either byte order are the same image to the cache."""
    from sktransfer._images.inputs import image_digest

    image = np.arange(48, dtype=np.uint16).reshape(4, 4, 3)
    swapped = image.astype(">u2")
    assert image_digest(swapped, True) == image_digest(image, True)
    assert image_digest(swapped[::-1], True) != image_digest(image, True)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"mean": (float("nan"), 0.5, 0.5)}, "'mean' must be finite"),
        ({"std": (0.2, float("inf"), 0.2)}, "'std' must be finite"),
        ({"mean": (0.5, -float("inf"), 0.5)}, "'mean' must be finite"),
        ({"std": (0.2, float("nan"), 0.2)}, "'std' must be finite"),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "'mean' has 2 values"),
        ({"std": (0.2, 0.2, 0.2, 0.2)}, "'std' has 4 values"),
        ({"mean": ()}, "'mean' has 0 values"),
        ({"std": (0.2, 0.0, 0.2)}, "'std' must be positive"),
        ({"std": (-0.2,)}, "'std' must be positive"),
        ({"mean": ("a", 0.5, 0.5)}, "'mean' must hold numbers"),
        ({"mean": (True, 0.5, 0.5)}, "'mean' must hold numbers"),
        ({"std": (None, 0.2, 0.2)}, "'std' must hold numbers"),
        ({"mean": 0.5}, "'mean' must be a sequence"),
        ({"std": "0.2"}, "'std' must be a sequence"),
        ({"resize_size": 0}, "'resize_size' must be a positive int"),
        ({"crop_size": -3}, "'crop_size' must be a positive int"),
        ({"crop_size": 2.5}, "'crop_size' must be a positive int"),
    ],
)
def test_bad_preprocessing_numbers_are_refused_at_fit(
    tiny_cnn, images, override, match
):
    """NaN, infinite, zero or negative mean/std, wrong counts, non-numbers
    and sizes < 1 are a ValueError at fit naming the field and the fix, never
    rows that are all alike or a raw RuntimeError at transform."""
    base = {**SMALL, "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}
    extractor = PretrainedFeatureExtractor(
        model=tiny_cnn, preprocessing={**base, **override}, verbose=False, cache=None
    )
    with pytest.raises(ValueError, match=match) as info:
        extractor.fit(images)
    message = str(info.value)
    assert "preprocessing" in message
    if "mean" in match or "std" in match:
        assert "Pass 3 finite numbers" in message
    with pytest.raises(ValueError, match=match):
        Preprocessing(**{**base, **override})


def test_preprocessing_numbers_in_any_numeric_form_are_accepted(tiny_cnn, images):
    """Lists, numpy arrays and numpy scalars give the rows of tuples of floats."""
    as_floats = {**SMALL, "mean": (0.5, 0.25, 0.5), "std": (0.2, 0.3, 0.2)}
    other_forms = {
        "resize_size": np.int64(32),
        "crop_size": 32,
        "mean": np.array([0.5, 0.25, 0.5]),
        "std": [0.2, np.float64(0.3), 0.2],
    }
    rows = []
    for preprocessing in (as_floats, other_forms):
        extractor = PretrainedFeatureExtractor(
            model=tiny_cnn, preprocessing=preprocessing, verbose=False, cache=None
        ).fit(images)
        assert extractor.preprocessing_.mean == (0.5, 0.25, 0.5)
        assert all(type(v) is float for v in extractor.preprocessing_.std)
        rows.append(extractor.transform(images))
    assert_same_rows(rows[1], rows[0])
    assert not np.allclose(rows[0], rows[0][:1])  # the rows differ by image
