"""torchvision's classification models: ``model="resnet50"``.

Published weights go through torchvision's weights API (``WeightsEnum``)
and the torch hub cache; a checkpoint of the architecture is read by
:mod:`~sktransfer._sources.checkpoints`.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from sktransfer import _preprocess
from sktransfer._common import did_you_mean
from sktransfer._families import family_of
from sktransfer._identity import file_digest
from sktransfer._sources import checkpoints
from sktransfer._sources.base import (
    Backbone,
    Source,
    not_a_weights_name,
    random_or_file_identity,
)
from sktransfer.exceptions import WeightsUnavailableError

__all__ = ["TorchvisionSource", "hub_path", "model_names", "published_file"]


def model_names() -> list[str]:
    """Names of the classification models torchvision registers, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def hub_path(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or would keep) the file of published weights."""
    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def published_file(model: str, path: Path) -> WeightsEnum | None:
    """The published weights of ``model`` whose file ``path`` is, by the
    name torch.hub gives it (``mobilenet_v2-b0353104.pth``): the file the
    weights' name loads, so that the same file by path or by name gets the
    same preprocessing. None for any other file."""
    enum = torchvision.models.get_model_weights(model)
    return next((w for w in enum if hub_path(w).name == path.name), None)


def _name(weights: WeightsEnum) -> str:
    return f"{type(weights).__name__}.{weights.name}"


class TorchvisionSource(Source):
    """Any other model name: torchvision's classification models."""

    name = "torchvision"

    def __init__(self):
        #: (the file the torch cache lacks -> the error; see unavailable)
        self._unavailable: dict[Path, WeightsUnavailableError] = {}

    def matches(self, model) -> bool:
        return isinstance(model, str)

    def check(self, model) -> None:
        names = model_names()
        if model not in names:
            hint = did_you_mean(model, names)
            raise ValueError(
                f"The 'model' parameter must be a torchvision classification model "
                f"name or a torch.nn.Module. Got {model!r}.{hint} See "
                "sktransfer.list_models() for the names."
            )

    def resolve_weights(self, model, weights) -> WeightsEnum | Path | None:
        """A weights enum member, a path, or None."""
        if weights is None:
            return None
        enum_cls = torchvision.models.get_model_weights(model)
        if isinstance(weights, WeightsEnum):
            if not isinstance(weights, enum_cls):
                raise ValueError(
                    f"The 'weights' parameter {weights} belongs to another model; "
                    f"{model!r} takes {enum_cls.__name__} members."
                )
            return weights
        if isinstance(weights, os.PathLike):
            return Path(weights)
        if not isinstance(weights, str):
            raise TypeError(
                "The 'weights' parameter must be 'DEFAULT', a weights name, a path "
                f"to a checkpoint or None. Got {weights!r} of type "
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
        if os.sep in weights or weights.endswith(checkpoints.SUFFIXES):
            return Path(weights)
        valid = ["DEFAULT", *members]
        hint = did_you_mean(name, valid, n=2)
        raise ValueError(
            f"The 'weights' parameter for model {model!r} must be one of "
            f"{valid} (optionally prefixed with '{enum_cls.__name__}.'), a path to "
            f"a checkpoint file, or None. Got {weights!r}.{hint}"
        )

    def identity(self, model, weights, seed) -> str | None:
        self.check(model)
        if isinstance(weights, os.PathLike) or weights is None:
            return random_or_file_identity(model, weights, seed)
        resolved = self.resolve_weights(model, weights)
        if not isinstance(resolved, WeightsEnum):
            return random_or_file_identity(model, resolved, seed)
        try:
            content = file_digest(hub_path(resolved))
        except OSError:
            content = "absent"  # downloaded by load
        return f"{model}|{_name(resolved)}|{content}"

    def load(self, model, weights) -> Backbone:
        self.check(model)
        resolved = self.resolve_weights(model, weights)
        description: str | None
        if isinstance(resolved, WeightsEnum):
            module = self._published(model, resolved)
            prep = _preprocess.from_weights(resolved)
            description = _name(resolved)
        else:
            module = torchvision.models.get_model(model, weights=None)
            published = torchvision.models.get_model_weights(model).DEFAULT
            if isinstance(resolved, Path):
                state = checkpoints.read_checkpoint(resolved)
                checkpoints.fit_head_to(module, state)
                source = f"{str(resolved)!r} (given for {model!r})"
                checkpoints.load_state(module, state, source)
                published = published_file(model, resolved) or published
            prep = _preprocess.from_weights(published)
            description = None if resolved is None else str(resolved)
        head = checkpoints.last_linear(module)
        if head is not None:
            checkpoints.replace_head(module, head)
        return Backbone(module.eval(), prep, description, family_of(model), head)

    def _published(self, model: str, weights: WeightsEnum) -> nn.Module:
        try:
            return torchvision.models.get_model(model, weights=weights)
        except OSError as exc:  # URLError, timeouts, refused connections
            if hub_path(weights).exists():
                raise
            error = WeightsUnavailableError(
                f"Could not download the weights {weights} for {model!r} "
                f"({type(exc).__name__}: {exc}). torch looks for them at "
                f"{str(hub_path(weights))!r} (set TORCH_HOME to move the cache). "
                f"Either copy the file from {weights.url} there, or pass a local "
                "state_dict checkpoint as weights='/path/to/checkpoint.pth'."
            )
            self._unavailable[hub_path(weights)] = error
            raise error from exc

    def cached_file(self, model, weights) -> Path | None:
        if "_Weights." not in weights:
            return None
        resolved = self.resolve_weights(model, weights)
        return hub_path(resolved) if isinstance(resolved, WeightsEnum) else None

    def weights_at_hand(self, model) -> list[str]:
        enum = torchvision.models.get_model_weights(model)
        members = sorted(set(enum), key=lambda w: w is not enum.DEFAULT)
        return [_name(w) for w in members if hub_path(w).exists()]

    def named_preprocessing(self, model, name: str) -> _preprocess.Preprocessing:
        resolved = self.resolve_weights(model, name)
        if not isinstance(resolved, WeightsEnum):
            raise not_a_weights_name(name)
        return _preprocess.from_weights(resolved)

    def unavailable(self) -> dict:
        return self._unavailable

    def still_unavailable(self, resolved) -> Exception | None:
        if not isinstance(resolved, WeightsEnum):
            return None
        path = hub_path(resolved)
        error = self._unavailable.get(path)
        return None if error is None or path.exists() else error
