"""int8 inference on the CPU: static post-training quantization of an
extractor's network through ONNX Runtime.

``fit`` with ``precision="int8"`` exports the float network up to its cut
points (batch norms folded, standard operators only) with ``torch.onnx``,
runs the preprocessed calibration images through the exported program in
torch (bf16 where the CPU has the kernels: the engine's speed) to find the
minimum and maximum of every value, and hands the model and these ranges to
ONNX Runtime's static quantizer: per-channel int8 weights, uint8
activations, in the QDQ format that ONNX Runtime runs with its int8 kernels
(VNNI and AMX on x86, the dot product instructions on ARM). The exporter
names the model's values after the program's nodes, which is how ranges
find their values; should one be missing, ONNX Runtime's own (float32,
several times slower) calibration runs instead. Pooling stays in float32,
in torch, as for every precision. The quantized model's bytes are the
fitted state: pickles and shared files carry them (no recalibration at
load), and their digest is the quantized network's identity in the cache
key and the memo.

Elementwise products, sigmoids, softmax and normalisations run in float32
between the int8 operators; a convolution or matrix product left in
float32 is reported in a warning. Why ONNX Runtime: ``docs/speed.md``
compares it with torchao's PT2E quantizer and OpenVINO with NNCF.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import nn

from sktransfer import _device
from sktransfer._common import require
from sktransfer._device import autocast
from sktransfer._engine import cpu_block
from sktransfer._identity import cpu_bf16, cpu_flags, digest
from sktransfer._memo import Memo
from sktransfer._runtime.layers import FeatureNet, PooledOutputs
from sktransfer.exceptions import (
    PerformanceWarning,
    PrecisionFallbackWarning,
    QuantizationError,
    warn,
)

__all__ = [
    "QuantizationError",
    "QuantizedNet",
    "calibrate",
    "calibration_rows",
    "fallback_precision",
    "fitted_network",
    "float_compute_ops",
    "int8_kernels",
    "network",
    "numerics",
    "quantize",
    "rates",
    "resolve_device",
    "unavailable",
    "unfit_for_calibration",
]

_WHAT = 'precision="int8"'
# (float network key, calibration digest) -> quantized model bytes
_QUANTIZED = Memo(size=512 * 2**20, weigh=lambda model: len(model))  # type: ignore[arg-type]
# (float network key, input shape) -> its ONNXProgram (export takes
# seconds; each calibration, e.g. each fold of a cross-validation, reuses it)
_EXPORTS = Memo(size=2)
# (model digest, outputs, pooling, threads) -> its QuantizedNet
_NETWORKS = Memo(size=8)
# (model digest, float dtype, threads) -> int8 and float images per second
_RATES = Memo(size=16)
_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_FOLDED_ACTIVATIONS = {"Relu", "Clip"}
# What is quantized: the convolutions and matrix products, and what joins
# them without arithmetic of its own worth a rounding (adds, pooling,
# concatenation; ReLU and clipping fold into the ranges). Elementwise
# products, sigmoids, softmax and normalisations stay float32: their inputs
# and outputs carry values that int8 rounds badly (squeeze-excitation
# gates, attention weights).
_QUANTIZED_OPS = [
    *("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat"),
    *("MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip"),
]


def _ort():
    return require("onnxruntime", "int8", _WHAT)


def int8_kernels() -> str | None:
    """The int8 dot-product instructions of this CPU that ONNX Runtime
    uses (``"amx"``, ``"vnni"``, ``"arm-dotprod"``), or None."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "amx"
    if {"avx512_vnni", "avx512vnni", "avx_vnni"} & flags:
        return "vnni"
    if "asimddp" in flags:  # Linux on ARM
        return "arm-dotprod"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "arm-dotprod"  # every Apple silicon CPU has it
    return None


def unavailable() -> str | None:
    """Why int8 cannot run fast here (None: it can). Raises ImportError,
    saying what to install, when ONNX Runtime is missing."""
    _ort()
    require("onnx", "int8", _WHAT)
    if int8_kernels() is None:
        return (
            "this CPU has no int8 dot-product instructions (AVX512-VNNI, "
            "AVX-VNNI, AMX or ARM's dot product), on which int8 would be "
            "slower than float"
        )
    return None


def numerics() -> str:
    """What produces int8 rows, as far as it changes their digits: the
    kernels and ONNX Runtime's version (see ``_identity.numerics``)."""
    return f"int8-cpu-{int8_kernels() or 'generic'}-onnxruntime{_ort().__version__}"


class _Outputs(nn.Module):
    """The body's outputs as a tuple, in ``keys`` order (what export takes)."""

    def __init__(self, body: nn.Module, keys: list):
        super().__init__()
        self.body = body
        self.keys = keys

    def forward(self, x):
        out = self.body(x)
        if not isinstance(out, dict):
            return (out,)
        return tuple(out[key] for key in self.keys)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and the quantizer's progress messages."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs through the root logger
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _export(net: FeatureNet, example: torch.Tensor):
    """The float network up to its cut points as an ``ONNXProgram``: its
    ONNX model, and the exported program it was translated from, whose node
    names are the model's value names."""
    require("onnxscript", "int8", _WHAT)
    module = _Outputs(net.plain_body(), net.keys).eval()
    # the batch dynamic; the height and width too where the network allows
    auto = torch.export.Dim.AUTO
    with _quiet(), torch.no_grad():
        return torch.onnx.export(
            module,
            (example[:2].float().contiguous(),),
            dynamo=True,
            dynamic_shapes=({0: auto, 2: auto, 3: auto},),
            external_data=False,
            optimize=True,
            verbose=False,
        )


class _Ranges(torch.fx.Interpreter):
    """Runs a graph module and keeps the minimum and maximum of the values
    whose names are in ``names``."""

    def __init__(self, module: torch.fx.GraphModule, names):
        super().__init__(module)
        self.names = names
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, node):
        out = super().run_node(node)
        if (
            node.name in self.names
            and isinstance(out, torch.Tensor)
            and out.is_floating_point()
            and out.numel()
        ):
            # (in memory order: 10x faster than over a channels_last layout)
            order = sorted(range(out.dim()), key=lambda d: -out.stride(d))
            low, high = (
                float(v) for v in torch.aminmax(out.permute(order).reshape(-1))
            )
            seen = self.ranges.get(node.name)
            if seen is not None:
                low, high = min(low, seen[0]), max(high, seen[1])
            self.ranges[node.name] = (low, high)
        return out


def _ranges(program, inputs: list, dtype: torch.dtype) -> dict:
    """The range of each value of the ONNX model over the calibration
    inputs, computed in torch (in ``dtype``, on cache-sized blocks: the
    engine's speed, several times ONNX Runtime's unoptimised float32
    calibration session)."""
    recorder = _Ranges(program.exported_program.module(), _ranged(program.model_proto))
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        for batch in inputs:
            block = cpu_block(*batch.shape[-2:])
            for part in batch.split(block):
                recorder.run(part.contiguous(memory_format=torch.channels_last))
    return recorder.ranges


def _ranged(proto) -> set:
    """The values whose ranges calibration records: all but those only an
    activation reads, which the quantizer folds into the operator before
    (a convolution's output before its ReLU)."""
    graph = proto.graph
    readers: dict = {}
    for node in graph.node:
        for value in node.input:
            readers.setdefault(value, set()).add(node.op_type)
    outputs = {value.name for value in graph.output}
    names = {value.name for value in graph.input}
    for node in graph.node:
        for value in node.output:
            folded = readers.get(value, set()) <= _FOLDED_ACTIVATIONS
            if value in outputs or value in readers and not folded:
                names.add(value)
    return names


def _activations(model: bytes) -> set:
    """The values a QDQ model quantizes, other than its weights."""
    onnx = require("onnx", "int8", _WHAT)
    graph = onnx.load_from_string(model).graph
    weights = {tensor.name for tensor in graph.initializer}
    return {
        node.input[0]
        for node in graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights
    }


def _quantize_static(proto, inputs: list, overrides: dict | None) -> bytes:
    """ONNX Runtime's static quantization of an ONNX model: per-channel
    int8 weights, uint8 activations in the ranges of ``overrides`` (or, for
    None, those of ONNX Runtime's own calibration on ``inputs``)."""
    quantization = require("onnxruntime.quantization", "int8", _WHAT)
    name = proto.graph.input[0].name
    extra = {} if overrides is None else {"TensorQuantOverrides": overrides}
    with tempfile.TemporaryDirectory() as folder, _quiet():
        source = os.path.join(folder, "float.onnx")
        target = os.path.join(folder, "int8.onnx")
        with open(source, "wb") as f:
            f.write(proto.SerializeToString())
        quantization.quantize_static(
            source,
            target,
            _Reader(name, inputs),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            op_types_to_quantize=_QUANTIZED_OPS,
            extra_options=extra,
        )
        with open(target, "rb") as f:
            return f.read()


class _Reader:
    """ONNX Runtime's calibration data reader over a list of batches."""

    def __init__(self, name: str, inputs: list):
        self.name = name
        self.inputs = iter(inputs)

    def get_next(self):
        batch = next(self.inputs, None)
        if batch is None:
            return None
        return {self.name: batch.float().contiguous().numpy()}


def quantize(net: FeatureNet, inputs: list, key=None, dtype=torch.float32) -> bytes:
    """The int8 model of ``net`` calibrated on ``inputs`` (preprocessed
    batches, as the network takes them), as ONNX bytes.

    The activation ranges are the minimum and maximum over ``inputs`` of
    each value, computed by the exported network in torch, in ``dtype``;
    ONNX Runtime's quantizer takes them as overrides (its own calibration
    pass then runs on one image only). Should a value that it quantizes
    have no range from torch, it calibrates on all ``inputs`` itself.

    ``key``: the float network's memo key; with it, the model is shared by
    every fit on the same calibration inputs (the clones of a grid search).
    Raises :class:`QuantizationError` where the network cannot be exported.
    """
    _ort()
    calibration = hashlib.blake2b(digest_size=16)
    calibration.update(str(dtype).encode())
    for batch in inputs:
        calibration.update(repr((tuple(batch.shape), batch.dtype)).encode())
        calibration.update(batch.float().contiguous().numpy().tobytes())
    memo_key = None if key is None else (key, calibration.hexdigest())
    model = _QUANTIZED.get(memo_key)
    if model is not None:
        return model
    # (exported for the size of the first images: the exported program
    # checks that later inputs are sizes it was made for)
    export_key = None if key is None else (key, tuple(inputs[0].shape[1:]))
    try:
        program = _EXPORTS.get(export_key)
        if program is None:
            program = _export(net, inputs[0])
            _EXPORTS.put(export_key, program)
    except Exception as exc:  # the exporter raises many kinds of errors
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise QuantizationError(
            f"torch.onnx could not export the network ({type(exc).__name__}: {message})"
        ) from exc
    try:
        ranges = _ranges(program, inputs, dtype)
    except Exception:  # an image size the exported program was not made for
        ranges = {}
    overrides = {
        name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
        for name, (low, high) in ranges.items()
    }
    model = None
    if ranges:
        model = _quantize_static(program.model_proto, [inputs[0][:1]], overrides)
    if model is None or not _activations(model) <= ranges.keys():
        # (a value without a range from torch: ONNX Runtime calibrates)
        model = _quantize_static(program.model_proto, inputs, None)
    _QUANTIZED.put(memo_key, model)
    return model


def float_compute_ops(model: bytes) -> list[str]:
    """The convolutions and matrix products of a quantized model that run
    in float32 (their input does not come from a DequantizeLinear)."""
    onnx = require("onnx", "int8", _WHAT)
    graph = onnx.load_from_string(model).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [
        f"{n.op_type} {n.name}"
        for n in graph.node
        if n.op_type in _COMPUTE_OPS and n.input[0] not in dequantized
    ]


class QuantizedNet(PooledOutputs, nn.Module):
    """An int8 model run by ONNX Runtime, pooled as the float network is.

    Takes the float32 batch the float network takes; returns the pooled
    float32 output of each layer. ONNX Runtime uses as many threads as torch
    (``torch.get_num_threads()``) when the network is built.
    """

    def __init__(self, model: bytes, keys, layers, pooling, nhwc, prefix):
        super().__init__()
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # (threads that wait spinning would take the cores from torch's
        # preprocessing between two runs)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.keys, self.layers = list(keys), list(layers)
        self.pooling, self.nhwc, self.prefix = pooling, nhwc, prefix

    def __deepcopy__(self, memo):
        return self  # inference only, never modified: copies share it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch = x.float().contiguous().numpy()
        outputs = self.session.run(None, {self.input_name: batch})
        return self.pool_outputs(
            dict(zip(self.keys, map(torch.from_numpy, outputs), strict=True))
        )


def rates(
    quantized: nn.Module, net: nn.Module, batch: torch.Tensor, dtype, key=None
) -> dict:
    """Images per second of the int8 and the float network (in ``dtype``)
    on (at most 8 of) ``batch``: the best of two runs after a warm-up.
    ``key`` (the quantized model's digest): measured once per model, dtype
    and thread count (clones that share the model share the measure)."""
    memo_key = None if key is None else (key, str(dtype), torch.get_num_threads())
    known = _RATES.get(memo_key)
    if known is not None:
        return known
    batch = batch[:8].contiguous(memory_format=torch.channels_last)
    found: dict[str, float] = {"images": len(batch)}
    with torch.inference_mode():
        for label, run in (("int8", quantized), ("float", net)):
            best = float("inf")
            with autocast(
                torch.device("cpu"), torch.float32 if run is quantized else dtype
            ):
                for i in range(3):
                    start = time.perf_counter()
                    run(batch)
                    if i:
                        best = min(best, time.perf_counter() - start)
            found[label] = len(batch) / best
    _RATES.put(memo_key, found)
    return found


def network(model: bytes, identity: str, keys, layers, pooling, nhwc, prefix):
    """The :class:`QuantizedNet` of ``model`` (whose digest is
    ``identity``), shared by the estimators that run it with as many
    threads."""
    threads = torch.get_num_threads()
    key = (identity, tuple(keys), tuple(layers), pooling, nhwc, prefix, threads)
    net = _NETWORKS.get(key)
    if net is None:
        net = QuantizedNet(model, keys, layers, pooling, nhwc, prefix)
        _NETWORKS.put(key, net)
    return net


def clear() -> None:
    """Forget the quantized models and their sessions."""
    _QUANTIZED.clear()
    _EXPORTS.clear()
    _NETWORKS.clear()
    _RATES.clear()


# -- the extractor's policy: when int8 runs, on what it calibrates ---------------


def fallback_precision() -> str:
    """What runs where int8 cannot: bfloat16 on CPUs with bf16 kernels,
    else float32."""
    return "bfloat16" if cpu_bf16() else "float32"


def _without_int8(reason: str) -> str:
    """Warn that int8 is not used, and why; return what runs instead."""
    fallback = fallback_precision()
    warn(
        f"precision='int8' is not used: {reason}. The network runs in "
        f"{fallback} instead (precision_={fallback!r}).",
        PrecisionFallbackWarning,
    )
    return fallback


def resolve_device(device) -> tuple[torch.device, str]:
    """The device of ``device="..."`` with ``precision="int8"`` (an engine of
    the CPU: ``"auto"`` is the CPU), and the precision that runs there:
    ``"int8"``, or the fallback, with a warning, where ONNX Runtime or the
    CPU's int8 instructions are missing."""
    resolved = _device.resolve_device("cpu" if device == "auto" else device)
    if resolved.type != "cpu":
        raise ValueError(
            f"precision='int8' runs on the CPU, but device={device!r}. "
            "Use device='cpu' (or 'auto'), or precision='auto' on a GPU."
        )
    reason = unavailable()  # (ImportError: what to install)
    return resolved, "int8" if reason is None else _without_int8(reason)


def calibration_rows(n: int, size: int, random_state) -> np.ndarray | None:
    """The rows calibrated on: all of them up to ``size`` (None), else a
    sample drawn with ``random_state`` (None: evenly spaced rows, so that
    fits on the same images agree)."""
    if n <= size:
        return None
    if random_state is None:
        return np.unique(np.linspace(0, n - 1, size).round().astype(np.int64))
    rng = check_random_state(random_state)
    return np.sort(rng.choice(n, size, replace=False))


def fitted_network(quantization: dict, layers, pooling) -> nn.Module:
    """The network of a fitted ``quantization_``."""
    return network(
        quantization["model"],
        quantization["digest"],
        quantization["keys"],
        layers,
        pooling,
        quantization["nhwc"],
        quantization["prefix"],
    )


#: Pixels of a calibration image that vary by at most this much (on the
#: [0, 1] scale) in every channel: an image of one flat colour.
FLAT_SPREAD = 2 / 255
#: Calibration images whose pixels span less than this part of the [0, 1]
#: scale, in every channel, leave the ranges too narrow for other images.
NARROWEST_SPAN = 0.25


def unfit_for_calibration(inputs: list, std) -> str | None:
    """Why the preprocessed calibration batches ``inputs`` cannot set the
    ranges of the network's values, or None.

    The int8 ranges are the extremes the calibration images reach; the
    values of other images are clipped to them. Images of one flat colour
    (all black, all one colour) reach no edge or texture, and images whose
    pixels span a sliver of the scale (dark or blank images) no brighter or
    darker pixel: the int8 rows of ordinary photos then come out tens of
    percent off float32's (figures in ``docs/speed.md``). One image, or a
    few alike, with the contrast of a photo, set ranges as many do.

    ``std``: the preprocessing's normalisation (None: none), which turns
    the inputs back to the [0, 1] scale of the pixels.
    """
    scale = torch.tensor((1.0,) if std is None else tuple(std)).view(1, -1)
    flat = 0
    low = high = None
    for batch in inputs:
        batch = batch.float()
        lows, highs = batch.amin(dim=(2, 3)), batch.amax(dim=(2, 3))  # (n, C)
        flat += int((((highs - lows) * scale).amax(dim=1) <= FLAT_SPREAD).sum())
        low = lows.amin(dim=0) if low is None else torch.minimum(low, lows.amin(0))
        high = highs.amax(dim=0) if high is None else torch.maximum(high, highs.amax(0))
    n = sum(len(batch) for batch in inputs)
    fix = (
        "Calibrate on images like those to be transformed (calibration_size "
        "of them are drawn from the images given to fit), or use "
        f"precision={fallback_precision()!r}"
    )
    what = "calibration image" if n == 1 else f"{n} calibration images"
    if flat == n:
        return (
            f"the {what} {'is' if n == 1 else 'are each'} of one flat "
            "colour (e.g. all black), which sets no range for the edges and "
            "textures of other images: their int8 rows would be tens of percent "
            f"off. {fix}"
        )
    span = float(((high - low) * scale).amax()) if low is not None else 0.0
    if span < NARROWEST_SPAN:
        return (
            f"the pixels of the {what} span {span:.0%} of the 0..1 "
            "scale at most (dark, blank or faded images), which leaves the ranges too "
            "narrow for other images: their int8 rows would be tens of percent "
            f"off. {fix}"
        )
    return None


def calibrate(
    net: FeatureNet, inputs: list, key, pooling, std=None
) -> tuple[dict | None, nn.Module]:
    """Quantize ``net`` on the preprocessed calibration batches ``inputs``:
    ``(quantization_, network)``, or ``(None, net)`` with a warning where it
    cannot be (``precision_`` is then :func:`fallback_precision`): the
    network cannot be exported, or the calibration images cannot set its
    ranges (:func:`unfit_for_calibration`; ``std`` is the preprocessing's).

    Never a silent slowdown: convolutions left in float32, and a quantized
    network slower than its float fallback (many small depthwise
    convolutions and float gates between them), are warned of.
    """
    unfit = unfit_for_calibration(inputs, std)
    if unfit is not None:
        _without_int8(unfit)
        return None, net
    # ranges computed at the engine's fastest: in bf16 where it has kernels
    # (the ranges move by far less than an int8 step)
    fastest = _device.PRECISIONS[fallback_precision()]
    try:
        model = quantize(net, inputs, key, fastest)
    except QuantizationError as exc:
        _without_int8(str(exc))
        return None, net
    left = float_compute_ops(model)
    if left:
        shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
        warn(
            f"{len(left)} convolutions or matrix products of this network "
            f"stay in float32 under precision='int8' ({shown}): ONNX "
            "Runtime does not quantize them here, so they run at float32 "
            "speed between the int8 ones.",
            PerformanceWarning,
        )
    quantization = {
        "model": model,
        "digest": digest(model),
        "keys": list(net.keys),
        "nhwc": bool(net.nhwc),
        "prefix": net.prefix,
        "calibration_images": int(sum(len(b) for b in inputs)),
        "float_ops": left,
    }
    quantized = fitted_network(quantization, net.layers, pooling)
    measured = rates(quantized, net, inputs[0], fastest, quantization["digest"])
    if measured["int8"] < 0.9 * measured["float"]:
        name = fallback_precision()
        warn(
            f"precision='int8' runs this network slower here than "
            f"precision={name!r} would ({measured['int8']:.0f} against "
            f"{measured['float']:.0f} images/s, measured on {measured['images']} "
            f"calibration images). Use precision={name!r} for speed.",
            PerformanceWarning,
        )
    return quantization, quantized
