"""A user's own ``torch.nn.Module`` as ``model``."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from sktransfer import _preprocess
from sktransfer._families import family_of
from sktransfer._identity import module_digest
from sktransfer._sources import checkpoints
from sktransfer._sources.base import Backbone, Source, random_or_file_identity

__all__ = ["ModuleSource"]


def _own_weights(weights) -> bool:
    return isinstance(weights, str) and weights == "DEFAULT"


class ModuleSource(Source):
    """A module: its own weights (``"DEFAULT"``), a checkpoint, or
    re-initialised (``None``). It is copied, never changed."""

    name = "module"

    def matches(self, model) -> bool:
        return isinstance(model, nn.Module)

    def identity(self, model, weights, seed) -> str | None:
        base = module_digest(model)
        if _own_weights(weights):
            return base
        return random_or_file_identity(base, weights, seed)

    def load(self, model, weights) -> Backbone:
        module = copy.deepcopy(model).cpu()
        description: str | None
        if _own_weights(weights):
            description = "the module's own weights"
        elif weights is None:
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
            description = None
        elif isinstance(weights, (str, os.PathLike)):
            path = Path(weights)
            state = checkpoints.read_checkpoint(path)
            checkpoints.load_state(module, state, repr(str(path)))
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
