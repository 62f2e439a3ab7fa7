"""Cut points, truncation and pooling.

A cut point is a node name of the backbone's traced graph (torchvision's
``get_graph_node_names``), or the name of a module, which stands for the last
node inside it (``"layer3"``). ``None`` is the backbone's output: the model's
standard embedding, since the classification head has been removed.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from sktransfer._common import did_you_mean
from sktransfer._runtime.fusion import fuse_pointwise
from sktransfer._sources import check_model, load_backbone
from sktransfer.exceptions import LayerError

__all__ = [
    "POOLINGS",
    "CutNet",
    "FeatureNet",
    "LayerError",
    "is_valid",
    "list_layers",
    "node_names",
    "resolve_layers",
]

POOLINGS = ("avg", "max", "avgmax", "cls", "clsavg", "flatten")


def tracer_kwargs(module: nn.Module) -> dict:
    """How torch.fx traces ``module``: for a network built from timm's
    classes, timm's own leaf modules and functions (the parts that torch.fx
    cannot trace through, registered by timm); else torch.fx's defaults."""
    timm_models = sys.modules.get("timm.models")  # (imported if it was used)
    if timm_models is None or not any(
        type(sub).__module__.startswith("timm.") for sub in module.modules()
    ):
        return {}
    return {
        "leaf_modules": timm_models.get_notrace_modules(),
        "autowrap_functions": timm_models.get_notrace_functions(),
    }


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with further leaf modules: ``leaf_modules`` and
    modules with hooks of their own (so that their hooks run)."""

    def __init__(self, leaf_modules=(), autowrap_functions=()):
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        hooked = bool(m._forward_hooks or m._forward_pre_hooks)
        return (
            hooked
            or isinstance(m, self.leaves)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _trace(module: nn.Module) -> fx.GraphModule:
    """``module``'s graph. A graph module (a network cut by torchvision's
    feature extraction, which keeps the blocks of ``torchvision.ops`` such
    as ``Conv2dNormActivation`` whole) is traced again through them, so
    that their batch norms fold and their convolutions fuse; it is kept as
    it is where that fails."""
    try:
        graph = _Tracer(**tracer_kwargs(module)).trace(module)
    except Exception:  # torch.fx raises many kinds of errors
        if isinstance(module, fx.GraphModule):
            return module
        raise
    return fx.GraphModule(module, graph)


def _feature_extractor(module: nn.Module, nodes) -> fx.GraphModule:
    return create_feature_extractor(
        module, return_nodes={n: n for n in nodes}, tracer_kwargs=tracer_kwargs(module)
    )


def prefix_tokens(module: nn.Module) -> int | None:
    """How many tokens precede the patch tokens in the model's token
    sequences (class and register tokens): timm's ``num_prefix_tokens``, 1
    for torchvision's ViT; None where unknown (a module of the user's)."""
    count = getattr(module, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if isinstance(getattr(module, "class_token", None), torch.Tensor):
        return 1
    return None


def node_names(module: nn.Module, head: str | None = None) -> list[str]:
    """Node names of the eval-mode graph, without the input and the head."""
    graph = get_graph_node_names(
        module, tracer_kwargs=tracer_kwargs(module), suppress_diff_warning=True
    )
    names = graph[1][1:]  # [0] is the input placeholder
    if head is not None:
        names = [n for n in names if n != head and not n.startswith(head + ".")]
    return names


def is_valid(name: str, names: list[str]) -> bool:
    prefix = name + "."
    return name in names or any(n.startswith(prefix) for n in names)


def resolve_layers(layer, names, model_label: str) -> list[str | None]:
    """Check the ``layer`` parameter and return it as a list.

    ``names`` (the graph's node names) may be None when no layer is named.
    """
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not layers:
        raise LayerError(
            "The 'layer' parameter must not be an empty list. Use None for the "
            "model's standard embedding."
        )
    seen = set()
    for name in layers:
        if name is not None and not isinstance(name, str):
            raise TypeError(
                "The 'layer' parameter must be None, a layer name or a list of "
                f"them. Got {name!r} of type {type(name).__name__}."
            )
        if name in seen:
            raise LayerError(f"The 'layer' parameter names {name!r} twice.")
        seen.add(name)
        if name is not None and not is_valid(name, names):
            modules = sorted({n.split(".")[0] for n in names})
            hint = did_you_mean(name, names + modules)
            raise LayerError(
                f"The 'layer' parameter must name a node of the model's graph. Got "
                f"{name!r}.{hint} See sktransfer.list_layers({model_label}) for the "
                f"cut points ({len(names)} nodes in all with which='all')."
            )
    return layers


def pool(
    t: torch.Tensor, how: str | None, nhwc: bool = False, prefix: int | None = None
) -> torch.Tensor:
    """Reduce one layer's output to a ``(n, d)`` matrix.

    Token sequences ``(n, tokens, dim)`` start with ``prefix`` class and
    register tokens: ``"avg"``, ``"max"`` and ``"avgmax"`` pool the patch
    tokens after them, ``"cls"`` takes the first, ``"clsavg"`` concatenates
    both (the DINOv2 linear probe's features). ``prefix=None`` (unknown):
    the first token is taken as the class token and all are pooled.
    """
    if t.ndim == 2:
        return t
    if how in ("cls", "clsavg"):
        if t.ndim != 3:
            raise ValueError(
                f"pooling={how!r} takes the class token of a token sequence "
                f"(n, tokens, dim); this layer gives shape {tuple(t.shape)}. Use "
                "'avg', 'max', 'avgmax' or 'flatten'."
            )
        if prefix == 0:
            raise ValueError(
                f"pooling={how!r} takes the class token, but this model has none "
                "(its tokens are all patch tokens). Use 'avg', 'max' or 'avgmax'."
            )
        if how == "cls":
            return t[:, 0]
        return torch.cat([t[:, 0], t[:, (prefix or 1) :].mean(1)], dim=1)
    if how in (None, "flatten"):
        if nhwc and t.ndim == 4:
            t = t.permute(0, 3, 1, 2)
        return t.flatten(1)
    dims: tuple[int, ...]
    if t.ndim == 4:
        if nhwc:
            t = t.permute(0, 3, 1, 2)
        dims = (2, 3)
    elif t.ndim == 3:  # tokens: (n, tokens, dim)
        t = t[:, prefix or 0 :]
        dims = (1,)
    else:
        return t.flatten(1)
    if how == "avg":
        return t.mean(dims)
    if how == "max":
        return t.amax(dims)
    return torch.cat([t.mean(dims), t.amax(dims)], dim=1)  # avgmax


def _skip_no_ops(gm: fx.GraphModule) -> None:
    """Take the calls of hook-less ``nn.Identity`` and dropout modules (no-ops
    in eval mode) out of the traced graph, in place."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        module = gm.get_submodule(node.target)
        hooked = module._forward_hooks or module._forward_pre_hooks
        if isinstance(module, (nn.Identity, nn.Dropout)) and not hooked:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()


def _inference_graph(module: nn.Module, pointwise: bool = True) -> nn.Module:
    """A copy of an eval-mode ``module`` made for inference, or ``module``
    itself if it cannot be traced. ``module`` is not changed.

    Modules that compute nothing in eval mode (``nn.Identity``, dropout:
    timm puts them between a convolution and its activation) are taken out
    of the graph; each batch norm that follows a convolution is folded into
    it (one layer fewer to run); then, with ``pointwise``, each convolution
    is fused with the activation and residual add that follow it
    (``_fusion``: faster on the CPU, no change elsewhere; figures in
    ``benchmarks/RESULTS.md``).
    """
    # (A deep copy of a traced module comes back in train mode: eval() again.)
    copied = copy.deepcopy(module).eval()
    try:
        traced = _trace(copied)
        _skip_no_ops(traced)
        graph = fuse(traced, inplace=True, no_trace=True)
    except Exception:  # torch.fx raises many kinds of errors on untraceable code
        return module
    if pointwise and isinstance(graph, fx.GraphModule):
        fuse_pointwise(graph)
    return graph


class PooledOutputs:
    """What a network made for the extractor does with its body's output:
    pools each layer's output (``keys``: the body's output names of
    ``layers``), with ``pooling``, ``nhwc`` and ``prefix``."""

    keys: list
    layers: list
    pooling: str | None
    nhwc: bool
    prefix: int | None

    def pool_outputs(self, out) -> list[torch.Tensor]:
        """The pooled ``(n, d)`` output of each layer, from the body's output
        (a tensor for the plain embedding, else a dict keyed by node)."""
        if not isinstance(out, dict):  # the plain embedding
            out = {None: out}
        feats = []
        for key, name in zip(self.keys, self.layers, strict=True):
            value = out[key]
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"The layer {name!r} outputs a {type(value).__name__}, not a "
                    "tensor; choose another cut point."
                )
            # pool in float32: low-precision sums over many positions drift
            feats.append(pool(value.float(), self.pooling, self.nhwc, self.prefix))
        return feats


class FeatureNet(PooledOutputs, nn.Module):
    """A backbone cut at ``layers``, returning each layer's pooled output.

    ``backbone`` keeps the original weights (what pickles store); ``body``
    runs: the backbone, cut by ``create_feature_extractor`` where needed, with
    batch norms folded into the preceding convolutions and convolutions fused
    with their activations and residual adds.
    """

    def __init__(self, backbone, layers, pooling, nhwc=False, names=None):
        super().__init__()
        self.backbone = backbone  # the whole (head-less) backbone, shared weights
        self.layers = list(layers)
        self.pooling = pooling
        self.nhwc = nhwc
        self.prefix = prefix_tokens(backbone)
        if self.layers == [None]:  # the plain embedding: no tracing needed
            self.body = None
            self.keys = [None]
        else:
            output = (names or node_names(backbone))[-1]
            self.keys = [output if name is None else name for name in self.layers]
            self.body = _feature_extractor(backbone, dict.fromkeys(self.keys))
        self.eval()  # folding needs eval mode
        self.body = _inference_graph(self.body if self.body is not None else backbone)
        self.eval()  # inference only: dropout off (the folded copy starts in train)

    def plain_body(self) -> nn.Module:
        """A copy of what ``body`` computes, batch norms folded but nothing
        fused: standard operators only, for export (``_int8``)."""
        body = self.backbone
        if self.layers != [None]:
            body = _feature_extractor(self.backbone, dict.fromkeys(self.keys))
        return _inference_graph(body.eval(), pointwise=False).eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pool_outputs(self.body(x))


class CutNet(PooledOutputs, nn.Module):
    """A backbone cut at one layer, returning that layer's pooled output:
    the kept part of a network that trains (nothing folded or fused).

    ``body`` is torchvision's feature extractor of ``backbone`` at
    ``layer``: the modules up to the cut, the backbone's own objects (what
    runs after the cut is not kept). ``backbone`` is not kept either, so the
    state dict holds the kept modules only.
    """

    def __init__(self, backbone, layer, pooling, nhwc=False):
        super().__init__()
        self.body = _feature_extractor(backbone, [layer])
        self.layers = [layer]
        self.keys = [layer]
        self.pooling = pooling
        self.nhwc = nhwc
        self.prefix = prefix_tokens(backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_outputs(self.body(x))[0]


def list_layers(model, *, which="stages", input_size=None) -> dict[str, tuple]:
    """List the cut points of a model, with their output shapes.

    Parameters
    ----------
    model : str or torch.nn.Module
        A torchvision model name (``"resnet50"``) or a module.
    which : {"stages", "all"}, default="stages"
        ``"stages"``: the coarse blocks at whose boundaries networks are
        usually cut (``layer1`` .. ``layer4`` of a ResNet, the encoder blocks
        of a ViT). ``"all"``: every node of the traced graph.
    input_size : int, default=None
        Side of the square input used to compute the shapes; ``None`` takes
        the crop size of the model's default weights (224 for most models).

    Returns
    -------
    layers : dict of str to tuple
        Layer names, in execution order, mapped to the shape of their output
        for one image (``(C, H, W)`` for feature maps, ``(tokens, dim)`` for
        transformer blocks). Any of the names is a valid ``layer`` of
        :class:`~sktransfer.PretrainedFeatureExtractor`; ``layer=None`` is the
        model's standard embedding.

    Examples
    --------
    >>> from sktransfer import list_layers
    >>> list_layers("resnet18")
    {'layer1': (64, 56, 56), 'layer2': (128, 28, 28), 'layer3': (256, 14, 14), 'layer4': (512, 7, 7)}
    """  # noqa: E501
    if which not in ("stages", "all"):
        raise ValueError(f"'which' must be 'stages' or 'all'. Got {which!r}.")
    if isinstance(model, str):
        check_model(model)
        backbone = load_backbone(model, None)
    else:
        backbone = load_backbone(model, "DEFAULT")
    module, head = backbone.module, backbone.head
    names = node_names(module, head)
    if which == "stages":
        wanted = [
            n
            for n in backbone.family.stages(module)
            if is_valid(n, names) and n != head
        ]
    else:
        wanted = names
    size = input_size or backbone.preprocessing.crop_size or 224
    # load_backbone returned a private copy: tracing it touches nothing of yours
    extractor = _feature_extractor(module, wanted).eval()
    with torch.inference_mode():
        out = extractor(torch.zeros(1, 3, size, size))
    return {
        name: tuple(out[name].shape[1:])
        for name in wanted
        if isinstance(out[name], torch.Tensor)
    }
