"""Pickling estimators that hold a torch network, and the plain-data state
that :func:`sktransfer.save` stores instead of a pickle."""

from __future__ import annotations

import contextvars
import hashlib
import os

import numpy as np
from sklearn.base import BaseEstimator
from torch import nn
from torchvision.models import WeightsEnum

from sktransfer._cache import EmbeddingCache
from sktransfer._common import require
from sktransfer._device import fitted_runtime, restore_runtime
from sktransfer._identity import file_digest
from sktransfer._sources.checkpoints import cpu_module
from sktransfer.exceptions import ImageReadError, TamperedModelError, TextInputError

__all__ = ["MARK", "SHARING", "TorchPickleMixin"]

#: Set while :func:`save` runs: estimators then give a plain-data state.
SHARING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sktransfer_sharing", default=False
)
#: The key and version of the plain-data state.
MARK = "_sktransfer_shared"
VERSION = 1
# -- the plain-data state ------------------------------------------------------


def _canonical(value) -> str:
    """A deterministic text of plain data, for the checksum."""
    if isinstance(value, bytes):
        return "bytes:" + hashlib.blake2b(value, digest_size=16).hexdigest()
    if isinstance(value, np.ndarray):
        data = (
            repr(value.tolist()).encode()
            if value.dtype == object
            else np.ascontiguousarray(value).tobytes()
        )
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return f"array:{value.dtype}:{value.shape}:{digest}"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ",".join(f"{k!r}:{_canonical(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[" + ",".join(map(_canonical, value)) + "]"
    if isinstance(value, BaseEstimator):  # checks its own state
        return type(value).__qualname__
    return repr(value)


def _checksum(state: dict) -> str:
    body = {k: v for k, v in state.items() if k != "_sktransfer_checksum"}
    return hashlib.blake2b(_canonical(body).encode(), digest_size=16).hexdigest()


def plain_state(estimator, state: dict) -> dict:
    """``state`` (a ``__getstate__`` result) as plain data, for :func:`save`."""
    name = type(estimator).__name__
    model = state.get("model")
    if isinstance(model, nn.Module):
        raise TypeError(
            f"This {name} uses a module of your own ({type(model).__qualname__}), "
            "which sktransfer cannot rebuild by name, so it cannot be shared "
            "without pickle. Share it as a checkpoint of a known architecture "
            "(model='resnet50', weights='checkpoint.pth', a state_dict saved with "
            "torch.save), or pickle it (joblib.dump) knowing that loading a pickle "
            "runs whatever code it carries."
        )
    if isinstance(state.get("cache"), EmbeddingCache):
        raise TypeError(
            f"This {name} has cache=EmbeddingCache(...), an object that cannot be "
            "shared. Set cache='memory' (or a directory path, or None) before "
            "saving; the cache never changes the rows."
        )
    state = dict(state)
    for key in ("weights", "cache"):
        value = state.get(key)
        if isinstance(value, os.PathLike):
            state[key] = os.fspath(value)
        elif isinstance(value, WeightsEnum):
            state[key] = f"{type(value).__name__}.{value.name}"
    tensors = state.pop("_network_state", None)
    if tensors is not None:
        st = require("safetensors.torch", "share", "Saving a network")
        state["_network_safetensors"] = st.save(
            {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        )
    if "errors_" in state:  # (a text's error has no path: two fields)
        state["errors_"] = [
            [str(e), e.index, e.path]
            if isinstance(e, ImageReadError)
            else [str(e), e.index]
            for e in state["errors_"]
        ]
    published = estimator._published_weights_file()
    if published is not None:
        if not published.is_file():
            raise FileNotFoundError(
                f"This {name} uses published weights whose file {str(published)!r} "
                "is no longer in the cache, so the digest that checks them "
                "at load cannot be recorded. Fit it again (which downloads them), "
                "then save it."
            )
        state["_weights_file_digest"] = file_digest(published)
    state[MARK] = VERSION
    state["_sktransfer_checksum"] = _checksum(state)
    return state


def restore_state(estimator, state: dict) -> dict:
    """The state for ``__setstate__`` from a plain-data one, checked."""
    name = type(estimator).__name__
    if state[MARK] != VERSION:
        raise ValueError(
            f"This {name} was saved in sharing format {state[MARK]}; this "
            f"sktransfer reads format {VERSION}. Upgrade sktransfer."
        )
    if state.get("_sktransfer_checksum") != _checksum(state):
        raise TamperedModelError(
            f"The saved state of this {name} does not match its checksum: the file "
            "was changed after it was saved (its configuration or its tensors). "
            "Do not use it; ask its author for a fresh copy."
        )
    state = {k: v for k, v in state.items() if k not in (MARK, "_sktransfer_checksum")}
    untrusted_settings(state)
    blob = state.pop("_network_safetensors", None)
    if blob is not None:
        st = require("safetensors.torch", "share", "Loading a network")
        state["_network_state"] = st.load(blob)
    if "errors_" in state:
        state["errors_"] = [
            ImageReadError(fields[0], index=fields[1], path=fields[2])
            if len(fields) == 3
            else TextInputError(fields[0], index=fields[1])
            for fields in state["errors_"]
        ]
    return state


def untrusted_settings(state: dict) -> None:
    """A shared file's settings of the author's machine, made the
    recipient's: a loaded model follows no path from the file and takes no
    more threads than the recipient has CPUs.

    A ``cache`` folder (any string other than ``"memory"``) becomes
    ``"memory"``: the recipient's default, which ``set_params(cache=...)``
    changes. ``num_workers`` above this machine's CPU count becomes None
    (one thread per CPU, at most 8).
    """
    cache = state.get("cache")
    if isinstance(cache, str) and cache != "memory":
        state["cache"] = "memory"
    workers = state.get("num_workers")
    if isinstance(workers, int) and workers > (os.cpu_count() or 1):
        state["num_workers"] = None


class TorchPickleMixin:
    """Pickles of an estimator whose fitted network lives in ``network_``.

    The module itself is never pickled: ``_tensors_to_pickle(net)`` gives the
    CPU tensors to keep (stored as ``_network_state``), or None when the
    parameters alone rebuild the network (published weights); the
    estimator's ``_network()`` rebuilds it on first use. A module given as
    ``model`` is pickled on the CPU, and a CUDA-fitted estimator loaded where
    CUDA is missing runs on the CPU, with a warning.

    While :func:`sktransfer.save` runs, the state is plain data instead (see
    ``_share``), and ``__setstate__`` reads both kinds.
    """

    def _published_weights_file(self):
        """The torch hub file of the published weights the network is
        rebuilt from (None: its tensors are stored instead)."""
        return None

    def _tensors_to_pickle(self, net: nn.Module) -> dict | None:
        """The tensors a pickle keeps: by default the whole network's."""
        return net.state_dict()

    def _pickled_network_state(self) -> dict | None:
        """The tensors an unpickled estimator rebuilds its network from
        (None: rebuilt from the published weights' name)."""
        return vars(self).get("_network_state")

    def _pop_saved_weights_digest(self) -> str | None:
        """The digest of the published weights' file that :func:`save`
        recorded (None: not a loaded model with published weights), once."""
        return vars(self).pop("_weights_file_digest", None)

    def _drop_pickled_state(self) -> None:
        """Forget the pickled tensors, once the network is rebuilt."""
        vars(self).pop("_network_state", None)

    def __getstate__(self):
        state = dict(super().__getstate__())  # type: ignore[misc]  # a copy
        net = state.pop("network_", None)
        state.pop("_compiled", None)
        if net is not None:
            tensors = self._tensors_to_pickle(net)
            if tensors is not None:
                state["_network_state"] = {
                    k: v.detach().cpu() for k, v in tensors.items()
                }
        if isinstance(state.get("model"), nn.Module):
            state["model"] = cpu_module(state["model"])
        if "device_" in state:  # (what it was fitted with: see restore_runtime)
            fitted_runtime(state)
        if SHARING.get():
            state = plain_state(self, state)
        return state

    def __setstate__(self, state):
        if MARK in state:
            state = restore_state(self, state)
        if state.get("device_") is not None:
            restore_runtime(state, type(self).__name__)
        super().__setstate__(state)  # type: ignore[misc]
