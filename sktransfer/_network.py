"""Building an extractor's truncated network, and sharing it between clones.

``GridSearchCV`` fits dozens of clones of one extractor; loading and tracing
the same network for each (a noticeable fraction of a second per clone)
would cost more than the cached embeddings save. Networks are inference-only
(eval mode, never trained or modified), so clones share them through small
process-wide memos, keyed by an identity of the weights that is cheap to
compute without loading them.

What the memos hold is bounded and explicit: the last few backbones and
networks, on the CPU. A network on another device (a GPU) is a copy of the
CPU one, held weakly: it lives as long as an estimator uses it, and its
device memory is freed when the last one is gone. ``sktransfer.clear_caches``
empties them all.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from sktransfer import _device, _engine
from sktransfer._identity import module_digest
from sktransfer._memo import Memo
from sktransfer._runtime import layers as _layers
from sktransfer._sources import Backbone, load_backbone, weights_identity

__all__ = ["Built", "build", "output_widths", "rebuild"]

_BACKBONES = Memo(size=4)  # memo id -> CPU backbone, its digest, its node names
_NETWORKS = Memo(size=8)  # (memo id, layers, pooling) -> CPU network
_WIDTHS = Memo(size=64)
# (network key, device) -> that network's copy on a device other than the CPU
_ON_DEVICE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@dataclass
class Built:
    """A network ready to run, and what the extractor records of it."""

    backbone: Backbone
    layers: list  # the requested cut points
    computed: list  # every cut point the network outputs, in order
    net: nn.Module
    identity: str  # digest of what the backbone computes (code, settings, tensors)
    key: tuple | None  # memo key of ``net`` (None: not shared)


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_identified(model, weights, seed, memo_id) -> tuple[Backbone, str | None]:
    """Load the backbone whose identity (:func:`weights_identity`) was
    ``memo_id``; return it and the identity under which what was loaded may
    be shared: None where a file was replaced between the identification and
    the loading. (Only names and paths bring files; a module is what it is.)"""
    backbone = load_backbone(model, weights, seed)
    if (
        isinstance(model, str)
        and memo_id is not None
        and weights_identity(model, weights, seed) != memo_id
    ):
        memo_id = None
    return backbone, memo_id


def build(model, weights, seed, device, layer, taps, pooling, model_label) -> Built:
    """Load (or reuse) the backbone and cut it at ``layer`` plus ``taps``.

    ``taps`` are further cut points to compute in the same pass (for the
    cache): None, ``"stages"``, or a list.
    """
    memo_id = weights_identity(model, weights, seed)
    loaded = _BACKBONES.get(memo_id)
    if loaded is None:
        backbone, memo_id = load_identified(model, weights, seed, memo_id)
        loaded = {"backbone": backbone, "digest": module_digest(backbone.module)}
        _BACKBONES.put(memo_id, loaded)
    backbone = loaded["backbone"]
    names = None
    if taps or any(name is not None for name in _listed(layer)):
        # Tracing is needed only to check named cut points: a module that
        # torch.fx cannot trace still works with layer=None.
        if "names" not in loaded:
            try:
                loaded["names"] = _layers.node_names(backbone.module, backbone.head)
            except Exception as exc:  # torch.fx raises many kinds of errors
                raise ValueError(
                    f"Cannot cut {model_label} at a named layer: torch.fx could not "
                    f"trace it ({type(exc).__name__}: {exc}). Use layer=None (the "
                    "module's output), or make its forward traceable (no control "
                    "flow on tensor values)."
                ) from exc
        names = loaded["names"]
    layers = _layers.resolve_layers(layer, names, model_label)
    computed = layers
    if taps:
        if isinstance(taps, str):  # "stages"
            stages = backbone.family.stages(backbone.module)
            taps = [n for n in stages if _layers.is_valid(n, names or [])] + [None]
        taps = _layers.resolve_layers(taps, names, model_label)
        # One order for every clone, whatever its `layer`: one network.
        computed = [name for name in layers if name not in taps] + taps
    cpu_key = None if memo_id is None else (memo_id, tuple(computed), pooling)
    net = _NETWORKS.get(cpu_key)
    if net is None:
        net = _layers.FeatureNet(
            backbone.module, computed, pooling, backbone.family.nhwc, names
        )
        net = _device.prepare_network(net)
        _NETWORKS.put(cpu_key, net)
    key = None if cpu_key is None else (*cpu_key, str(device))
    if device.type != "cpu":
        on_device = None if key is None else _ON_DEVICE.get(key)
        if on_device is None:
            on_device = on_device_copy(net, device)
            if key is not None:
                _ON_DEVICE[key] = on_device
        net = on_device
    return Built(backbone, layers, computed, net, loaded["digest"], key)


def output_widths(built: Built, prep, images, device, dtype, cached=None):
    """Width of each computed layer's output, probing one image if needed.

    The widths depend on the network, the input size and the precision only,
    so a clone's probe serves all the others, and so do the probe image's
    vectors in the embedding cache: ``cached(row)`` returns them (or None).
    Returns the widths, the row of the probe image (the first readable one)
    and its features (None when no probe ran).
    """
    row, image = images.first(prep.geometry)
    size = tuple(image.shape[-2:])
    if not images.resizes:
        size = prep.output_size(*size)
    key = None if built.key is None else (built.key, size, dtype)
    widths = _WIDTHS.get(key)
    if widths is None and cached is not None:
        vectors = cached(row)
        widths = None if vectors is None else [len(v) for v in vectors]
    if widths is not None:
        _WIDTHS.put(key, widths)
        return widths, row, None
    with _device.cudnn_settings(device, dtype):  # (as transform computes rows)
        feats = _engine.run_batch(
            built.net, prep, image, device, dtype, split=True, resized=images.resizes
        )
    widths = [f.shape[1] for f in feats]
    _WIDTHS.put(key, widths)
    return widths, row, [f[0].cpu().numpy() for f in feats]


def rebuild(model, weights, state, computed, pooling, device) -> nn.Module:
    """The network of an unpickled extractor: from its weights or its state."""
    backbone = load_backbone(model, None if state else weights)
    if state is not None:
        backbone.module.load_state_dict(state)
    net = _layers.FeatureNet(backbone.module, computed, pooling, backbone.family.nhwc)
    net = _device.prepare_network(net)
    return net if device.type == "cpu" else on_device_copy(net, device)


def on_device_copy(net: nn.Module, device: torch.device) -> nn.Module:
    """A copy of a :class:`FeatureNet` whose ``body`` (what runs) is on
    ``device``, sharing ``backbone`` (what pickles and digests read) on the
    CPU: one copy of the weights on the GPU, not two (the folded ``body``
    has its own tensors)."""
    copied = copy.deepcopy(net, {id(net.backbone): net.backbone})
    if copied.body is net.backbone:  # (an untraceable backbone runs itself)
        copied.body = copy.deepcopy(net.backbone)
    copied.body.to(device)
    return _device.prepare_network(copied)


def clear() -> None:
    """Forget the shared networks (they are rebuilt on the next fit)."""
    for memo in (_BACKBONES, _NETWORKS, _WIDTHS):
        memo.clear()
    _ON_DEVICE.clear()
