"""From a ``model`` and ``weights`` specification to a backbone.

A backbone is an eval-mode CPU module whose classification head (its final
``nn.Linear``) has been replaced by ``nn.Identity``, so that its output is the
model's standard embedding, plus the preprocessing its weights expect and a
human-readable description of those weights. Published weights go through
torchvision's weights API and the torch hub cache (timm models: timm's API and
the Hugging Face hub cache, see ``_timm``); local checkpoints are read with
``torch.load(..., weights_only=True)`` or safetensors, and nothing else.
"""

from __future__ import annotations

import copy
import io
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from sktransfer import _preprocess, _timm
from sktransfer._common import did_you_mean, require
from sktransfer._families import Family, family_of
from sktransfer._identity import content_digest, remember_file_digest
from sktransfer.exceptions import WeightsUnavailableError

__all__ = [
    "Backbone",
    "cpu_module",
    "check_weights",
    "hub_path",
    "last_linear",
    "load_backbone",
    "model_names",
    "named_preprocessing",
    "published_weights_file",
    "replace_head",
    "resolve_weights",
]

_CHECKPOINT_SUFFIXES = _timm.CHECKPOINT_SUFFIXES


@dataclass
class Backbone:
    """A loaded backbone and what travels with it."""

    module: nn.Module
    preprocessing: _preprocess.Preprocessing
    weights: str | None  # "ResNet50_Weights.IMAGENET1K_V2", a path, or None
    family: Family
    head: str | None  # qualified name of the removed head, if any


def model_names() -> list[str]:
    """Names of the classification models torchvision registers, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_model_name(name: str) -> None:
    if _timm.is_timm(name):
        _timm.check_name(name)
        return
    names = model_names()
    if name not in names:
        hint = did_you_mean(name, names)
        raise ValueError(
            f"The 'model' parameter must be a torchvision classification model "
            f"name or a torch.nn.Module. Got {name!r}.{hint} See "
            "sktransfer.list_models() for the names."
        )


def resolve_weights(model_name: str, weights) -> WeightsEnum | str | Path | None:
    """Turn the ``weights`` parameter into a weights enum member (timm: the
    name of published weights) or a path."""
    if _timm.is_timm(model_name):
        return _timm.resolve_weights(model_name, weights)
    if weights is None:
        return None
    enum_cls = torchvision.models.get_model_weights(model_name)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(
                f"The 'weights' parameter {weights} belongs to another model; "
                f"{model_name!r} takes {enum_cls.__name__} members."
            )
        return weights
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if not isinstance(weights, str):
        raise TypeError(
            "The 'weights' parameter must be 'DEFAULT', a weights name, a path to "
            f"a checkpoint or None. Got {weights!r} of type "
            f"{type(weights).__name__}."
        )
    members = [m for m in enum_cls.__members__ if m != "DEFAULT"]
    name = weights
    if "." in name and name.split(".", 1)[0] == enum_cls.__name__:
        name = name.split(".", 1)[1]
    if name == "DEFAULT":
        return enum_cls.DEFAULT
    if name in enum_cls.__members__:
        return enum_cls[name]
    if os.sep in weights or weights.endswith(_CHECKPOINT_SUFFIXES):
        return Path(weights)
    valid = ["DEFAULT", *members]
    hint = did_you_mean(name, valid, n=2)
    raise ValueError(
        f"The 'weights' parameter for model {model_name!r} must be one of "
        f"{valid} (optionally prefixed with '{enum_cls.__name__}.'), a path to "
        f"a checkpoint file, or None. Got {weights!r}.{hint}"
    )


def cpu_module(module: nn.Module) -> nn.Module:
    """``module`` if all its tensors are on the CPU, else a CPU copy (for
    pickles, which hold CPU tensors only; the caller's module is untouched)."""
    if all(t.device.type == "cpu" for t in module.state_dict().values()):
        return module
    return copy.deepcopy(module).cpu()


def named_preprocessing(model, name: str) -> _preprocess.Preprocessing:
    """The preprocessing of the weights called ``name`` of ``model``."""
    if not isinstance(model, str):
        raise ValueError(
            "A weights name as 'preprocessing' needs a torchvision or timm model "
            f"name as 'model'. Got preprocessing={name!r}; pass a dict instead."
        )
    resolved = resolve_weights(model, name)
    if isinstance(resolved, str):  # timm weights
        return _timm.preprocessing_of(_timm.pretrained_cfg(resolved), model)
    if not isinstance(resolved, WeightsEnum):
        raise ValueError(
            "The 'preprocessing' parameter must be 'auto', a weights name, a "
            f"dict or a Preprocessing. Got {name!r}."
        )
    return _preprocess.from_weights(resolved)


def last_linear(module: nn.Module) -> str | None:
    """Qualified name of the last ``nn.Linear`` of ``module`` (its head)."""
    name = None
    for qualname, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            name = qualname
    return name


def replace_head(module: nn.Module, head: str) -> None:
    """Replace the submodule ``head`` by ``nn.Identity``, in place."""
    parent, _, leaf = head.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    setattr(owner, leaf, nn.Identity())


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file: a ``.safetensors`` file, or a
    torch file loaded with ``weights_only=True``.

    The bytes are read once: their digest is remembered as the file's
    identity (``_identity``), so the network is identified by what was
    loaded, not by a second read. Every failure names the file.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"The 'weights' parameter names the checkpoint {str(path)!r}, which "
            "does not exist or is not a file."
        )
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    remember_file_digest(path, before, after, content_digest(data))
    expected = (
        "Expected a state_dict saved with torch.save(model.state_dict(), path) "
        "(read with torch.load(..., weights_only=True))."
    )
    if not data:
        raise ValueError(f"The checkpoint {str(path)!r} is empty (0 bytes). {expected}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zipfile and torch raise many types
        first_line = (str(exc).splitlines() or [""])[0]
        raise ValueError(
            f"The checkpoint {str(path)!r} ({len(data):,} bytes) could not be "
            f"read ({type(exc).__name__}: {first_line}). It is truncated, not a "
            f"torch checkpoint, or holds objects other than tensors. {expected}"
        ) from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"The checkpoint {str(path)!r} is not a state_dict (a mapping of "
            "parameter names to tensors). Save one with "
            "torch.save(model.state_dict(), path)."
        )
    return dict(state)


def _read_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    st = require("safetensors.torch", "share", "Reading a .safetensors file")
    try:
        return dict(st.load(data))
    except Exception as exc:  # safetensors raises its own error types
        first_line = (str(exc).splitlines() or [""])[0]
        raise ValueError(
            f"The file {str(path)!r} ({len(data):,} bytes) is not a valid "
            f"safetensors file ({type(exc).__name__}: {first_line}). Save one "
            "with safetensors.torch.save_file(model.state_dict(), path)."
        ) from exc


def _load_state(module: nn.Module, state: Mapping, source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        k for k in set(own) & set(state) if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys with another shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        raise ValueError(
            f"The checkpoint {source} does not match the architecture: "
            + "; ".join(parts)
            + ". Check that 'model' names the architecture the checkpoint was "
            "saved from."
        )
    module.load_state_dict(state, strict=True)


def _fit_head_to(module: nn.Module, state: Mapping) -> None:
    """Give ``module`` a head as wide as the checkpoint's (a fine-tuned one may
    have any number of classes); the head is removed afterwards anyway."""
    head = last_linear(module)
    if head is None:
        return
    weight = state.get(f"{head}.weight")
    old = module.get_submodule(head)
    if weight is not None and weight.ndim == 2 and weight.shape != old.weight.shape:
        parent, _, leaf = head.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, leaf, nn.Linear(weight.shape[1], weight.shape[0]))


def hub_path(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or would keep) the file of published weights."""
    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _unavailable(model_name: str, weights: WeightsEnum, exc) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Could not download the weights {weights} for {model_name!r} "
        f"({type(exc).__name__}: {exc}). torch looks for them at "
        f"{str(hub_path(weights))!r} (set TORCH_HOME to move the cache). Either "
        f"copy the file from {weights.url} there, or pass a local state_dict "
        "checkpoint as weights='/path/to/checkpoint.pth'."
    )


def weights_at_hand(model: str) -> list[str]:
    """Names of the model's published weights whose files are in the torch
    hub cache (timm: the Hugging Face hub cache), usable offline, best
    (DEFAULT) first."""
    if _timm.is_timm(model):
        return _timm.weights_at_hand(model)
    enum = torchvision.models.get_model_weights(model)
    members = sorted(set(enum), key=lambda w: w is not enum.DEFAULT)
    return [f"{enum.__name__}.{w.name}" for w in members if hub_path(w).exists()]


#: Published weights that could not be had in this process (the file the
#: torch cache lacks -> the error), so that the next clone fails at once.
_UNAVAILABLE: dict[Path, WeightsUnavailableError] = {}


def _load_published(model_name: str, weights: WeightsEnum) -> nn.Module:
    try:
        return torchvision.models.get_model(model_name, weights=weights)
    except OSError as exc:  # URLError, timeouts, refused connections
        if hub_path(weights).exists():
            raise
        error = _unavailable(model_name, weights, exc)
        _UNAVAILABLE[hub_path(weights)] = error
        raise error from exc


def check_weights(model, weights) -> None:
    """Raise :class:`WeightsUnavailableError` at once if these published
    weights already could not be had in this process and are still not in
    the torch cache.

    Called when an estimator is cloned (no network, a ``stat`` at most): a
    grid search whose fits need weights that cannot be downloaded stops at
    the second candidate, in the parent, with the clear message, instead of
    failing every fit. Anything else is left to ``fit``.
    """
    if not isinstance(model, str) or weights is None:
        return
    if not (_UNAVAILABLE or (_timm.UNAVAILABLE and _timm.is_timm(model))):
        return
    try:
        resolved = resolve_weights(model, weights)
    except (ValueError, TypeError, OSError):
        return
    if isinstance(resolved, str):  # timm
        known = _timm.UNAVAILABLE.get(resolved)
        if known is not None and _timm.cached_weights_file(resolved) is None:
            raise WeightsUnavailableError(str(known))
    elif isinstance(resolved, WeightsEnum):
        path = hub_path(resolved)
        error = _UNAVAILABLE.get(path)
        if error is not None and not path.exists():
            raise WeightsUnavailableError(str(error))


def load_backbone(model, weights, seed: int | None = None) -> Backbone:
    """Load ``model`` with ``weights`` as an eval-mode CPU backbone.

    Building a model draws its random initialisation from torch's global
    generator, which is forked here and restored after: loading never changes
    the caller's random state. ``seed`` makes a random initialisation
    (``weights=None``) reproducible; without it the fork is seeded with fresh
    entropy.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(secrets.randbits(63) if seed is None else seed)
        return _load(model, weights)


def _load(model, weights) -> Backbone:
    if isinstance(model, nn.Module):
        return _load_custom(model, weights)
    if hasattr(model, "_sktransfer_backbone"):  # a fitted FineTunedClassifier
        if not (weights is None or (isinstance(weights, str) and weights == "DEFAULT")):
            raise ValueError(
                "A FineTunedClassifier as 'model' brings its own trained weights; "
                f"leave weights='DEFAULT'. Got weights={weights!r}."
            )
        return model._sktransfer_backbone()
    if not isinstance(model, str):
        raise TypeError(
            "The 'model' parameter must be a torchvision model name such as "
            "'resnet50', a timm model name such as 'timm/convnext_tiny.fb_in22k', "
            "a torch.nn.Module or a fitted FineTunedClassifier. Got "
            f"{type(model).__name__}."
        )
    _check_model_name(model)
    if _timm.is_timm(model):
        return _load_timm(model, weights)
    resolved = resolve_weights(model, weights)
    enum_cls = torchvision.models.get_model_weights(model)
    description: str | None
    if isinstance(resolved, WeightsEnum):
        module = _load_published(model, resolved)
        prep = _preprocess.from_weights(resolved)
        description = f"{type(resolved).__name__}.{resolved.name}"
    else:
        module = torchvision.models.get_model(model, weights=None)
        if isinstance(resolved, Path):
            state = _read_checkpoint(resolved)
            _fit_head_to(module, state)
            _load_state(module, state, repr(str(resolved)))
        prep = _preprocess.from_weights(enum_cls.DEFAULT)
        description = None if resolved is None else str(resolved)
    head = last_linear(module)
    if head is not None:
        replace_head(module, head)
    return Backbone(module.eval(), prep, description, family_of(model), head)


def _load_timm(model: str, weights) -> Backbone:
    """A timm model, its classifier removed by timm (``num_classes=0``)."""
    module, description = _timm.create(
        model, _timm.resolve_weights(model, weights), _read_checkpoint
    )
    prep = _timm.preprocessing_of(module.pretrained_cfg, model)
    return Backbone(
        module.eval(),
        prep,
        description,
        family_of(model, module),
        _timm.head_name(module),
    )


def published_weights_file(model, weights) -> Path | None:
    """The cached file of the published weights a fitted estimator names
    (``weights_``): torch hub's for torchvision, the hub cache's for timm
    (a path that does not exist when it is not cached). None for other
    weights (random, a checkpoint, a module)."""
    if not isinstance(model, str) or not isinstance(weights, str):
        return None
    if _timm.is_timm(model):
        resolved = _timm.resolve_weights(model, weights)
        if not isinstance(resolved, str):
            return None
        return _timm.cached_weights_file(resolved) or _timm.cache_folder(resolved)
    if "_Weights." not in weights:
        return None
    resolved = resolve_weights(model, weights)
    return hub_path(resolved) if isinstance(resolved, WeightsEnum) else None


def _load_custom(model: nn.Module, weights) -> Backbone:
    """A user's module: its own weights, a checkpoint, or re-initialised."""
    module = copy.deepcopy(model).cpu()
    description: str | None
    if isinstance(weights, str) and weights == "DEFAULT":
        description = "the module's own weights"
    elif weights is None:
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
        description = None
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        _load_state(module, _read_checkpoint(path), repr(str(path)))
        description = str(path)
    else:
        raise TypeError(
            "For a torch.nn.Module 'model', the 'weights' parameter must be "
            "'DEFAULT' (the module's own weights), None (re-initialised), or a "
            f"path to a checkpoint. Got {weights!r}."
        )
    return Backbone(
        module.eval(),
        _preprocess.default_preprocessing(),
        description,
        family_of(None),
        None,
    )
