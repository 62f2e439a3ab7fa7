"""Checkpoint files and classification heads, for every model source.

Local checkpoints are read with ``torch.load(..., weights_only=True)`` or
safetensors, and nothing else; every failure names the file and the fix.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sktransfer._common import require
from sktransfer._identity import content_digest, remember_file_digest

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "SUFFIXES",
    "ArchitectureMismatchError",
    "checkpoint_for",
    "cpu_module",
    "fit_head_to",
    "last_linear",
    "load_state",
    "read_checkpoint",
    "replace_head",
    "weights_folders",
]

#: Suffixes that make a ``weights`` string a file rather than a weights name.
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
#: The folders of checkpoints at hand (``os.pathsep``-separated), read where
#: no folder is given: see :func:`weights_folders`.
ENVIRONMENT_VARIABLE = "SKTRANSFER_WEIGHTS"


class ArchitectureMismatchError(ValueError):
    """A checkpoint whose tensors are not those of the architecture."""


def weights_folders(given=None) -> list[Path]:
    """The folders searched for checkpoints: ``given`` (a folder or a list
    of them), else those of the environment variable ``SKTRANSFER_WEIGHTS``
    (``os.pathsep``-separated); a folder given that does not exist is an
    error, one of the variable's is passed over."""
    if given is None:
        value = os.environ.get(ENVIRONMENT_VARIABLE, "")
        return [Path(p) for p in value.split(os.pathsep) if p and Path(p).is_dir()]
    folders = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(
                f"The weights folder {str(folder)!r} does not exist or is not a "
                "folder. Name a folder of checkpoints named after their model "
                "(mobilenet_v2_imagenet.pth, resnet50.safetensors)."
            )
    return [Path(folder) for folder in folders]


def _names_model(stem: str, model: str) -> bool:
    """Whether a file stem is ``model`` or starts with it and a separator."""
    return stem == model or (stem.startswith(model) and stem[len(model)] in "_-.")


def checkpoint_for(model: str, folders, names) -> Path | None:
    """The first checkpoint file (by folder, then name) in ``folders`` named
    after ``model``: ``<model>.pth`` or ``<model>_<anything>.pth`` (any of
    :data:`SUFFIXES`), unless a longer name of ``names`` (the architectures
    there are) claims it: ``resnet50_2.pth`` is not ``resnet50``'s when
    ``resnet50_2`` is an architecture."""
    for folder in folders:
        found = []
        for path in Path(folder).iterdir():
            if not (path.suffix in SUFFIXES and path.is_file()):
                continue
            stem = path.name[: -len(path.suffix)]
            claims = [n for n in names if _names_model(stem, n)]
            if _names_model(stem, model) and max(claims, key=len, default="") in (
                "",
                model,
            ):
                found.append(path)
        if found:
            return sorted(found)[0]
    return None


def cpu_module(module: nn.Module) -> nn.Module:
    """``module`` if all its tensors are on the CPU, else a CPU copy (for
    pickles, which hold CPU tensors only; the caller's module is untouched)."""
    if all(t.device.type == "cpu" for t in module.state_dict().values()):
        return module
    return copy.deepcopy(module).cpu()


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


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
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


def load_state(module: nn.Module, state: Mapping, source: str) -> None:
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
        raise ArchitectureMismatchError(
            f"The checkpoint {source} does not match the architecture: "
            + "; ".join(parts)
            + ". Check that 'model' names the architecture the checkpoint was "
            "saved from."
        )
    module.load_state_dict(state, strict=True)


def fit_head_to(module: nn.Module, state: Mapping) -> None:
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
