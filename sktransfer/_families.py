"""What sktransfer knows about each architecture family, in one place.

A family maps a glob of torchvision model names to the names of its *stages*:
the coarse blocks, in execution order, at whose boundaries a network is
usually cut (``layer1`` .. ``layer4`` of a ResNet, the encoder blocks of a
ViT). The same stages are the units of fine-tuning: ``trainable_layers=N``
unfreezes the last N of :meth:`Family.trainable_groups` (a stage, or for a
ViT the last encoder block together with the final norm). The registry is a
dict filled by the :func:`register_family` decorator; models that match no
family (including users' own modules) fall back to their top-level children.

Parameters outside every stage (a ResNet's stem ``conv1``/``bn1``, a ViT's
patch embedding, a ConvNeXt's norm before the head) are trained only with
``trainable_layers="all"``.

A model source registers the families of its own models: timm's
(``"timm/..."``, ``"hf-hub:..."``, see ``_sources.timm``) has the modules of
timm's ``feature_info`` as stages, and what follows the last stage (a final
norm, a pooling head with a norm) joins the last group.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

__all__ = ["Family", "family_of", "register_family"]


@dataclass(frozen=True)
class Family:
    """An architecture family.

    Parameters
    ----------
    name : str
        Short name of the family.
    patterns : tuple of str
        Globs matched against torchvision model names.
    stages : callable
        ``stages(module) -> list[str]``: qualified names of the stage modules,
        in execution order.
    nhwc : bool
        Whether intermediate feature maps are laid out ``(n, H, W, C)``
        (Swin) rather than ``(n, C, H, W)``.
    tail : callable or None
        ``tail(module, stages) -> list[str]``: modules after the last stage
        that are trained together with it (timm: a final norm, a head).
    """

    name: str
    patterns: tuple[str, ...]
    stages: Callable[[nn.Module], list[str]]
    nhwc: bool = False
    tail: Callable[[nn.Module, list[str]], list[str]] | None = None

    def trainable_groups(self, module: nn.Module) -> list[list[str]]:
        """The units of ``trainable_layers``, in execution order: one list of
        module names each (a stage; ViT: its final norm joins the last block)."""
        stages = self.stages(module)
        groups = [[name] for name in stages]
        if self.name == "vit" and len(groups) > 1:
            groups[-2:] = [groups[-2] + groups[-1]]
        elif self.tail is not None and groups:
            groups[-1] += self.tail(module, stages)
        return groups


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *patterns: str, nhwc: bool = False, tail=None):
    """Register the decorated ``stages(module)`` function as a family."""

    def decorator(stages: Callable[[nn.Module], list[str]]):
        if name in _FAMILIES:
            raise ValueError(
                f"A family named {name!r} is registered already "
                f"({_FAMILIES[name].patterns}); choose another name."
            )
        _FAMILIES[name] = Family(name, patterns, stages, nhwc, tail)
        return stages

    return decorator


def _children(module: nn.Module, prefix: str) -> list[str]:
    sub = module.get_submodule(prefix) if prefix else module
    dot = f"{prefix}." if prefix else ""
    return [f"{dot}{name}" for name, _ in sub.named_children()]


@register_family("resnet", "resnet*", "resnext*", "wide_resnet*")
def _resnet_stages(module: nn.Module) -> list[str]:
    return ["layer1", "layer2", "layer3", "layer4"]


@register_family(
    "features",
    "efficientnet*",
    "mobilenet*",
    "convnext*",
    "mnasnet*",
    "vgg*",
    "alexnet",
    "squeezenet*",
    "densenet*",
    "shufflenet*",
)
def _features_stages(module: nn.Module) -> list[str]:
    if hasattr(module, "features"):
        return _children(module, "features")
    if hasattr(module, "layers"):  # mnasnet
        return _children(module, "layers")
    # shufflenet: conv1, maxpool, stage2..4, conv5
    return [n for n in ("stage2", "stage3", "stage4", "conv5") if hasattr(module, n)]


@register_family("swin", "swin*", nhwc=True)
def _swin_stages(module: nn.Module) -> list[str]:
    return _children(module, "features")


@register_family("vit", "vit_*")
def _vit_stages(module: nn.Module) -> list[str]:
    return _children(module, "encoder.layers") + ["encoder.ln"]


@register_family("regnet", "regnet_*")
def _regnet_stages(module: nn.Module) -> list[str]:
    return _children(module, "trunk_output")


@register_family("maxvit", "maxvit*")
def _maxvit_stages(module: nn.Module) -> list[str]:
    return _children(module, "blocks")


def _generic_stages(module: nn.Module) -> list[str]:
    return _children(module, "")


GENERIC = Family("generic", (), _generic_stages)


def family_of(model_name: str | None, module: nn.Module | None = None) -> Family:
    """Return the family of a model name (generic if unknown). ``module``
    (the model) tells whether its feature maps are laid out ``(n, H, W, C)``
    where the name cannot (timm's ``output_fmt``)."""
    found = GENERIC
    if model_name is not None:
        for family in _FAMILIES.values():
            if any(fnmatch.fnmatchcase(model_name, p) for p in family.patterns):
                found = family
                break
    if getattr(module, "output_fmt", None) == "NHWC" and not found.nhwc:
        found = replace(found, nhwc=True)
    return found
