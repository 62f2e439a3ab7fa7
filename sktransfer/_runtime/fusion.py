"""Convolutions fused with what follows them, for inference on the CPU.

After batch-norm folding, a CNN is mostly ``conv -> [+ residual] -> [act]``.
In eager PyTorch each of the three is a pass over a large activation tensor,
and on a CPU the element-wise passes cost a good part of the time (see
``docs/speed.md``). oneDNN, the CPU convolution library PyTorch ships, can apply the
add and the activation while the convolution's output is still in cache: one
pass instead of three. ``torch.compile`` does exactly this on CPU (through the
same ``torch.ops.mkldnn._convolution_pointwise`` operator); this graph pass
gets it without compilation, so every transform has it.

:func:`fuse_pointwise` rewrites a traced (``torch.fx``) module in place:
each ``Conv2d`` (without hooks of its own) whose only use is an activation,
or a residual add (itself followed by an activation or not), becomes one
:class:`ConvPointwise` under the convolution's name. The module computes the
same function on any device and precision; only on the CPU, without autograd
and in float32 or bfloat16 (autocast's dtype when autocast is on, as
autocast would run the convolution) does it call the fused oneDNN operator.

That operator is internal to PyTorch and may change between releases, so it
fails safe: each form used (with or without the add, each activation, each
dtype) is checked against eager PyTorch once per process, at first use; a
form that disagrees, or that raises at any call, runs unfused from then on,
after one ``RuntimeWarning`` (a bf16 form on a CPU without bf16
instructions, where the estimators do not run bf16: a debug-level log
note instead). Setting the environment variable
``SKTRANSFER_CPU_FUSION=0`` turns the fusion off altogether (no rewriting,
and modules already rewritten run unfused).
"""

from __future__ import annotations

import functools
import logging
import operator
import os

import torch
import torch.nn.functional as F
from torch import fx, nn

from sktransfer._device import dtype_name
from sktransfer._identity import cpu_bf16
from sktransfer.exceptions import FusionWarning, warn

__all__ = ["FUSION_ENV", "ConvPointwise", "StemMaxPool", "enabled", "fuse_pointwise"]

# oneDNN's name of each activation and its scalars (torch.compile's mapping).
_ACTIVATIONS: dict[type, tuple[str, tuple]] = {
    nn.ReLU: ("relu", ()),
    nn.ReLU6: ("hardtanh", (0.0, 6.0)),
    nn.SiLU: ("swish", ()),
    nn.Hardswish: ("hardswish", ()),
    nn.Sigmoid: ("sigmoid", ()),
}
_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.silu: "swish"}
_METHODS = {"relu": "relu", "relu_": "relu"}
_ADDS = {operator.add, operator.iadd, torch.add}
_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _generic(name: str, scalars: tuple):
    """The eager function of a oneDNN activation name."""
    if name == "relu":
        return F.relu
    if name == "hardtanh":
        return lambda x: F.hardtanh(x, *scalars)
    if name == "swish":
        return F.silu
    if name == "hardswish":
        return F.hardswish
    return torch.sigmoid


#: Set to ``0`` to run every convolution unfused (the eager computation).
FUSION_ENV = "SKTRANSFER_CPU_FUSION"


def enabled() -> bool:
    """Whether CPU fusion is on: unless ``SKTRANSFER_CPU_FUSION=0``
    (read at every use, so it can be changed while a program runs)."""
    return os.environ.get(FUSION_ENV, "1").strip().lower() not in {
        "0",
        "false",
        "no",
        "off",
    }


_LOG = logging.getLogger(__name__)
_BROKEN: set = set()  # (dtype, activation, residual) of the forms that failed


def _form(dtype: torch.dtype, activation, residual: bool) -> str:
    act = activation[0] if activation else "none"
    return f"conv{' + add' if residual else ''} + {act} in {dtype_name(dtype)}"


def _give_up(dtype: torch.dtype, activation, residual: bool, why: str) -> None:
    """Record that a form does not work here, with one warning per form."""
    key = (dtype, activation, residual)
    if key in _BROKEN:
        return
    _BROKEN.add(key)
    if dtype != torch.float32 and not cpu_bf16():
        # A CPU without bf16 instructions emulates bf16 (the estimators
        # run float32 there instead, saying so): nothing the user asked for
        # is affected, so a note in the log, not a warning.
        _LOG.debug(
            "oneDNN's fused convolution (%s) %s on this CPU without bfloat16 "
            "instructions; those convolutions run unfused.",
            _form(dtype, activation, residual),
            why,
        )
        return
    warn(
        f"oneDNN's fused convolution ({_form(dtype, activation, residual)}) "
        f"{why} with torch {torch.__version__}; those convolutions run unfused "
        "(the same results, somewhat slower on the CPU). Set the environment "
        f"variable {FUSION_ENV}=0 to turn the fusion off altogether.",
        FusionWarning,
    )


@functools.cache
def _self_test(dtype: torch.dtype, activation, residual: bool) -> bool:
    """Whether the fused operator exists here and computes this form as eager
    PyTorch does, on a small channels_last convolution whose weight was
    packed for another input size (as blocks of other sizes use it)."""
    try:
        conv = torch.ops.mkldnn._convolution_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b, other = (
            torch.randn(shape, generator=gen).to(dtype)
            for shape in ((2, 16, 6, 6), (8, 16, 3, 3), (8,), (2, 8, 3, 3))
        )
        x = x.contiguous(memory_format=torch.channels_last)
        other = other.contiguous(memory_format=torch.channels_last)
        geometry = ([1, 1], [2, 2], [1, 1], 1)  # padding, stride, dilation, groups
        name, scalars = activation or ("none", ())
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w, *geometry, [1, 16, 12, 12]
            )
            if residual:
                fused = conv.binary(
                    x, other, packed, b, *geometry, "add", 1.0,
                    None if name == "none" else name, list(scalars), "",
                )  # fmt: skip
            else:
                fused = conv(x, packed, b, *geometry, name, list(scalars), "")
            eager = F.conv2d(x.float(), w.float(), b.float(), 2, 1)
            if residual:
                eager = eager + other.float()
            if activation is not None:
                eager = _generic(name, scalars)(eager)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        scale = float(eager.abs().max())
        return fused.dtype == dtype and bool(
            torch.allclose(fused.float(), eager, rtol=tol, atol=tol * scale)
        )
    except Exception:  # missing, or another signature in another version
        return False


def form_works(dtype: torch.dtype, activation, residual: bool) -> bool:
    """Whether this form of the fused call may be used (self-tested at first
    use, once per process; a form that failed is never used again)."""
    key = (dtype, activation, residual)
    if key in _BROKEN:
        return False
    if not _self_test(dtype, activation, residual):
        _give_up(dtype, activation, residual, "does not agree with eager PyTorch")
        return False
    return True


def operator_works() -> bool:
    """Whether the fused operator works here in its most common form
    (``relu(conv(x) + other)`` in float32)."""
    return form_works(torch.float32, ("relu", ()), True)


class ConvPointwise(nn.Module):
    """``act(conv(x) [+ other])`` in one oneDNN call on the CPU.

    Parameters
    ----------
    conv : nn.Conv2d
        The convolution (zero padding given as numbers); its weight and bias
        are shared, not copied.
    activation : tuple of (str, tuple) or None
        oneDNN's name of the activation and its scalars.
    residual : bool
        Whether ``forward`` takes a second tensor to add before the
        activation.
    """

    def __init__(self, conv: nn.Conv2d, activation, residual: bool):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = list(conv.stride)
        self.padding = [int(p) for p in conv.padding]  # zeros: numbers
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.activation = activation
        self.residual = residual
        self._packed: dict = {}  # (dtype, weight address) -> (weight, bias, batch)

    def extra_repr(self) -> str:
        act = self.activation[0] if self.activation else "none"
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
            f"stride={tuple(self.stride)}, activation={act}, "
            f"residual={self.residual}"
        )

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype of the fused call, or None where it does not apply."""
        if (
            torch.compiler.is_compiling()  # torch.compile fuses in its own way
            or x.device.type != "cpu"
            or self.weight.device.type != "cpu"
            or torch.is_grad_enabled()
            or not enabled()
        ):
            return None
        dtype = (
            torch.get_autocast_dtype("cpu")
            if torch.is_autocast_enabled("cpu")
            else x.dtype
        )
        if dtype not in _FUSED_DTYPES:
            return None
        return dtype if form_works(dtype, self.activation, self.residual) else None

    def _parameters_in(self, dtype: torch.dtype, x: torch.Tensor):
        """The weight in ``dtype``, packed in oneDNN's blocked layout, and
        the bias in ``dtype``: made once, not at every call as autocast does.

        The layout is chosen for the largest batch seen so far, and redone
        when a larger one comes: a weight packed for the one-image probe of
        ``fit`` serves blocks of 16 images correctly but slowly.
        """
        address = self.weight.data_ptr()
        key = (dtype, address)
        packed = self._packed.get(key)
        if packed is None or len(x) > packed[2]:
            # (one entry per dtype: clones may differ; none for stale weights)
            self._packed = {k: v for k, v in self._packed.items() if k[1] == address}
            weight = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach().to(dtype),
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                list(x.shape),
            )
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            packed = self._packed[key] = (weight, bias, len(x))
        return packed[0], packed[1]

    def __getstate__(self):  # oneDNN's tensors neither copy nor pickle
        return {**self.__dict__, "_packed": {}}

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None):
        dtype = self._compute_dtype(x)
        if dtype is not None:
            try:
                return self._fused(x.to(dtype), other, dtype)
            except RuntimeError as exc:  # a shape the self-test did not cover
                _give_up(dtype, self.activation, self.residual, f"failed ({exc})")
        y = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation,
            self.groups,
        )  # fmt: skip
        if other is not None:
            y = y + other
        if self.activation is not None:
            y = _generic(*self.activation)(y)
        return y

    def _fused(self, x, other, dtype):
        weight, bias = self._parameters_in(dtype, x)
        name, scalars = self.activation or ("none", ())
        conv = torch.ops.mkldnn._convolution_pointwise
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        if other is None:
            return conv(x, weight, bias, *geometry, name, list(scalars), "")
        return conv.binary(
            x, other.to(dtype), weight, bias, *geometry, "add", 1.0,
            None if name == "none" else name, list(scalars), "",
        )  # fmt: skip


class StemMaxPool(nn.Module):
    """``nn.MaxPool2d(3, stride=2, padding=1)``, the ResNet stem's, faster on
    the CPU in reduced precision.

    There (bf16/fp16, even height and width, no autograd) it is computed as
    two separable passes of element-wise maxima over strided views: the same
    values (a maximum is exact), faster than ATen's pooling kernel there
    (``benchmarks/RESULTS.md``). Elsewhere,
    and in float32 where ATen's kernel is the faster, it is that kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype not in (torch.bfloat16, torch.float16)
            or x.ndim != 4
            or x.shape[-1] % 2
            or x.shape[-2] % 2
            or torch.is_grad_enabled()
        ):
            return F.max_pool2d(x, 3, 2, 1)
        # output row i is the maximum of input rows 2i-1, 2i and 2i+1 (row -1
        # is padding); the same along columns
        rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
        rows[:, :, 1:] = torch.maximum(rows[:, :, 1:], x[:, :, 1:-1:2])
        out = torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])
        out[:, :, :, 1:] = torch.maximum(out[:, :, :, 1:], rows[:, :, :, 1:-1:2])
        return out


def _is_stem_pool(module: nn.Module) -> bool:
    return (
        type(module) is nn.MaxPool2d
        and not _hooked(module)
        and not module.return_indices
        and not module.ceil_mode
        and all(
            _pair(value) == expected
            for value, expected in (
                (module.kernel_size, (3, 3)),
                (module.stride, (2, 2)),
                (module.padding, (1, 1)),
                (module.dilation, (1, 1)),
            )
        )
    )


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _activation(gm: fx.GraphModule, node: fx.Node):
    """oneDNN's (name, scalars) for an activation node, else None."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if _hooked(module):
            return None
        if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
            return ("hardtanh", (float(module.min_val), float(module.max_val)))
        return _ACTIVATIONS.get(type(module))
    if (
        node.op == "call_function"
        and node.target in _FUNCTIONS
        and len(node.args) == 1
        and set(node.kwargs) <= {"inplace"}
    ):
        return (_FUNCTIONS[node.target], ())
    if node.op == "call_method" and node.target in _METHODS and len(node.args) == 1:
        return (_METHODS[node.target], ())
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _residual(node: fx.Node, conv: fx.Node) -> fx.Node | None:
    """The other operand if ``node`` is ``conv + other``, else None."""
    if node.op != "call_function" or node.target not in _ADDS or node.kwargs:
        return None
    if len(node.args) != 2 or conv not in node.args or node.args[0] is node.args[1]:
        return None
    other = node.args[1] if node.args[0] is conv else node.args[0]
    return other if isinstance(other, fx.Node) else None


def _hooked(module: nn.Module) -> bool:
    """Whether a module has hooks of its own (which a fusion would skip)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and not _hooked(conv)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def fuse_pointwise(gm: fx.GraphModule) -> int:
    """Fuse each convolution of ``gm`` with its activation and residual add.

    Rewrites ``gm`` in place (call it on a copy); returns how many modules
    were replaced (the ResNet stem's max-pool becomes a :class:`StemMaxPool`).
    The other operand of an add must be computed before the convolution
    runs, which a traced graph's order guarantees.
    """
    if not enabled():
        return 0
    graph = gm.graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(graph.nodes):
        if node.op == "call_module" and _is_stem_pool(gm.get_submodule(node.target)):
            gm.add_submodule(node.target, StemMaxPool())
            fused += 1
            continue
        if node.op != "call_module" or calls[node.target] != 1:
            continue  # (a module called twice cannot take one call's fusion)
        if not _fusable(gm.get_submodule(node.target)):
            continue
        chain, other, activation = [node], None, None
        user = _only_user(node)
        if user is not None and (activation := _activation(gm, user)) is not None:
            chain.append(user)
        elif user is not None and (other := _residual(user, node)) is not None:
            chain.append(user)
            after = _only_user(user)
            if after is not None and (activation := _activation(gm, after)):
                # oneDNN adds only some activations after an add (ReLU, in
                # the torch releases tested): others stay separate modules.
                if _self_test(torch.float32, activation, True):
                    chain.append(after)
                else:
                    activation = None
        if len(chain) == 1:
            continue
        conv = gm.get_submodule(node.target)
        assert isinstance(conv, nn.Conv2d)  # (checked by _fusable)
        gm.add_submodule(
            node.target, ConvPointwise(conv, activation, other is not None)
        )
        with graph.inserting_after(chain[-1]):
            args = (node.args[0],) if other is None else (node.args[0], other)
            replacement = graph.call_module(node.target, args)
        chain[-1].replace_all_uses_with(replacement)
        for dead in reversed(chain):  # each one's only user is the next
            graph.erase_node(dead)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused
