"""The engine: precision, layout, out-of-memory back-off, devices."""

import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sktransfer import PretrainedFeatureExtractor
from sktransfer._device import resolve_precision

from .conftest import SMALL, assert_same_rows

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make(model, **params):
    params.setdefault("preprocessing", SMALL)
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    return PretrainedFeatureExtractor(model=model, **params)


def test_precision_resolution_is_float32_on_the_cpu():
    """auto: float32 on every CPU (rows agree across machines); explicit kept."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("float32", cpu) == torch.float32
    assert resolve_precision("float16", cpu) == torch.float16


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_stays_close_to_float32(images, precision, bf16_cpu):
    """bf16/fp16 embeddings stay within a few percent of float32, as float32."""
    exact = make("resnet18", weights=None, random_state=0, precision="float32")
    low = make("resnet18", weights=None, random_state=0, precision=precision)
    a = exact.fit_transform(images)
    b = low.fit_transform(images)
    assert low.precision_ == precision and b.dtype == np.float32
    error = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert error.max() < 0.05
    assert not np.array_equal(a, b)  # the setting really changed the computation


def test_precision_is_part_of_the_cache_key(images, tiny_cnn, bf16_cpu):
    """Rows cached in one precision are never served for another."""
    from sktransfer import EmbeddingCache

    cache = EmbeddingCache()
    exact = make(tiny_cnn, cache=cache, precision="float32").fit(images)
    low = make(tiny_cnn, cache=cache, precision="bfloat16").fit(images)
    assert exact.numerics_ == "float32" and low.numerics_.startswith("bfloat16-cpu")
    assert not np.array_equal(exact.transform(images), low.transform(images))
    assert_same_rows(exact.transform(images), make(tiny_cnn).fit_transform(images))


def test_network_weights_are_channels_last(tiny_cnn, images):
    """Convolution weights are laid out channels_last for speed."""
    net = make(tiny_cnn).fit(images).network_
    weight = net.backbone.stem[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


class _SmallMemory:
    """A forward pre-hook that 'runs out of memory' above a batch size."""

    def __init__(self, limit, error):
        self.limit, self.error, self.sizes = limit, error, []

    def __call__(self, module, inputs):
        self.sizes.append(inputs[0].shape[0])
        if inputs[0].shape[0] > self.limit:
            raise self.error

    def __deepcopy__(self, memo):
        return self


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory."), RuntimeError("MPS: out of memory")],
)
def test_out_of_memory_halves_the_batch_with_the_same_result(tiny_cnn, images, error):
    """OOM: batches are halved and retried; rows equal an unbatched run."""
    expected = make(tiny_cnn, batch_size=1, precision="float32").fit_transform(images)
    memory = _SmallMemory(limit=2, error=error)
    tiny_cnn.stem[0].register_forward_pre_hook(memory)  # a leaf: not traced
    extractor = make(tiny_cnn, batch_size=5, precision="float32").fit(images)
    out = extractor.transform(images)
    assert_same_rows(out, expected)
    assert extractor.batch_size == 5  # the parameter is never rewritten
    assert not hasattr(extractor, "batch_size_")  # transform sets no attribute
    assert max(s for s in memory.sizes if s <= 2) == 2


def test_out_of_memory_with_one_image_is_a_clear_error(tiny_cnn, images):
    """If even one image does not fit, the error says what to do."""
    extractor = make(tiny_cnn, batch_size=4).fit(images)
    memory = _SmallMemory(limit=0, error=torch.OutOfMemoryError("CUDA out of memory."))
    # the fitted network is shared with clones (a memo): remove the hook after;
    # what runs is `body` (batch norms folded), not `backbone` (what is saved)
    stem = extractor.network_.body.get_submodule("stem.0")
    with (
        stem.register_forward_pre_hook(memory),
        pytest.raises(RuntimeError, match="single image") as info,
    ):
        extractor.transform(images)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert memory.sizes == [4, 2, 1]


def test_other_errors_are_not_taken_for_out_of_memory(tiny_cnn, images):
    """An unrelated RuntimeError propagates unchanged, without retries."""
    extractor = make(tiny_cnn, batch_size=4).fit(images)
    memory = _SmallMemory(limit=0, error=RuntimeError("shape mismatch"))
    stem = extractor.network_.body.get_submodule("stem.0")
    with (
        stem.register_forward_pre_hook(memory),
        pytest.raises(RuntimeError, match="shape mismatch"),
    ):
        extractor.transform(images)
    assert memory.sizes == [4]


@pytest.mark.gpu
@cuda
def test_gpu_rows_match_cpu_rows(images):
    """On CUDA, float32 rows lie within about 1% of the CPU's (row norm):
    the resize of uint8 images rounds differently there (docs/speed.md);
    without a resize they agree to float32 accumulation. Default precision
    within a few percent."""
    from .test_gpu_paths import GPU_CPU_ROW_TOLERANCE

    def rows(device, precision, X, **params):
        return make(
            "resnet18",
            weights=None,
            random_state=0,
            device=device,
            precision=precision,
            **params,
        ).fit_transform(X)

    def error(a, b):
        return (np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max()

    expected = rows("cpu", "float32", images)
    assert error(rows("cuda", "float32", images), expected) < GPU_CPU_ROW_TOLERANCE
    # 32x32 images with resize_size=32, crop_size=32: no resize at all
    small = images[:, :32, :32]
    assert_allclose(
        rows("cuda", "float32", small),
        rows("cpu", "float32", small),
        rtol=1e-3,
        atol=1e-4,
    )
    fast = make("resnet18", weights=None, random_state=0, device="cuda")
    out = fast.fit_transform(images)
    assert fast.precision_ in ("bfloat16", "float16")
    assert error(out, expected) < 0.05


@pytest.mark.gpu
@cuda
def test_gpu_decoding_is_not_raced_by_queued_kernels(tmp_path):
    """nvJPEG writes from a private stream that waits for nothing queued
    before: decoded into memory the previous batch's kernels still read,
    rows came out corrupted (pytorch/vision PR 9606). Large files and a
    ResNet-50 keep kernels queued while the next batch decodes; every run
    gives the rows of the first, and about those of Pillow's decoding."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((1280, 960), Image.BILINEAR)
        paths.append(str(tmp_path / f"{i}.jpg"))
        image.save(paths[-1], quality=90)
    params = dict(
        weights=None,
        random_state=0,
        precision="float32",
        batch_size=8,
        preprocessing={"resize_size": 224, "crop_size": 224},
    )
    gpu = make("resnet50", device="cuda", **params).fit(paths)
    first = gpu.transform(paths)
    for _ in range(5):  # (autotuned kernels may add in another order)
        assert_allclose(gpu.transform(paths), first, rtol=1e-3, atol=1e-4)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    pillow = make("resnet50", device="cuda", **params).fit(arrays).transform(arrays)
    error = np.linalg.norm(first - pillow, axis=1) / np.linalg.norm(pillow, axis=1)
    assert error.max() < 0.05  # (decoders differ by a level or so)


@pytest.mark.gpu
@cuda
def test_gpu_batches_agree_and_tensors_on_gpu_are_accepted(images):
    """Rows do not depend on the batch on GPU; CUDA tensors are valid input."""
    extractor = make(
        "resnet18", weights=None, random_state=0, device="cuda", batch_size=64
    )
    full = extractor.fit_transform(images)
    extractor.set_params(batch_size=1)
    assert_allclose(extractor.transform(images), full, rtol=1e-2, atol=1e-3)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).cuda()
    assert_allclose(extractor.transform(tensor), full, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@cuda
def test_gpu_rows_come_in_ordinary_memory(images):
    """The rows of a CUDA transform are an ordinary array, not a view of
    pinned memory (which PyTorch keeps cached, rounded up to a power of two,
    for the rest of the process); they come through the staging buffers in
    their places, whatever the batches."""
    extractor = make(
        "resnet18", weights=None, random_state=0, device="cuda", precision="float32"
    )
    whole = extractor.set_params(batch_size=6).fit_transform(images)
    rows = extractor.set_params(batch_size=1).transform(images)  # 6 > 3 buffers
    assert not torch.from_numpy(rows).is_pinned()
    assert_allclose(rows, whole, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_gpu_copies_on_their_stream_arrive_whole_before_they_are_read(images):
    """Host batches go to the GPU on a copy stream: the compute stream waits
    for each copy before reading it (checked by reading large batches right
    away), and a copy's memory is not reused by the next copy while kernels
    queued before (a sleep) have yet to read it. Rows of uint8 arrays, which
    take this path, equal the CPU's where nothing is resized."""
    from sktransfer._engine import device_input
    from sktransfer._preprocess import Preprocessing

    prep = Preprocessing(None, None, None, None)
    device = torch.device("cuda")
    inputs = []
    for value in range(1, 13):
        if value % 2:  # kernels still queued when the next copy is made
            torch.cuda._sleep(50_000_000)
        batch = torch.full((16, 3, 512, 512), value, dtype=torch.uint8)
        inputs.append(device_input(prep, batch, device, resized=False))
    torch.cuda.synchronize()
    for value, x in enumerate(inputs, start=1):
        assert x.min().item() == x.max().item() == pytest.approx(value / 255)
    small = images[:, :32, :32]  # (resize_size=32, crop_size=32: no resize)
    params = dict(weights=None, random_state=0, precision="float32", batch_size=2)
    gpu = make("resnet18", device="cuda", **params).fit_transform(small)
    cpu = make("resnet18", device="cpu", **params).fit_transform(small)
    assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_gpu_arrays_of_other_libraries_stay_on_the_gpu(images):
    """An array on the GPU that exports DLPack (as CuPy's, whose
    np.asarray fails) is read there, channels last, without a copy to the
    host: the rows of the same images as a numpy array."""
    from .test_gpu_paths import _DLPackArray

    extractor = make("resnet18", weights=None, random_state=0, device="cuda")
    expected = extractor.fit_transform(images)
    on_gpu = _DLPackArray(torch.from_numpy(images).cuda())
    assert_allclose(extractor.transform(on_gpu), expected, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@cuda
def test_gpu_pickle_holds_cpu_tensors(tiny_cnn, images):
    """A CUDA-fitted extractor pickles CPU tensors and reloads equal."""
    extractor = make(tiny_cnn, device="cuda").fit(images)
    state = extractor.__getstate__()
    assert all(t.device.type == "cpu" for t in state["_network_state"].values())
    restored = pickle.loads(pickle.dumps(extractor))
    assert_array_equal(restored.transform(images), extractor.transform(images))


@pytest.mark.gpu
@cuda
def test_gpu_decodes_jpeg_files_with_the_cpus_rows(tmp_path, monkeypatch):
    """On CUDA, JPEG files are decoded by nvJPEG in batches; the rows stay
    those of the CPU's decoding (decoders differ by a level or so). A PNG
    among them (decoded by Pillow) joins their batch on the GPU."""
    from PIL import Image

    from sktransfer._images import decode as _decode

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        image = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(image).save(paths[-1], quality=95)
    paths.insert(3, str(tmp_path / "png.png"))
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[3])
    calls = []
    original = _decode.decode_jpegs_on
    monkeypatch.setattr(
        _decode,
        "decode_jpegs_on",
        lambda datas, device: calls.append(device.type) or original(datas, device),
    )
    params = dict(weights=None, random_state=0, precision="float32", batch_size=4)
    gpu = make("resnet18", device="cuda", **params).fit(paths)
    cpu = make("resnet18", device="cpu", **params).fit(paths)
    assert_allclose(gpu.transform(paths), cpu.transform(paths), rtol=0.05, atol=0.02)
    assert calls and set(calls) == {"cuda"}


def test_reduced_precision_rows_of_other_kernels_never_answer(
    images, tiny_cnn, monkeypatch, bf16_cpu
):
    """bf16 rows cached on one CPU kind are a miss on another, whose
    transform warns that rows may shift; float32 rows are shared and silent."""
    import warnings

    from sktransfer import EmbeddingCache, _identity

    cache = EmbeddingCache()
    low = make(tiny_cnn, cache=cache, precision="bfloat16").fit(images)
    exact = make(tiny_cnn, cache=cache, precision="float32").fit(images)
    low.transform(images), exact.transform(images)
    hits = cache.hits
    other = "avx512bf16" if _identity.cpu_kernels() == "amx" else "amx"
    monkeypatch.setattr(_identity, "cpu_kernels", lambda: other)  # "another CPU"
    with pytest.warns(UserWarning, match="may shift by a few percent") as record:
        low.transform(images)
    assert len(record) == 1 and "precision='float32'" in str(record[0].message)
    assert cache.hits == hits  # every row recomputed: no hit across kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact.transform(images)
    assert cache.hits == hits + len(images)  # float32 rows are shared
    assert exact.numerics_ == "float32"
    assert low.numerics_ != _identity.numerics(torch.device("cpu"), torch.bfloat16)


def test_pickled_reduced_precision_warns_on_other_kernels(images, tiny_cnn, bf16_cpu):
    """A bf16 extractor unpickled where the kernels differ warns at transform."""
    low = make(tiny_cnn, precision="bfloat16").fit(images)
    restored = pickle.loads(pickle.dumps(low))
    restored.numerics_ = "bfloat16-cpu-amx-torch2.14.1"  # fitted on a Xeon
    with pytest.warns(UserWarning, match="fitted with precision='bfloat16'"):
        restored.transform(images)


def test_counting_images_counts_this_context_only(tiny_cnn, images):
    """The images a network runs on inside counting_images are counted once
    each (in every open count), those outside it or in another thread not."""
    import threading

    from sktransfer._engine import counting_images

    extractor = make(tiny_cnn, batch_size=4).fit(images)  # (its probe image: 1)
    with counting_images() as outer:
        extractor.transform(images)
        with counting_images() as inner:
            extractor.transform(images[:2])
        thread = threading.Thread(target=extractor.transform, args=(images,))
        thread.start()
        thread.join()
    extractor.transform(images)
    assert (outer.images, inner.images) == (len(images) + 2, 2)


def test_bf16_without_bf16_instructions_falls_back_to_float32(
    images, tiny_cnn, avx2_only_cpu
):
    """On a CPU with AVX2 only (bf16 emulated, several times slower than
    float32), precision="bfloat16" warns once and runs float32, as
    precision_ and numerics_ say; "auto" is float32 there without a word."""
    import warnings

    from sktransfer import FineTunedClassifier
    from sktransfer.exceptions import PrecisionFallbackWarning

    exact = make(tiny_cnn, precision="float32").fit_transform(images)
    with pytest.warns(
        PrecisionFallbackWarning, match="no bfloat16 instructions"
    ) as rec:
        asked = make(tiny_cnn, precision="bfloat16").fit(images)
    assert len(rec) == 1 and "precision_='float32'" in str(rec[0].message)
    assert (asked.precision_, asked.numerics_) == ("float32", "float32")
    assert_same_rows(asked.transform(images), exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = make(tiny_cnn).fit(images)
    assert auto.precision_ == "float32"
    with pytest.warns(PrecisionFallbackWarning):
        clf = FineTunedClassifier(
            model=tiny_cnn, weights=None, max_epochs=1, precision="bfloat16",
            verbose=False, random_state=0,
        ).fit(images, [0, 1] * (len(images) // 2))  # fmt: skip
    assert clf.precision_ == "float32"


def test_bf16_with_bf16_instructions_runs_bf16(images, tiny_cnn, bf16_cpu):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low = make(tiny_cnn, precision="bfloat16").fit(images)
    assert low.precision_ == "bfloat16" and low.numerics_.startswith("bfloat16-cpu")


def test_bf16_detection_where_no_cpuinfo(monkeypatch):
    """Without /proc/cpuinfo (Windows, Intel Macs) a short timing decides:
    bf16 much slower than float32 means no bf16 instructions."""
    from sktransfer import _identity

    monkeypatch.setattr(_identity, "_cpuinfo", lambda: "")
    monkeypatch.setattr(_identity.sys, "platform", "win32")
    for ratio, has in [(0.5, True), (6.0, False)]:
        _identity.cpu_flags.cache_clear(), _identity.cpu_bf16.cache_clear()
        monkeypatch.setattr(_identity, "_bf16_timing", lambda r=ratio: r)
        assert _identity.cpu_bf16() is has
    _identity.cpu_flags.cache_clear(), _identity.cpu_bf16.cache_clear()


@pytest.mark.gpu
@cuda
def test_gpu_fine_tuning_takes_cuda_tensors(images):
    """FineTunedClassifier.fit probes its width on the CPU module: a CUDA
    tensor in X comes to the CPU for it (it failed: device mismatch)."""
    from sktransfer import FineTunedClassifier

    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).cuda()
    clf = FineTunedClassifier(
        model="resnet18",
        weights=None,
        random_state=0,
        device="cuda",
        max_epochs=1,
        preprocessing=SMALL,
        verbose=False,
    ).fit(tensor, [0, 1] * 3)
    assert clf.predict(tensor).shape == (6,)


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_in_a_log_are_a_few_lines(
    tiny_cnn, images, capsys, monkeypatch, terminal
):
    """Training 20 epochs of batches of one image with verbose=True: on a
    terminal a bar per epoch, refreshed as it goes; where stderr is a log
    (not a terminal), short bars are not written at all (a log of make
    demo was a line per batch of every epoch)."""
    import sys

    from sktransfer import FineTunedClassifier

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    FineTunedClassifier(
        model=tiny_cnn, weights=None, max_epochs=20, batch_size=1,
        early_stopping=False, random_state=0, verbose=True,
    ).fit(images, [0, 1] * (len(images) // 2))  # fmt: skip
    updates = capsys.readouterr().err.count("\r")
    if terminal:
        assert updates >= 20
    else:
        assert updates <= 5
