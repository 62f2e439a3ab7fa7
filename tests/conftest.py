"""Shared fixtures: small images, a tiny CNN, the real ImageNet checkpoint."""

import os

# Tests never download: the Hugging Face hub (timm weights) is offline, so a
# missing file is an error at once instead of minutes of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A folder of checkpoints at hand (``make demo`` and ``make probe`` set it)
# would stand in for DEFAULT weights: tests name their weights themselves.
os.environ.pop("SKTRANSFER_WEIGHTS", None)

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "weights"
    / "mobilenet_v2_imagenet.pth"
)
SMALL = {"resize_size": 32, "crop_size": 32}


@pytest.fixture(autouse=True)
def _auto_is_the_cpu_outside_gpu_tests(request):
    """On a machine with CUDA, ``device="auto"`` means the CPU in the tests
    not marked ``gpu``: their expectations (float32 numerics, rows equal
    across batches) are the CPU's. The ``gpu`` tests get the GPU. (Without
    ``monkeypatch``: an autouse fixture holding it would undo the test's
    own patches after the test's other fixtures are torn down.)"""
    if request.node.get_closest_marker("gpu") or not torch.cuda.is_available():
        yield
        return
    from sktransfer import _device

    resolve = _device.resolve_device
    _device.resolve_device = lambda device: resolve(
        "cpu" if device == "auto" else device
    )
    try:
        yield
    finally:
        _device.resolve_device = resolve


def assert_same_rows(actual, expected, rtol=1e-5):
    """The rows of a recomputation, to float32 rounding: each row within
    ``rtol`` of its norm, NaN rows NaN in both.

    On some CPUs (this project's AMD EPYC machines) oneDNN picks float32
    convolution kernels by the number of images in a batch, so one image's
    row depends on the batch it arrives in, by 1e-7 to 1e-6 of its norm
    (ResNet-50). A wrong row (a stale cache hit, another network) is off by
    tens of percent.
    """
    actual, expected = np.atleast_2d(actual), np.atleast_2d(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    ok = ~np.isnan(expected).any(axis=1)
    error = np.linalg.norm(actual[ok] - expected[ok], axis=1)
    scale = np.maximum(np.linalg.norm(expected[ok], axis=1), 1e-30)
    assert (error <= rtol * scale).all(), f"relative error {(error / scale).max()}"


class TinyCNN(nn.Module):
    """A small convolutional network with named stages and a linear head."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


def transform_in_fresh_process(extractor, X, folder, env=None, method="transform"):
    """Pickle ``extractor`` (any estimator), call ``method`` on ``X`` in a new
    Python process, return its result."""
    import pickle
    import subprocess
    import sys

    (folder / "model.pkl").write_bytes(pickle.dumps(extractor))
    np.save(folder / "X.npy", X)
    code = (
        "import pickle, sys, numpy as np; d = sys.argv[1];"
        "e = pickle.load(open(d + '/model.pkl', 'rb'));"
        "np.save(d + '/out.npy', getattr(e, sys.argv[2])(np.load(d + '/X.npy')))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(folder), method], check=True, env=env
    )
    return np.load(folder / "out.npy")


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def images():
    """Six uint8 RGB images, 40x48, channels last."""
    return np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def shared_weights():
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"the real ImageNet checkpoint is not at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture
def digits_images():
    """scikit-learn's digits as uint8 grayscale images (n, 8, 8) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target


@pytest.fixture
def hub_with_real_weights(shared_weights, tmp_path, monkeypatch):
    """A temporary TORCH_HOME whose hub cache holds the real MobileNetV2 file,
    where torchvision expects MobileNet_V2_Weights.IMAGENET1K_V1."""
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(shared_weights, cache / "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def offline(monkeypatch, tmp_path, request):
    """No network: downloads fail, and their URLs are recorded in the list
    returned. TORCH_HOME is an empty folder, unless the test also asks for
    ``hub_with_real_weights``."""
    if "hub_with_real_weights" not in request.fixturenames:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts = []

    def download(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return attempts


#: What a test standing in for an sklearn check must do, by the check's name:
#: words its source must contain (any one of each tuple).
CHECK_EVIDENCE = {
    "check_readonly_memmap_input": [("mmap_mode",), ("setflags(write=False)",)],
    "check_f_contiguous_array_estimator": [("asfortranarray",)],
    "check_estimators_dtypes": [("float32", "uint16"), ("float", "/ 255")],
    "check_dtype_object": [("object",)],
    "check_complex_data": [("complex",)],
    "check_estimators_empty_data_messages": [("[:0]", "0 images")],
    "check_estimators_nan_inf": [("nan", "NaN"), ("inf",)],
    "check_positive_only_tag_during_fit": [("-(", "-0.5", "negative")],
    "check_fit2d_1feature": [("tabular",)],
    "check_fit2d_predict1d": [("tabular", "1-D")],
    "check_fit_check_is_fitted": [("NotFittedError", "not fitted")],
    "check_estimators_pickle": [("pickle", "fresh_process")],
    "check_dict_unchanged": [("vars(",)],
    "check_pipeline_consistency": [("pipeline", "deterministic")],
    "check_estimators_overwrite_params": [("get_params",)],
    "check_dont_overwrite_parameters": [("get_params",)],
    "check_methods_sample_order_invariance": [("permutation",)],
    "check_methods_subset_invariance": [("[2:4]", "[5:9]")],
    "check_supervised_y_2d": [("reshape(-1, 1)",)],
    "check_class_weight_classifiers": [("class_weight",)],
    "check_fit_idempotent": [(".fit(",)],
    "check_estimators_fit_returns_self": [("is clf", "is extractor", "is model")],
    "check_classifier_data_not_an_array": [("list(",)],
    "check_transformer_data_not_an_array": [("tensor", "list(")],
}


def assert_checks_backed(table: dict, estimator: tuple) -> None:
    """Each ``check -> "module.py::test"`` of ``table`` names a test marked
    ``@pytest.mark.covers(check)`` whose source uses the estimator (one of
    the words of ``estimator``) and does what :data:`CHECK_EVIDENCE` asks
    of that check; and every check a test claims to cover is in the table."""
    import importlib
    import inspect

    claimed = {}
    for check, target in table.items():
        module_name, name = target.split(" ")[0].split("::")
        module = importlib.import_module(f"tests.{module_name.removesuffix('.py')}")
        test = getattr(module, name, None)
        assert test is not None, f"{target} (for {check}) does not exist"
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "covers"]
        covered = {c for m in marks for c in m.args}
        assert check in covered, f"{target} does not declare that it covers {check}"
        source = inspect.getsource(test)
        assert any(word in source for word in estimator), f"{target} uses no estimator"
        for words in CHECK_EVIDENCE.get(check.split("(")[0], []):
            assert any(w in source for w in words), f"{target} never does {words}"
        claimed.setdefault(target, set()).update(covered)
    for target, covered in claimed.items():
        assert covered <= set(table), f"{target} claims {covered - set(table)}"


@pytest.fixture
def fresh_checks():
    """Forget the fusion's self-tests and failures before and after a test."""
    from sktransfer._runtime import fusion

    def forget():
        fusion._self_test.cache_clear()
        fusion._BROKEN.clear()

    forget()
    yield
    forget()


#: /proc/cpuinfo of an AVX2-only CPU (AMD EPYC Zen 3; most laptops): no
#: AVX-512, no bf16, no VNNI, no AMX.
AVX2_CPUINFO = (
    "processor\t: 0\nmodel name\t: AMD EPYC 7B13 (simulated)\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2\n"
)
_CPU_DETECTION = ("_cpuinfo", "cpu_flags", "cpu_bf16", "cpu_kernels", "cpu_model")


def _simulate_cpu(monkeypatch, cpuinfo: str, bf16_forms: bool):
    """Make this process see ``cpuinfo`` as its CPU, and (``bf16_forms``
    False) its fused bf16 convolutions fail their self-test, as they do on
    CPUs without bf16 instructions. Undone by :func:`_forget_cpu`."""
    from sktransfer import _identity
    from sktransfer._runtime import fusion

    _forget_cpu()
    monkeypatch.setattr(_identity, "_cpuinfo", lambda: cpuinfo)
    if not bf16_forms:
        real = fusion._self_test
        monkeypatch.setattr(
            fusion,
            "_self_test",
            lambda dtype, *form: dtype == torch.float32 and real(dtype, *form),
        )


def _forget_cpu():
    from sktransfer import _identity
    from sktransfer._runtime import fusion

    for name in _CPU_DETECTION:
        cached = getattr(_identity, name)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    if hasattr(fusion._self_test, "cache_clear"):
        fusion._self_test.cache_clear()
    fusion._BROKEN.clear()


@pytest.fixture
def avx2_only_cpu(monkeypatch):
    """This process as on a CPU with AVX2 only: no bf16 instructions in its
    flags, and fused bf16 convolutions that fail their self-test."""
    _simulate_cpu(monkeypatch, AVX2_CPUINFO, bf16_forms=False)
    yield
    monkeypatch.undo()
    _forget_cpu()


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bf16 instructions: this one if it has them, else this one
    with ``avx512_bf16`` added to its flags (bf16 then runs, emulated: right,
    only slower), for tests of what bf16 does."""
    from sktransfer import _identity

    if not _identity.cpu_bf16():
        real = _identity._cpuinfo()
        _simulate_cpu(monkeypatch, real + "\nflags\t\t: avx512_bf16\n", True)
    yield
    monkeypatch.undo()
    _forget_cpu()


# -- text models ---------------------------------------------------------------
SHARED_MINILM = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "weights"
    / "text"
    / "all-MiniLM-L6-v2"
)
TINY_WORDS = [
    *("the", "a", "cat", "dog", "sat", "on", "mat", "is", "was", "good", "bad"),
    *("movie", "film", "great", "awful", "really", "not", "very", "plot"),
    *("actors", "story", "ending", "i", "loved", "hated", "it", "and", "but"),
]


def make_tiny_text_model(folder, seed=0, max_position_embeddings=64, words=True):
    """A random 4-block BERT (hidden size 32) with a fast tokenizer over a
    tiny vocabulary, saved to ``folder`` in the transformers format.

    Under transformers 5, ``BertTokenizerFast`` ignores ``vocab_file``: it is
    given the vocabulary itself, or it maps every word to ``[UNK]`` (every
    text of the same length then gives the same row). ``words=False`` builds
    that degenerate tokenizer."""
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    vocab += list("abcdefghijklmnopqrstuvwxyz.,!?'")
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # (transformers 5 reads the vocabulary from ``vocab`` and ignores
    # ``vocab_file``, which 4.x reads: without ``vocab``, every word was [UNK])
    tokenizer = transformers.BertTokenizerFast(
        vocab_file=str(folder / "vocab.txt"),
        **({"vocab": {word: i for i, word in enumerate(vocab)}} if words else {}),
        do_lower_case=True,
        model_max_length=max_position_embeddings,
    )
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertModel(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """The folder of a tiny random BERT (4 blocks, width 32, 64 tokens)."""
    return make_tiny_text_model(tmp_path_factory.mktemp("text") / "tiny-bert")


@pytest.fixture
def minilm():
    """The real all-MiniLM-L6-v2 sentence-transformers folder."""
    pytest.importorskip("transformers")
    if not (SHARED_MINILM / "model.safetensors").is_file():
        pytest.skip(f"the real all-MiniLM-L6-v2 folder is not at {SHARED_MINILM}")
    return SHARED_MINILM
