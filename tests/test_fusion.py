"""Convolutions fused with their activations and residual adds (CPU speed)."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from numpy.testing import assert_allclose
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from sktransfer import _identity
from sktransfer._runtime import fusion as _fusion
from sktransfer._runtime.fusion import (
    ConvPointwise,
    StemMaxPool,
    fuse_pointwise,
    operator_works,
)
from sktransfer._runtime.layers import FeatureNet

needs_onednn = pytest.mark.skipif(
    not operator_works(), reason="oneDNN's fused convolution is not available"
)


def _model(name):
    """A torchvision model with random weights and batch-norm statistics far
    from 0 and 1 (so that folding them matters)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def _fused(net):
    return [m for m in net.body.modules() if isinstance(m, ConvPointwise)]


@needs_onednn
@pytest.mark.parametrize(
    ("name", "activations", "residual"),
    [
        ("resnet18", {"relu"}, True),  # conv+relu, conv+add+relu
        ("mobilenet_v2", {"hardtanh", None}, True),  # ReLU6; add without act
        ("mobilenet_v3_small", {"hardswish", "relu"}, True),
        ("efficientnet_b0", {"swish"}, False),  # SiLU; residuals pass a
        # stochastic-depth module (identity at inference) and stay unfused
    ],
)
def test_fused_network_computes_the_model(name, activations, residual):
    """Each family's fusions: float32 rows equal the eager model's; bfloat16
    rows stay as close to them as bf16 autocast of the eager model does."""
    model = _model(name)
    net = FeatureNet(model, [None], "avg").to(memory_format=torch.channels_last)
    fused = _fused(net)
    assert activations <= {m.activation and m.activation[0] for m in fused}
    assert any(m.residual for m in fused) == residual
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        (ours,) = net(x)
        with torch.autocast("cpu", torch.bfloat16):
            (low,) = net(x)
            eager_low = model(x).float()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    scale = expected.abs().max()
    assert (low - expected).abs().max() / scale < 3 * max(
        (eager_low - expected).abs().max() / scale, 0.01
    )
    assert not torch.equal(low, ours)  # bf16 really ran in bf16


@needs_onednn
def test_cut_points_inside_a_fusion_keep_their_values():
    """A requested node in the middle of conv -> add -> relu is not fused
    away: its value is the eager one."""
    model = _model("resnet18")
    model.fc = nn.Identity()
    layers = ["layer1.0.bn1", "layer1.0.add", "layer2", None]
    net = FeatureNet(model, layers, "avg")
    reference = create_feature_extractor(
        model, {k: k for k in ["layer1.0.bn1", "layer1.0.add", "layer2", "flatten"]}
    )
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours = net(x)
        theirs = reference(x)
    expected = [theirs[k].mean((2, 3)) for k in layers[:3]] + [theirs["flatten"]]
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert len(_fused(net)) > 5  # the other convolutions are still fused


def test_modules_with_hooks_are_left_alone():
    """A convolution or activation with a hook of its own is not fused, so the
    hook still runs."""
    model = _model("resnet18")
    seen = []
    model.conv1.register_forward_hook(lambda m, i, o: seen.append("conv1"))
    model.layer1[0].relu.register_forward_pre_hook(lambda m, i: seen.append("relu"))
    net = FeatureNet(model, [None], "avg")
    assert type(net.body.get_submodule("conv1")) is nn.Conv2d
    assert type(net.body.get_submodule("layer1.0.conv1")) is nn.Conv2d
    assert isinstance(net.body.get_submodule("layer2.0.conv1"), ConvPointwise)
    with torch.inference_mode():
        net(torch.rand(1, 3, 32, 32))
    assert "conv1" in seen and "relu" in seen


@needs_onednn
@pytest.mark.parametrize(("name", "cut"), [("mobilenet_v2", "features.13")])
def test_cut_networks_fold_and_fuse_torchvision_ops_blocks(name, cut):
    """torchvision's feature extraction keeps its ``torchvision.ops`` blocks
    (``Conv2dNormActivation``) whole; the network that runs is traced through
    them, so a cut network folds and fuses as the whole one does."""
    model = _model(name)
    model.classifier = nn.Identity()
    net = FeatureNet(model, [cut, None], "avg")
    called = {
        type(net.body.get_submodule(n.target))
        for n in net.body.graph.nodes
        if n.op == "call_module"
    }
    assert nn.BatchNorm2d not in called and ConvPointwise in called
    reference = create_feature_extractor(model, {cut: cut, "flatten": "flatten"})
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours = net(x)
        theirs = reference(x)
    expected = [theirs[cut].mean((2, 3)), theirs["flatten"]]
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_blocks_with_hooks_are_traced_whole():
    """A ``torchvision.ops`` block with a hook of its own stays one call of
    the network that runs, so that its hook runs."""
    model = _model("mobilenet_v2")
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append("block"))
    net = FeatureNet(model, ["features.5", None], "avg")
    seen.clear()  # (tracing called it too)
    with torch.inference_mode():
        net(torch.rand(1, 3, 32, 32))
    assert seen == ["block"]


class _Shared(nn.Module):
    """One convolution called twice, followed by different operations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.conv(x)


def test_a_module_called_twice_is_not_fused():
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_Shared().eval())
    x = torch.randn(2, 3, 8, 8)
    expected = gm(x)
    assert fuse_pointwise(gm) == 0
    torch.testing.assert_close(gm(x), expected)


@needs_onednn
def test_fused_module_with_autograd_runs_the_eager_computation():
    """With gradients on (or off the CPU) the module computes the same
    function in plain PyTorch, so it still trains and moves."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
    module = ConvPointwise(conv, ("relu", ()), residual=True)
    x, other = torch.randn(2, 4, 9, 9), torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        fused = module(x, other)
    eager = module(x, other)
    assert eager.requires_grad
    torch.testing.assert_close(eager.detach(), fused, rtol=1e-5, atol=1e-5)
    eager.sum().backward()
    assert conv.weight.grad is not None


@needs_onednn
@pytest.mark.filterwarnings("ignore:oneDNN's fused convolution:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cpu", ["this CPU", "AVX2 only"])
def test_packed_weights_serve_other_sizes_and_copies(request, fresh_checks, cpu, dtype):
    """Weights packed for one input size give the same rows for other sizes;
    a network that has run still deep-copies and pickles. Where the fused
    form failed its self-test in this process (bf16 on a CPU with AVX2
    only), nothing is packed and the rows are the unfused ones."""
    import copy
    import pickle

    if cpu == "AVX2 only":
        request.getfixturevalue("avx2_only_cpu")
    model = _model("resnet18")
    model.fc = nn.Identity()
    x = torch.rand(5, 3, 64, 64)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype, enabled=dtype != torch.float32),
    ):
        for first, second in [(x[:4], x), (x, x[:1]), (x[:2, :, :48, :40], x)]:
            net = FeatureNet(model, [None], "avg")
            net(first)  # packs the weights for this size
            (ours,) = net(second)
            (fresh,) = FeatureNet(model, [None], "avg")(second)
            torch.testing.assert_close(ours, fresh, rtol=0, atol=0)
        for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            torch.testing.assert_close(twin(x)[0], fresh, rtol=0, atol=0)
        # packed for the largest batch so far: a one-image probe (fit's) is
        # followed by a repacking for the first larger batch
        net = FeatureNet(model, [None], "avg")
        conv = net.body.get_submodule("layer1.0.conv1")
        seen = []
        for batch in (x[:1], x[:3], x[:2]):
            net(batch)
            seen.append([v[2] for v in conv._packed.values()])
    # what this process did: the form (conv + relu) passed its self-test or not
    fused = (dtype, conv.activation, conv.residual) not in _fusion._BROKEN
    assert seen == ([[1], [3], [3]] if fused else [[], [], []])
    if cpu == "AVX2 only":
        assert fused == (dtype == torch.float32)  # bf16 forms fail there
    elif dtype == torch.float32 or _identity.cpu_bf16():
        assert fused  # (the operator works here: needs_onednn)


@needs_onednn
def test_operator_check_is_not_fooled_by_autocast(fresh_checks):
    """The one-off check of oneDNN's operator runs in the dtype it checks
    even when first asked under bf16 autocast (else a fresh process would
    never fuse)."""
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert operator_works()


ACTIVATION_MODULES = [None, nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-1.0, 2.0), nn.SiLU(),
                      nn.Hardswish(), nn.Sigmoid()]  # fmt: skip


@pytest.mark.filterwarnings("ignore:oneDNN's fused convolution:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ACTIVATION_MODULES, ids=lambda a: type(a).__name__)
def test_every_form_computes_the_eager_result(fresh_checks, act, residual, dtype):
    """Every form the pass produces (each activation, with and without the
    add, float32 and bf16) gives eager PyTorch's values, fused where its
    self-test passed and unfused where it did not."""
    if act is None and not residual:
        pytest.skip("a convolution alone is not rewritten")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).eval()
    activation = None if act is None else _fusion_activation(act)
    fused = ConvPointwise(conv, activation, residual)
    x = torch.randn(3, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    other = torch.randn(3, 16, 5, 5) if residual else None
    with torch.inference_mode():
        expected = conv(x) + (other if residual else 0)
        expected = expected if act is None else act(expected)
        if dtype == torch.float32:
            got = fused(x, other)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        else:
            with torch.autocast("cpu", dtype):
                got = fused(x, other).float()
            scale = float(expected.abs().max())
            torch.testing.assert_close(got, expected, rtol=0.05, atol=0.02 * scale)


def _fusion_activation(module):
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), module))
    node = [n for n in gm.graph.nodes if n.op == "call_module"][-1]
    return _fusion._activation(gm, node)


def _broken_operator(monkeypatch, behaviour):
    """Replace oneDNN's fused convolution by one that gives wrong values or
    raises, and count its calls."""
    calls = []

    class Broken:
        def __call__(self, x, weight, bias, *args):
            calls.append("unary")
            if behaviour == "raise":
                raise RuntimeError("could not create a memory")
            return torch.zeros(len(x), weight.shape[0], 1, 1, dtype=x.dtype)

        def binary(self, x, other, *args):
            calls.append("binary")
            if behaviour == "raise":
                raise RuntimeError("could not create a memory")
            return torch.zeros_like(other)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Broken())
    return calls


@pytest.mark.parametrize("behaviour", ["wrong", "raise"])
def test_a_misbehaving_operator_falls_back_with_one_warning(
    fresh_checks, monkeypatch, behaviour, tiny_cnn
):
    """A fused operator that gives other values than eager PyTorch (caught by
    the self-test) or raises (caught at the call) is not used: rows are the
    unfused ones, with one RuntimeWarning per form, never a wrong row."""
    x = torch.rand(4, 3, 16, 16)
    with torch.inference_mode():
        expected = tiny_cnn.eval()(x)
    net = FeatureNet(tiny_cnn, [None], "avg")
    assert any(isinstance(m, ConvPointwise) for m in net.modules())
    calls = _broken_operator(monkeypatch, behaviour)
    if behaviour == "raise":  # the self-test passes, the real call fails
        monkeypatch.setattr(_fusion, "_self_test", lambda *form: True)
    with (
        pytest.warns(RuntimeWarning, match="run unfused") as record,
        torch.inference_mode(),
    ):
        first = net(x)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            second = net(x)[0]  # no second warning, no further call
    n_calls = len(calls)
    with torch.inference_mode():
        net(x)
    assert len(calls) == n_calls
    assert len({str(w.message) for w in record}) == len(record)  # one per form
    for got in (first, second):
        torch.testing.assert_close(got, expected.flatten(1), rtol=1e-4, atol=1e-5)


def test_the_environment_variable_turns_the_fusion_off(monkeypatch, tiny_cnn):
    """SKTRANSFER_CPU_FUSION=0: no rewriting, and a module rewritten before
    runs unfused (oneDNN's operator is never called)."""
    x = torch.rand(2, 3, 16, 16)
    fused = FeatureNet(tiny_cnn, [None], "avg")
    monkeypatch.setenv(_fusion.FUSION_ENV, "0")
    assert not _fusion.enabled()
    plain = FeatureNet(tiny_cnn, [None], "avg")
    assert not any(isinstance(m, ConvPointwise) for m in plain.modules())
    calls = _broken_operator(monkeypatch, "raise")
    with torch.inference_mode():
        torch.testing.assert_close(fused(x)[0], plain(x)[0], rtol=1e-4, atol=1e-5)
    assert calls == []
    monkeypatch.setenv(_fusion.FUSION_ENV, "1")
    assert _fusion.enabled()


def test_cpu_blocks_give_the_rows_of_one_block(monkeypatch, tiny_cnn, images):
    """On the CPU a batch runs in blocks of a few images; rows are unchanged."""
    from sktransfer import PretrainedFeatureExtractor, _engine

    extractor = PretrainedFeatureExtractor(
        model=tiny_cnn,
        batch_size=6,
        preprocessing={"resize_size": 32, "crop_size": 32},
        precision="float32",
        cache=None,
        verbose=False,
    ).fit(images)
    whole = extractor.transform(images)
    sizes = []
    stem = extractor.network_.body.get_submodule("stem.0")
    monkeypatch.setattr(_engine, "CPU_BLOCK_PIXELS", 4 * 32 * 32)
    with stem.register_forward_pre_hook(lambda m, i: sizes.append(len(i[0]))):
        blocks = extractor.transform(images)
    assert sizes == [4, 2]
    assert_allclose(blocks, whole, rtol=1e-5, atol=1e-6)
    assert np.isfinite(blocks).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("size", [(8, 6), (7, 10), (2, 2), (1, 4)])
def test_stem_max_pool_equals_max_pool(dtype, size):
    """The separable bf16 max-pool gives exactly ATen's values, NaN and
    infinities included, for even and odd sizes and both layouts."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, *size).to(dtype)
    x[0, 0, 0, 0], x[1, 1, -1, -1], x[2, 2, 0, -1] = float("nan"), float("inf"), -1e4
    pool = StemMaxPool()
    for layout in (torch.contiguous_format, torch.channels_last):
        y = x.contiguous(memory_format=layout)
        with torch.inference_mode():
            torch.testing.assert_close(
                pool(y), torch.nn.functional.max_pool2d(y, 3, 2, 1), rtol=0, atol=0,
                equal_nan=True,
            )  # fmt: skip


def test_only_the_stem_max_pool_is_replaced():
    model = _model("resnet18")
    net = FeatureNet(model, [None], "avg")
    assert isinstance(net.body.get_submodule("maxpool"), StemMaxPool)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.MaxPool2d(3, 1, 1))
    gm = torch.fx.symbolic_trace(other.eval())
    fuse_pointwise(gm)
    assert [type(m) for m in gm.children()][1:] == [nn.MaxPool2d, nn.MaxPool2d]


@needs_onednn
def test_bf16_forms_failing_without_bf16_instructions_are_a_log_note(
    avx2_only_cpu, tiny_cnn, caplog
):
    """On a CPU with AVX2 only, fused bf16 forms fail their self-test; the
    estimators do not run bf16 there, so it is a debug note, not a warning
    (a float32 form failing still warns:
    test_a_misbehaving_operator_falls_back_with_one_warning)."""
    import logging

    net = FeatureNet(tiny_cnn, [None], "avg")
    x = torch.rand(2, 3, 16, 16)
    with (
        warnings.catch_warnings(),
        caplog.at_level(logging.DEBUG, logger=_fusion.__name__),
        torch.inference_mode(),
        torch.autocast("cpu", torch.bfloat16),
    ):
        warnings.simplefilter("error")
        net(x)
    assert "without bfloat16 instructions" in caplog.text
    assert any(key[0] == torch.bfloat16 for key in _fusion._BROKEN)
