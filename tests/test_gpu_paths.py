"""The CUDA paths, checked without a GPU (issue 27): the mechanisms are
faked (stream ordering, the device copy, the unpickling on machines with
and without CUDA, the precision chosen by a GPU's capability, cuDNN's flags
in threads) or emulated on the CPU (the GPU's resize). ``@pytest.mark.gpu``
tests in ``test_engine.py`` check what only a GPU shows."""

import contextlib
import pickle
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureExtractor
from sktransfer._device import cudnn_settings, resolve_precision
from sktransfer.exceptions import DeviceWarning

from .conftest import SMALL

CUDA = torch.device("cuda")

#: How far float32 rows computed on a GPU may lie from the CPU's, relative to
#: the row's norm (docs/speed.md): the resize of uint8 images takes another
#: path on CUDA (float, then rounded) than on the CPU (fixed point).
GPU_CPU_ROW_TOLERANCE = 1e-2


def make(model, **params):
    params.setdefault("preprocessing", SMALL)
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    return PretrainedFeatureExtractor(model=model, **params)


# -- 1. nvJPEG decodes on a stream of its own, ordered for the caller ----------


class _Stream:
    def __init__(self, name, log):
        self.name, self.log, self.device = name, log, CUDA

    def synchronize(self):
        self.log.append(("synchronize", self.name))

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


class _Decoded:
    def __init__(self, log):
        self.log = log

    def record_stream(self, stream):
        self.log.append(("record_stream", stream.name))


def _fake_streams(monkeypatch, log: list, caller: str, made: str) -> list:
    """Fake CUDA streams: ``caller`` is current, ``torch.cuda.Stream``
    makes one named ``made``, ``torch.cuda.stream`` makes one current
    while its block runs (logged); returns the stack of current streams."""
    from sktransfer import _device

    current = [_Stream(caller, log)]

    class _StreamContext:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            log.append(("enter", self.stream.name))
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()
            log.append(("exit", self.stream.name))

    monkeypatch.setattr(_device, "_STREAMS", threading.local())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: _Stream(made, log))
    monkeypatch.setattr(torch.cuda, "stream", _StreamContext)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    return current


def test_nvjpeg_decodes_on_its_own_stream_ordered_for_the_caller(monkeypatch):
    """The decoder writes from a private stream that waits for nothing: it
    runs under a stream of ours, synchronised first (no earlier decode still
    writing), and the caller's stream waits for it and records the outputs
    (their memory is not reused before the caller's kernels read them)."""
    import torchvision.io

    from sktransfer._images import decode as _decode

    log: list = []
    current = _fake_streams(monkeypatch, log, "caller", "decode")

    def decode_jpeg(tensors, mode, device):
        log.append(("decode on", current[-1].name))
        return [_Decoded(log) for _ in tensors]

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    images = _decode.decode_jpegs_on([b"\xff\xd8a", b"\xff\xd8b"], CUDA)
    assert len(images) == 2
    assert log == [
        ("synchronize", "decode"),
        ("enter", "decode"),
        ("decode on", "decode"),
        ("exit", "decode"),
        ("wait", "caller", "decode"),
        ("record_stream", "caller"),
        ("record_stream", "caller"),
    ]
    log.clear()
    _decode.decode_jpegs_on([b"\xff\xd8c"], CUDA)  # the same stream, reused
    assert log[0] == ("synchronize", "decode") and ("decode on", "decode") in log


# -- 22. host-to-device copies on a copy stream ---------------------------------


def test_host_batches_go_to_the_gpu_on_a_copy_stream(monkeypatch):
    """A host batch is pinned and copied on a copy stream of our own, not
    on the compute stream: the copy overlaps the previous batch's kernels.
    The compute stream then waits for the copy stream before reading it,
    and the copy is recorded on the compute stream (its memory is not
    reused for the next copy while the kernels that read it are queued).
    The same stream serves the next batch; a batch already on the device is
    not copied."""
    from sktransfer import _device
    from sktransfer._engine import device_input
    from sktransfer._preprocess import Preprocessing

    log: list = []
    current = _fake_streams(monkeypatch, log, "compute", "copy")
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)

    class OnGpu(torch.Tensor):
        def record_stream(self, stream):
            log.append(("record_stream", stream.name))

    class HostBatch:
        device = torch.device("cpu")

        def pin_memory(self):
            log.append(("pin",))
            return self

        def to(self, device, non_blocking=False):
            log.append(("copy on", current[-1].name, device.type, non_blocking))
            return pixels.clone().as_subclass(OnGpu)

    prep = Preprocessing(None, None, None, None)
    x = device_input(prep, HostBatch(), CUDA, resized=False)
    torch.testing.assert_close(x.as_subclass(torch.Tensor), pixels / 255.0)
    assert log == [
        ("pin",),
        ("enter", "copy"),
        ("copy on", "copy", "cuda", True),
        ("exit", "copy"),
        ("wait", "compute", "copy"),
        ("record_stream", "compute"),
    ]
    log.clear()
    device_input(prep, HostBatch(), CUDA, resized=False)
    assert ("copy on", "copy", "cuda", True) in log
    assert len(vars(_device._STREAMS)["streams"]) == 1  # the same stream, reused
    log.clear()

    class DeviceBatch(HostBatch):
        device = CUDA

    device_input(prep, DeviceBatch(), CUDA, resized=False)
    assert log == [("copy on", "compute", "cuda", True)]  # (.to: nothing to do)


# -- 2 and 19. The Dask GPU recipe: fitted on CUDA, through a CPU client ------


def test_cuda_fitted_extractor_passed_through_a_cpu_client_runs_on_cuda(
    images, tiny_cnn, monkeypatch
):
    """docs/scale.md: fit on a GPU worker, get it on a client without CUDA,
    scatter it to GPU workers. The client runs it on the CPU in float32
    (precision='auto' means float32 there), with a DeviceWarning; the
    workers get it back on CUDA in the precision it was fitted with."""
    extractor = make(tiny_cnn, device="cpu").fit(images)
    expected = extractor.transform(images)
    extractor.device_ = torch.device("cuda:0")  # as fitted on a GPU worker
    extractor.precision_ = "bfloat16"  # precision='auto' there
    from_worker = pickle.dumps(extractor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="in float32") as record:
        on_client = pickle.loads(from_worker)
    assert len(record) == 1
    assert on_client.device_ == torch.device("cpu")
    assert on_client.precision_ == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 rows: no numerics warning
        np.testing.assert_array_equal(on_client.transform(images), expected)
    to_workers = pickle.dumps(on_client)  # client.scatter(...)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a GPU worker
    on_worker = pickle.loads(to_workers)
    assert on_worker.device_ == torch.device("cuda:0")
    assert on_worker.precision_ == "bfloat16"
    # a refit runs where it is, and is pickled as such
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning):
        refit = pickle.loads(to_workers)
    refit.set_params(device="cpu").fit(images)
    again = pickle.loads(pickle.dumps(refit))
    assert again.device_ == torch.device("cpu") and again.precision_ == "float32"


def test_explicit_reduced_precision_is_kept_on_the_cpu_fallback(
    images, tiny_cnn, monkeypatch, bf16_cpu
):
    """Only 'auto' becomes float32 on the CPU fallback: an explicit
    precision is the user's choice. (On a CPU with bf16 instructions, or
    this one with them simulated: without them, fit itself falls back to
    float32.)"""
    extractor = make(tiny_cnn, device="cpu", precision="bfloat16").fit(images)
    extractor.device_ = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning) as record:
        restored = pickle.loads(pickle.dumps(extractor))
    assert "float32" not in str(record[0].message)
    assert restored.precision_ == "bfloat16"


# -- 3. precision='auto' on GPUs without native bfloat16 -----------------------


def _fake_gpus(monkeypatch, capabilities, emulation_argument=True):
    """GPUs of these compute capabilities (index -> (major, minor)), of which
    index 0 is current; torch.cuda.is_bf16_supported as torch's (True on
    any GPU with emulation, which is the default)."""
    current = [0]

    class _Device:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            current.append(self.index)

        def __exit__(self, *exc):
            current.pop()

    def capability(device=None):
        index = None if device is None else torch.device(device).index
        return capabilities[current[-1] if index is None else index]

    if emulation_argument:

        def bf16(including_emulation=True):
            return including_emulation or capabilities[current[-1]] >= (8, 0)
    else:

        def bf16():  # type: ignore[misc]  # torch before the argument
            return capabilities[current[-1]] >= (8, 0)

    monkeypatch.setattr(torch.cuda, "device", _Device)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)


@pytest.mark.parametrize("emulation_argument", [True, False])
def test_auto_precision_is_float16_before_ampere(monkeypatch, emulation_argument):
    """T4 (sm75) and V100 (sm70) emulate bfloat16, several times slower
    than float16: 'auto' is float16 there, bfloat16 from Ampere (sm80) on,
    for the GPU asked about, not the current one."""
    gpus = {0: (7, 5), 1: (8, 0), 2: (7, 0), 3: (9, 0)}
    _fake_gpus(monkeypatch, gpus, emulation_argument)
    assert resolve_precision("auto", CUDA) == torch.float16  # current: the T4
    assert resolve_precision("auto", torch.device("cuda:0")) == torch.float16
    assert resolve_precision("auto", torch.device("cuda:1")) == torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda:2")) == torch.float16
    assert resolve_precision("auto", torch.device("cuda:3")) == torch.bfloat16
    assert resolve_precision("bfloat16", torch.device("cuda:0")) == torch.bfloat16


# -- 5 and 7. cuDNN's flags: the new TF32 API, threads --------------------------


@pytest.fixture
def cudnn_flags():
    """Restore cuDNN's flags as they were, through the API they were set by."""
    cudnn = torch.backends.cudnn
    new = hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    try:
        legacy = cudnn.allow_tf32
    except RuntimeError:  # (set apart through the new API)
        legacy = None
    saved = (
        cudnn.benchmark,
        new and (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision),
    )
    yield cudnn
    cudnn.benchmark = saved[0]
    if legacy is not None:
        cudnn.allow_tf32 = legacy
    if saved[1] and (
        legacy is None
        or (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) != saved[1]
    ):
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved[1]


def test_cudnn_settings_use_the_new_tf32_api_once_it_is_set(cudnn_flags):
    """Once the user set TF32 through torch's new API, reading the legacy
    flag raises (a mix of APIs): every CUDA call used to. The new flag is
    set instead, and restored."""
    cudnn = cudnn_flags
    if not hasattr(cudnn.conv, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    cudnn.allow_tf32 = True
    cudnn.conv.fp32_precision = "ieee"  # the user's, by the new API
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        cudnn.allow_tf32  # noqa: B018  # (what used to raise in every call)
    cudnn.benchmark = False
    with cudnn_settings(CUDA, torch.float32):
        assert cudnn.conv.fp32_precision == "ieee" and cudnn.benchmark
    assert cudnn.conv.fp32_precision == "ieee" and not cudnn.benchmark
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "tf32", "ieee"
    with cudnn_settings(CUDA, torch.float32):
        assert cudnn.conv.fp32_precision == "ieee" and cudnn.benchmark
    assert cudnn.conv.fp32_precision == "tf32" and not cudnn.benchmark
    with cudnn_settings(CUDA, torch.bfloat16):
        assert cudnn.conv.fp32_precision == "tf32" and cudnn.benchmark
    assert cudnn.rnn.fp32_precision == "ieee" and not cudnn.benchmark


def test_cudnn_settings_keep_the_legacy_flag_readable(cudnn_flags):
    """A user (or library) who uses the legacy flag can still read it while
    a call runs, and gets it back as it was: the new API is never set in a
    way the legacy read takes for a mix."""
    cudnn = cudnn_flags
    cudnn.allow_tf32 = True  # the user's, by the legacy API
    with cudnn_settings(CUDA, torch.float32):
        assert cudnn.allow_tf32 is False  # (readable: the APIs not mixed)
    assert cudnn.allow_tf32 is True
    cudnn.allow_tf32 = False
    with cudnn_settings(CUDA, torch.float32):
        assert cudnn.allow_tf32 is False
    assert cudnn.allow_tf32 is False


def test_overlapping_cudnn_settings_share_the_flags_and_restore_them(cudnn_flags):
    """Calls in threads enter and leave in any order: while a float32 call
    runs TF32 stays off and autotuning on, whoever leaves first; the last to
    leave restores the user's flags."""
    cudnn = cudnn_flags
    cudnn.allow_tf32, cudnn.benchmark = True, False
    a, b = cudnn_settings(CUDA, torch.float32), cudnn_settings(CUDA, torch.bfloat16)
    a.__enter__(), b.__enter__()
    a.__exit__(None, None, None)
    assert cudnn.benchmark  # b still runs: autotuning on
    assert cudnn.allow_tf32  # (no float32 call left)
    b.__exit__(None, None, None)
    assert (cudnn.benchmark, cudnn.allow_tf32) == (False, True)
    a, b = cudnn_settings(CUDA, torch.float32), cudnn_settings(CUDA, torch.bfloat16)
    b.__enter__(), a.__enter__()
    b.__exit__(None, None, None)
    assert not cudnn.allow_tf32  # a (float32) still runs
    a.__exit__(None, None, None)
    assert (cudnn.benchmark, cudnn.allow_tf32) == (False, True)

    seen = []
    barrier = threading.Barrier(8)

    def call(dtype):
        with cudnn_settings(CUDA, dtype):
            barrier.wait()
            if dtype == torch.float32:
                seen.append(cudnn.allow_tf32)
            barrier.wait()

    threads = [
        threading.Thread(target=call, args=(dtype,))
        for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float32] * 2
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [False] * 4
    assert (cudnn.benchmark, cudnn.allow_tf32) == (False, True)


def test_autotuning_only_for_inputs_of_one_size(
    cudnn_flags, images, tiny_cnn, tmp_path, monkeypatch
):
    """cuDNN tunes each new input shape again: transform turns autotuning on
    for arrays and for files cropped (or squashed) to one size, not for
    files of many sizes (no crop), where the user's setting holds; while
    any call that tunes runs, it is on."""
    from PIL import Image

    from sktransfer import _engine

    cudnn = cudnn_flags
    cudnn.benchmark = False
    with cudnn_settings(CUDA, torch.float32, tune=False):
        assert not cudnn.benchmark
        with cudnn_settings(CUDA, torch.bfloat16):
            assert cudnn.benchmark
        assert not cudnn.benchmark
    cudnn.benchmark = True  # the user's
    with cudnn_settings(CUDA, torch.float32, tune=False):
        assert cudnn.benchmark

    tuned = []
    original = _engine.cudnn_settings

    def settings(device, dtype, tune=True):
        tuned.append(tune)
        return original(device, dtype, tune)

    monkeypatch.setattr(_engine, "cudnn_settings", settings)
    paths = []
    for i, size in enumerate([(40, 32), (32, 48)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(images[i][: size[0], : size[1]]).save(paths[-1])
    for preprocessing, X, tune in [
        ({"resize_size": 32, "crop_size": 32}, paths, True),
        ({"resize_size": 32, "crop_size": None}, paths, False),
        ({"resize_size": 32, "crop_size": None}, images, True),
        ({"resize_size": 32, "crop_size": None, "squash": True}, paths, True),
    ]:
        tuned.clear()
        make(tiny_cnn, device="cpu", preprocessing=preprocessing).fit(X).transform(X)
        assert tuned and set(tuned) == {tune}, preprocessing


# -- 6. a CUDA tensor given to a device="cpu" extractor ------------------------


def test_a_gpu_batch_comes_to_the_cpu_with_a_blocking_copy():
    """A non-blocking copy from a GPU to the CPU returns before the rows
    arrive: the copy to the CPU blocks, the copy to a GPU does not."""
    from sktransfer._engine import device_input
    from sktransfer._preprocess import Preprocessing

    copies = []
    pixels = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)

    class _GpuBatch:
        device = CUDA
        shape = pixels.shape

        def to(self, device, non_blocking=False):
            copies.append((torch.device(device).type, non_blocking))
            return pixels

    prep = Preprocessing(32, 32, None, None)
    x = device_input(prep, _GpuBatch(), torch.device("cpu"), resized=False)
    assert x.shape == (2, 3, 32, 32)
    assert copies == [("cpu", False)]


# -- 4. float32 rows of the GPU's resize against the CPU's ----------------------


def test_float32_rows_of_the_gpus_resize_stay_within_the_documented_bound(
    images, monkeypatch
):
    """On CUDA, torchvision resizes uint8 images in float and rounds; on
    the CPU with a fixed-point uint8 kernel: pixels differ by a level, rows
    by up to about 0.7% (a ResNet-18, the GPU test's data). Emulated on the
    CPU, the rows stay within the bound that docs/speed.md states and the
    GPU test checks, and they do differ (the bound is not slack)."""
    import torchvision.transforms.v2.functional._geometry as geometry

    if not hasattr(geometry, "_do_native_uint8_resize_on_cpu"):
        pytest.skip("this torchvision resizes uint8 images otherwise")
    params = dict(weights=None, random_state=0, device="cpu", precision="float32")
    cpu = make("resnet18", **params).fit_transform(images)
    monkeypatch.setattr(geometry, "_do_native_uint8_resize_on_cpu", lambda i: False)
    as_on_gpu = make("resnet18", **params).fit_transform(images)
    error = np.linalg.norm(as_on_gpu - cpu, axis=1) / np.linalg.norm(cpu, axis=1)
    assert 1e-3 < error.max() < GPU_CPU_ROW_TOLERANCE


# -- 26. allocation failures inside cuBLAS and cuDNN ----------------------------


def test_cublas_and_cudnn_allocation_failures_count_as_out_of_memory():
    """cuBLAS and cuDNN report a failed allocation as *_STATUS_ALLOC_FAILED,
    not "out of memory": the back-off halves the batch for them too."""
    from sktransfer._engine import is_oom

    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("CUDNN_STATUS_BAD_PARAM"))
    assert not is_oom(ValueError("out of memory"))


# -- 8. fit's probe row is computed under the settings of transform -------------


def test_the_probe_row_runs_under_the_cudnn_settings_of_transform(
    images, tiny_cnn, monkeypatch
):
    """fit's probe row is cached and served as a transform row: it runs
    under the same cuDNN settings (no TF32 in float32, autotuning)."""
    from sktransfer import _device, _engine, _network

    _network.clear()  # (else a probe of an earlier test serves the widths)
    inside = []
    entered = []
    original, original_settings = _engine.run_batch, _device.cudnn_settings

    def settings(device, dtype, tune=True):
        entered.append(dtype)
        return original_settings(device, dtype, tune)

    def run_batch(*args, **kwargs):
        inside.append(len(entered))
        return original(*args, **kwargs)

    monkeypatch.setattr(_device, "cudnn_settings", settings)
    monkeypatch.setattr(_engine, "cudnn_settings", settings)
    monkeypatch.setattr(_engine, "run_batch", run_batch)
    make(tiny_cnn, device="cpu", cache="memory").fit(images)
    assert inside and inside[0] >= 1  # the probe, the first batch to run


# -- 9. training runs under the cuDNN settings of transform -----------------------


def test_training_runs_under_the_cudnn_settings_of_transform(tiny_cnn, monkeypatch):
    """Every training step of FineTunedClassifier runs inside cudnn_settings
    (autotuned, no TF32 in float32), entered once for the loop."""
    from sktransfer import FineTunedClassifier, _device, _training

    depth = []
    original_settings, original_step = _device.cudnn_settings, _training.TrainStep

    @contextlib.contextmanager
    def settings(device, dtype):
        depth.append(1)
        with original_settings(device, dtype):
            yield
        depth.pop()

    inside = []

    class Step(original_step):
        def __call__(self, x, targets):
            inside.append(len(depth))
            return super().__call__(x, targets)

    monkeypatch.setattr(_device, "cudnn_settings", settings)
    monkeypatch.setattr(_training, "TrainStep", Step)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    FineTunedClassifier(
        model=tiny_cnn, weights=None, trainable_layers="all", max_epochs=2,
        batch_size=4, early_stopping=False, preprocessing=SMALL, device="cpu",
        random_state=0, verbose=False,
    ).fit(X, [0, 1] * 4)  # fmt: skip
    assert inside and all(d >= 1 for d in inside)


# -- 18. a GPU index that this machine does not have ------------------------------


def test_a_gpu_index_missing_here_runs_on_the_current_gpu(monkeypatch):
    """Fitted on cuda:1, unpickled where one GPU is visible (a dask-cuda
    worker): it runs on the current GPU with a DeviceWarning, and pickles
    again as cuda:1."""
    from sktransfer._device import fitted_runtime, restore_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    state = {"device_": "cuda:1", "precision": "auto", "precision_": "bfloat16"}
    with pytest.warns(DeviceWarning, match="1 visible GPU"):
        restore_runtime(state, "extractor")
    assert state["device_"] == torch.device("cuda", 0)
    fitted_runtime(state)
    assert state["device_"] == "cuda:1"
    kept = {"device_": "cuda:0", "precision_": "bfloat16"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_runtime(kept, "extractor")  # a GPU this machine has: no warning
    assert kept["device_"] == torch.device("cuda", 0)


# -- 20, 21. the out-of-memory retry of a training step ----------------------------


class _OutOfMemoryAbove(torch.nn.Module):
    """A batch norm, then an out-of-memory error for batches above ``limit``
    images (after the batch norm has updated its statistics, as a real
    failure in a later layer would)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.norm = torch.nn.BatchNorm1d(3)
        self.out = torch.nn.Linear(3, 2)

    def forward(self, x):
        x = self.norm(x)
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.out(x)


def _step_on_eight(limit, micro=None):
    """One training step on 8 rows of a fresh, seeded _OutOfMemoryAbove."""
    from sktransfer._training import TrainStep

    torch.manual_seed(0)
    net = _OutOfMemoryAbove(limit)
    step = TrainStep(
        net, torch.optim.SGD(net.parameters(), lr=0.1), None,
        torch.device("cpu"), torch.float32,
    )  # fmt: skip
    step.micro = micro
    step(torch.arange(24, dtype=torch.float32).reshape(8, 3), torch.tensor([0, 1] * 4))
    return net, step


def test_a_retried_training_step_counts_batch_norm_statistics_once(monkeypatch):
    """Out of memory at 8 then 4 images, the step is retried in pairs: the
    batch norm's statistics are those of the successful attempt only (as if
    it had run in pairs from the start), and the failed batch's memory is
    freed after the except block (whose traceback still holds it)."""
    from sktransfer import _engine

    freed: list = []
    monkeypatch.setattr(
        _engine, "free_after_oom", lambda device: freed.append(sys.exc_info())
    )
    retried, step = _step_on_eight(limit=2)
    assert step.micro == 2
    assert int(retried.norm.num_batches_tracked) == 4  # 6 without the restore
    in_pairs, _ = _step_on_eight(limit=2, micro=2)
    for name, buffer in in_pairs.norm.named_buffers():
        assert torch.equal(dict(retried.norm.named_buffers())[name], buffer)
    assert freed == [(None, None, None)] * 2  # once per halving, outside except


def test_out_of_memory_on_one_image_clears_the_frames_it_chains():
    """The final error chains the OOM with its frames cleared: a kept error
    does not keep the failed batch's tensors alive."""
    from sktransfer._training import TrainStep

    net = _OutOfMemoryAbove(0).eval()  # (batch norm takes one image in eval)
    step = TrainStep(
        net, torch.optim.SGD(net.parameters(), lr=0.1), None,
        torch.device("cpu"), torch.float32,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="single image") as caught:
        step(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]))
    cause = caught.value.__cause__
    assert isinstance(cause, torch.OutOfMemoryError)
    inner = cause.__traceback__.tb_next  # (the first frame was running)
    assert inner is not None
    while inner is not None:
        assert inner.tb_frame.f_locals == {}, inner.tb_frame.f_code.co_name
        inner = inner.tb_next


# -- 15. one copy of the weights on the GPU ----------------------------------------


@pytest.mark.parametrize("layers", [[None], ["layer1", None]])
def test_only_what_runs_goes_to_the_device(layers):
    """The device copy of a FeatureNet moves its body (what runs) and shares
    the CPU backbone (what pickles and digests read), rather than moving
    both: the GPU held the weights twice. ('meta' stands in for a GPU.)"""
    import torchvision

    from sktransfer._network import on_device_copy
    from sktransfer._runtime.layers import FeatureNet

    net = FeatureNet(torchvision.models.resnet18(num_classes=4), layers, "avg")
    copied = on_device_copy(net, torch.device("meta"))
    assert copied.backbone is net.backbone
    assert all(p.device.type == "cpu" for p in net.backbone.parameters())
    assert {p.device.type for p in copied.body.parameters()} == {"meta"}
    assert {p.device.type for p in net.body.parameters()} == {"cpu"}  # unchanged
    untraceable = FeatureNet(torch.nn.Sequential(torch.nn.Linear(3, 2)), [None], "avg")
    untraceable.body = untraceable.backbone  # (as when tracing fails)
    copied = on_device_copy(untraceable, torch.device("meta"))
    assert {p.device.type for p in copied.body.parameters()} == {"meta"}
    assert {p.device.type for p in untraceable.backbone.parameters()} == {"cpu"}


# -- 12, 24. a device decoder that fails on good files ----------------------------


def test_a_failing_device_decoder_is_said_once_and_pillow_decodes(
    tmp_path, monkeypatch
):
    """When the device's JPEG decoder fails on files Pillow reads (a build
    without nvJPEG, torchvision's decoders removed), the rows still come,
    from Pillow, with one PerformanceWarning per device; a bad file alone
    is recorded as that file's error, without the warning."""
    from PIL import Image

    from sktransfer._images import decode as _decode
    from sktransfer._images import inputs as _inputs
    from sktransfer.exceptions import PerformanceWarning

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.new("RGB", (16, 12), (40 * i, 90, 200)).save(paths[-1])

    calls = []

    def fails(datas, device):
        calls.append(len(datas))
        raise RuntimeError("this torchvision has no nvJPEG")

    monkeypatch.setattr(_decode, "decode_jpegs_on", fails)
    monkeypatch.setattr(_inputs, "_DEVICE_DECODING_FAILED", set())
    images = _inputs.as_images(paths)
    with pytest.warns(PerformanceWarning, match="no nvJPEG") as record:
        batches = list(images.batches(4, decode_device="cpu"))
    assert len(record) == 1
    assert [b.shape for _, b in batches] == [(3, 3, 12, 16)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per device
        list(_inputs.as_images(paths).batches(4, decode_device="cpu"))
    monkeypatch.setattr(_inputs, "_DEVICE_DECODING_FAILED", set())
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.jpg")
    truncated = tmp_path / "truncated.jpg"  # (its header: sent to the device)
    truncated.write_bytes((tmp_path / "whole.jpg").read_bytes()[:-1000])
    bad = _inputs.as_images([str(truncated)], on_error="nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        assert list(bad.batches(4, decode_device="cpu")) == []
    assert list(bad.errors) == [0] and calls[-1] == 1


# -- 10. the training loop does not wait for the GPU at every step -----------------


def test_the_training_loop_reads_the_loss_once_an_epoch(monkeypatch):
    """Reading a loss on the host waits for the GPU: the loop keeps the
    running loss on the device and reads it once an epoch (and at most once
    a second for the progress bar), so the next batch is decoded and copied
    while the GPU computes; the loss's normaliser comes from host targets."""
    from sktransfer._training import TrainStep, fit_loop

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    weight = torch.tensor([1.0, 3.0])
    step = TrainStep(
        net, torch.optim.SGD(net.parameters(), lr=0.1), weight,
        torch.device("cpu"), torch.float32,
    )  # fmt: skip
    x = torch.randn(16, 3)
    targets = torch.tensor([0, 1] * 8)

    def batches(order):
        for start in range(0, len(order), 4):
            rows = order[start : start + 4]
            yield rows, x[rows]

    reads = []
    for name in ("item", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, _real=real):
            reads.append(tuple(self.shape))
            return _real(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    history = fit_loop(
        net=net, step=step, batches=batches, targets=targets,
        train_rows=np.arange(16), max_epochs=3,
        generator=torch.Generator().manual_seed(0), train_mode=net.train,
        verbose=False,
    )  # fmt: skip
    loss_reads = [shape for shape in reads if shape == ()]
    # One read of the loss an epoch, and each step's class-weight sum on the
    # host (no wait there); each step read its loss and its norm: 24.
    assert len(loss_reads) == 3 + 3 * 4
    assert len(history.loss_curve) == 3 and all(v > 0 for v in history.loss_curve)


# -- 17. images on a GPU are hashed in chunks -------------------------------------


def test_images_on_a_gpu_come_to_the_host_in_chunks_for_their_digests(monkeypatch):
    """The cache key of each image of a CUDA tensor: one host copy per chunk
    of images, not per image, and the same digests as from the CPU. ('meta'
    cannot be read: a tensor whose .cpu() is counted stands in.)"""
    from sktransfer._images import inputs as _inputs

    pixels = torch.randint(0, 256, (600, 3, 8, 8), dtype=torch.uint8)
    expected = _inputs.as_images(pixels).digests()

    class OnGpu(torch.Tensor):
        copies: list = []

        @property
        def device(self):
            return torch.device("cuda", 0)

        def cpu(self):
            OnGpu.copies.append(len(self))
            return torch.Tensor(self.as_subclass(torch.Tensor))

    images = _inputs.as_images(pixels)
    images.data = pixels.as_subclass(OnGpu)
    assert images.digests() == expected
    assert OnGpu.copies == [256, 256, 88]


# -- 11. the output rows in ordinary memory, through pinned staging buffers ------


def test_rows_from_the_gpu_land_through_a_ring_of_staging_buffers():
    """Each batch is copied into the next of a few small pinned buffers and
    an event recorded after the copy; a buffer is reused only after its
    event is waited for and its rows copied into the (ordinary) output, in
    the order written. (The pinning and the events are faked; the output
    is checked at each wait.)"""
    from sktransfer._engine import StagedRows

    out = torch.full((11, 2), float("nan"))
    log: list = []

    def landed():  # the rows of out written so far
        return int(torch.isfinite(out).all(1).sum())

    class Event:
        def __init__(self):
            self.id = sum(entry[0] == "event" for entry in log)
            log.append(("event", self.id))

        def record(self, stream):
            log.append(("record", self.id, stream))

        def synchronize(self):
            log.append(("wait", self.id, landed()))

    def pinned(shape):
        log.append(("pin", shape))
        return torch.empty(shape)

    staged = StagedRows(out, "compute", 2, pinned=pinned, new_event=Event)
    feats = torch.arange(22.0).reshape(11, 2)
    for start, stop in [(0, 4), (4, 8), (8, 10), (10, 11)]:
        staged.write(slice(start, stop), feats[start:stop])
    assert landed() == 8  # the first two batches, landed to free their buffers
    staged.finish()
    torch.testing.assert_close(out, feats)
    assert log == [
        ("pin", (4, 2)), ("event", 0), ("record", 0, "compute"),
        ("pin", (4, 2)), ("event", 1), ("record", 1, "compute"),
        ("wait", 0, 0), ("record", 0, "compute"),  # rows 0:4 land, then reuse
        ("wait", 1, 4), ("record", 1, "compute"),  # rows 4:8 land, then reuse
        ("wait", 0, 8), ("wait", 1, 10),  # finish: 8:10, then 10:11
    ]  # fmt: skip
    log.clear()
    grow = StagedRows(torch.zeros(9, 2), "compute", 2, pinned=pinned, new_event=Event)
    grow.write(slice(0, 1), feats[:1])
    grow.write(slice(1, 2), feats[1:2])
    grow.write(slice(2, 9), feats[2:9])  # a larger batch: a larger buffer
    grow.finish()
    torch.testing.assert_close(grow.out, feats[:9])
    assert [entry[1] for entry in log if entry[0] == "pin"] == [(1, 2), (1, 2), (7, 2)]


# -- 13. the device decoder's calls: bounded in pixels, backed off out of memory --


def _jpegs(tmp_path, n, size=(48, 40)):
    """``n`` small JPEG files of distinct pixels (48x40 = 1920 pixels)."""
    from PIL import Image

    rng = np.random.default_rng(size)
    tmp_path.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"{i}.jpg"))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1], quality=95)
    return paths


def test_device_decoding_is_split_by_pixels_and_halved_out_of_memory(
    tmp_path, monkeypatch
):
    """One decoder call decodes at most DEVICE_DECODE_PIXELS pixels; a call
    out of device memory is halved and retried (memory freed after the
    except block), not handed to Pillow; the rows and their order are those
    of one call. (torchvision's decoder on the CPU stands in for nvJPEG.)"""
    from sktransfer._images import decode as _decode
    from sktransfer._images import inputs as _inputs
    from sktransfer.exceptions import PerformanceWarning

    paths = _jpegs(tmp_path, 6)
    cpu = torch.device("cpu")
    expected = list(_inputs.as_images(paths).batches(6, decode_device=cpu))
    calls: list = []
    real = _decode.decode_jpegs_on

    def decoder(fits):
        def decode(datas, device):
            calls.append(len(datas))
            if len(datas) > fits:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
            return real(datas, device)

        return decode

    freed: list = []
    monkeypatch.setattr(
        _inputs._engine, "free_after_oom", lambda device: freed.append(sys.exc_info())
    )
    monkeypatch.setattr(_decode, "decode_jpegs_on", decoder(fits=6))
    monkeypatch.setattr(_inputs, "DEVICE_DECODE_PIXELS", 2 * 1920)
    split = list(_inputs.as_images(paths).batches(6, decode_device=cpu))
    assert calls == [2, 2, 2]
    monkeypatch.setattr(_inputs, "DEVICE_DECODE_PIXELS", 2 * 1920 - 1)
    calls.clear()
    list(_inputs.as_images(paths[:3]).batches(6, decode_device=cpu))
    assert calls == [1, 1, 1]  # (a file larger than the cap: a call of its own)

    monkeypatch.setattr(_inputs, "DEVICE_DECODE_PIXELS", 1 << 28)
    monkeypatch.setattr(_decode, "decode_jpegs_on", decoder(fits=2))
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)  # (no fallback)
        backed_off = list(_inputs.as_images(paths).batches(6, decode_device=cpu))
    assert calls == [6, 3, 1, 2, 3, 1, 2]
    assert freed == [(None, None, None)] * 3
    monkeypatch.setattr(_decode, "decode_jpegs_on", decoder(fits=0))
    monkeypatch.setattr(_inputs, "_DEVICE_DECODING_FAILED", set())
    with pytest.warns(PerformanceWarning, match="out of memory"):
        by_pillow = list(_inputs.as_images(paths[:2]).batches(6, decode_device=cpu))
    assert calls[-3:] == [2, 1, 1]  # one file out of memory: Pillow decodes it
    for batches in (split, backed_off):
        assert [(s, b.shape) for s, b in batches] == [(0, (6, 3, 40, 48))]
        assert torch.equal(batches[0][1], expected[0][1])
    assert torch.equal(by_pillow[0][1], expected[0][1][:2])


# -- 23. images decoded on the device are resized by size, a batch at a time ------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_device_decoded_images_are_resized_together_by_size(
    tmp_path, monkeypatch, interpolation
):
    """After the device's decoder, images of one size are resized in one
    call (a few kernels a call rather than per image), in calls of at most
    RESIZE_PIXELS pixels; the pixels equal those of a resize image by image
    (the resize is per image, on the CPU as on CUDA), in input order."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    from sktransfer._images import inputs as _inputs
    from sktransfer._preprocess import Preprocessing

    small, large = (
        _jpegs(tmp_path / "s", 3, (48, 40)),
        _jpegs(tmp_path / "l", 2, (60, 44)),
    )
    paths = [small[0], large[0], small[1], large[1], small[2]]
    prep = Preprocessing(36, 32, None, None, interpolation=interpolation)
    calls: list = []

    def geometry(batch):
        calls.append(tuple(batch.shape))
        return prep.geometry(batch)

    encoded = [
        torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
        for p in paths
    ]
    each = [prep.geometry(decode_jpeg(data)[None])[0] for data in encoded]
    cpu = torch.device("cpu")
    batches = list(_inputs.as_images(paths).batches(8, None, geometry, cpu))
    assert calls == [(3, 3, 40, 48), (2, 3, 44, 60)]
    assert [(s, len(b)) for s, b in batches] == [(0, 5)]
    assert torch.equal(batches[0][1], torch.stack(each))
    monkeypatch.setattr(_inputs, "RESIZE_PIXELS", 2 * 48 * 40)
    calls.clear()
    again = list(_inputs.as_images(paths).batches(8, None, geometry, cpu))
    assert calls == [(2, 3, 40, 48), (1, 3, 40, 48), (1, 3, 44, 60), (1, 3, 44, 60)]
    assert torch.equal(again[0][1], batches[0][1])
    thin = tmp_path / "thin.jpg"  # (resized, it would be 26 M pixels: refused)
    Image.new("RGB", (20000, 1), (90, 120, 200)).save(thin)
    lenient = _inputs.as_images([paths[0], str(thin), paths[2]], on_error="nan")
    rows = list(lenient.batches(8, None, geometry, cpu))
    assert [(s, len(b)) for s, b in rows] == [(0, 1), (2, 1)]
    assert list(lenient.errors) == [1] and "aspect ratio" in str(lenient.errors[1])
    assert torch.equal(torch.cat([b for _, b in rows]), torch.stack(each)[[0, 2]])


# -- 14. runs of a mixed folder; autotuning only for inputs of one size -----------


def test_a_mixed_folder_is_batched_whole_on_the_device(tmp_path, monkeypatch):
    """JPEGs decoded on the device and PNGs decoded by Pillow on the host
    share runs: the host's images are moved to the device and stacked with
    the others, so a change of decoder ends no run (it gave batches of
    random sizes, each a new shape for cuDNN's autotuning, and in training
    an error). ('meta' stands in for the GPU; its decoder is faked.) On the
    host alone, runs are as before."""
    from PIL import Image

    from sktransfer._images import decode as _decode
    from sktransfer._images import inputs as _inputs

    jpegs = _jpegs(tmp_path, 3)
    pngs = []
    for i in range(2):
        pngs.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (48, 40), (30 * i, 60, 90)).save(pngs[-1])
    paths = [jpegs[0], pngs[0], jpegs[1], jpegs[2], pngs[1]]
    meta = torch.device("meta")

    def decode(datas, device):
        return [torch.empty((3, 40, 48), dtype=torch.uint8, device=device)] * len(datas)

    monkeypatch.setattr(_decode, "decode_jpegs_on", decode)
    batches = list(_inputs.as_images(paths).batches(4, decode_device=meta))
    assert [(s, len(b), b.device.type) for s, b in batches] == [
        (0, 4, "meta"),
        (4, 1, "cpu"),
    ]
    on_host = list(_inputs.as_images(paths).batches(4))
    assert [(s, len(b)) for s, b in on_host] == [(0, 4), (4, 1)]


# -- 29. arrays of other libraries (CuPy) through DLPack ---------------------------


class _DLPackArray:
    """An array of another library (as CuPy's on a GPU): DLPack and the
    shape only; ``np.asarray`` fails on it, as on CuPy's."""

    def __init__(self, array):
        self._array, self.shape = array, array.shape

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed.")


def test_arrays_exporting_dlpack_are_taken_without_numpy(images, tiny_cnn):
    """A CuPy array (a dask-cuda array's blocks) cannot go through
    np.asarray: it is taken through DLPack, sharing its memory, in numpy's
    layout (n, H, W, C), and gives the rows of the same numpy array; a
    dtype that is not an image's is refused as for numpy."""
    from sktransfer._images.inputs import as_images

    X = _DLPackArray(images)
    adapted = as_images(X)
    assert isinstance(adapted.data, torch.Tensor)
    assert adapted.data.data_ptr() == images.__array_interface__["data"][0]
    extractor = make(tiny_cnn, device="cpu").fit(images)
    np.testing.assert_array_equal(extractor.transform(X), extractor.transform(images))
    np.testing.assert_array_equal(
        make(tiny_cnn, device="cpu").fit_transform(X), extractor.transform(images)
    )
    gray = images[..., 0].astype(np.float32) / 255  # (n, H, W) floats
    np.testing.assert_array_equal(
        extractor.transform(_DLPackArray(gray)), extractor.transform(gray)
    )
    with pytest.raises(TypeError, match="dtype"):
        as_images(_DLPackArray(images.astype(np.int32)))
