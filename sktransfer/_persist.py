"""Pickling estimators that hold a torch network."""

from __future__ import annotations

from torch import nn

from sktransfer import _share
from sktransfer._backbones import cpu_module
from sktransfer._device import restore_device

__all__ = ["TorchPickleMixin"]


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
        if "device_" in state:
            state["device_"] = str(state["device_"])
        if _share.SHARING.get():
            state = _share.plain_state(self, state)
        return state

    def __setstate__(self, state):
        if _share.MARK in state:
            state = _share.restore_state(self, state)
        if state.get("device_") is not None:
            state["device_"] = restore_device(state["device_"], type(self).__name__)
        super().__setstate__(state)  # type: ignore[misc]
