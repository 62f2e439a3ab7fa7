"""The base of sktransfer's estimators.

Every estimator runs a pretrained network on inputs that an adapter turns
into batches; what they share lives here, each estimator passing its own
policy: the parameters they have in common, input adaptation, cheap
clones, fitting that is all or nothing, Dask dispatch, the preprocessing of
the weights, the network rebuilt after unpickling, and the warning when
reduced-precision numerics change. (scikit-learn's ``_BaseEncoder`` and
skorch's ``NeuralNet`` are the models: one base carries the machinery.)
"""

from __future__ import annotations

import abc
import contextlib
import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torchvision.models import WeightsEnum

from sktransfer import _dask, _device, _preprocess
from sktransfer._common import owned_random_state
from sktransfer._identity import cpu_bf16, numerics
from sktransfer._images import decode as _decode
from sktransfer._images.inputs import as_images
from sktransfer._persist import TorchPickleMixin
from sktransfer._runtime import int8 as _int8
from sktransfer._sources import check_weights, named_preprocessing
from sktransfer.exceptions import NumericsWarning, PrecisionFallbackWarning, warn

__all__ = [
    "IMAGE_CONSTRAINTS",
    "SHARED_CONSTRAINTS",
    "ImageEstimator",
    "TransferEstimator",
    "compute_precision",
    "precision_numerics",
]

#: Parameters that every estimator takes, with the same meaning.
SHARED_CONSTRAINTS: dict = {
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
    "random_state": ["random_state"],
    "device": [str, torch.device],
    "verbose": ["verbose"],
}
#: And those of every estimator whose inputs are images.
IMAGE_CONSTRAINTS: dict = {
    **SHARED_CONSTRAINTS,
    "model": [str, nn.Module],
    "weights": [str, os.PathLike, WeightsEnum, None],
    "preprocessing": [str, dict, _preprocess.Preprocessing],
    "num_workers": [Interval(Integral, 0, None, closed="left"), None],
    "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
    "reduced_decoding": ["boolean"],
}


def precision_numerics(device: torch.device, precision: str) -> str:
    """:func:`~sktransfer._identity.numerics` of a precision's name,
    ``"int8"`` (ONNX Runtime's) included: the one route to ``numerics_``."""
    if precision == "int8":
        return _int8.numerics()
    return numerics(device, _device.PRECISIONS[precision])


def compute_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a network computes in for the ``precision`` parameter.

    As :func:`~sktransfer._device.resolve_precision`, except that bfloat16
    on a CPU without bfloat16 instructions (AVX2 only: most laptops, AMD Zen
    3), where it runs several times slower than float32, falls back to
    float32 with a :class:`~sktransfer.exceptions.PrecisionFallbackWarning`
    (``precision_`` then says ``"float32"``). ``"auto"`` is float32 on CPUs:
    no warning.
    """
    dtype = _device.resolve_precision(precision, device)
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_bf16():
        warn(
            f"precision={precision!r} is not used: this CPU has no bfloat16 "
            "instructions (AVX512-BF16 or AMX on x86, BF16 on ARM), so bfloat16 "
            "would run several times slower than float32. The network runs in "
            "float32 instead (precision_='float32').",
            PrecisionFallbackWarning,
        )
        return torch.float32
    return dtype


@contextlib.contextmanager
def _all_or_nothing(estimator):
    """Restore ``estimator``'s attributes if the block fails (Ctrl-C too).

    ``fit`` builds new objects rather than changing the fitted ones, so a
    shallow snapshot of the attributes is enough: a failed refit leaves the
    estimator exactly as it was, fitted or not, never half-fitted.
    """
    attributes = vars(estimator)
    saved = dict(attributes)
    try:
        yield
    except BaseException:
        attributes.clear()
        attributes.update(saved)
        raise


class TransferEstimator(TorchPickleMixin, BaseEstimator, metaclass=abc.ABCMeta):
    """What an estimator that runs a pretrained network shares.

    Whatever its inputs (images, texts), a subclass implements
    ``_inputs(X, fitted)`` (``X`` as the adapter its engine takes),
    ``_fit(X, y)`` (called by ``fit``, all or nothing), ``_dask_output`` and
    ``_rebuild_network()`` (the fitted network from the pickled state, see
    :class:`~sktransfer._persist.TorchPickleMixin`).
    """

    _parameter_constraints: dict = SHARED_CONSTRAINTS
    #: The kind of model source the ``model`` parameter names.
    _source_kind = "image"

    @abc.abstractmethod
    def _inputs(self, X, fitted: bool = False):
        """``X`` as the adapter the engine takes (each input kind's own);
        ``fitted``: prepared as in ``fit``."""

    def _model_label(self) -> str:
        """How error messages name the model."""
        return repr(self.model) if isinstance(self.model, str) else "model"

    def _random_state(self) -> np.random.RandomState:
        """The generator ``fit`` draws from (never numpy's global one)."""
        return owned_random_state(self.random_state)

    # -- fitting ------------------------------------------------------------
    def _check_weights_available(self) -> None:
        """Raise at once if the weights already could not be had in this
        process (offline: a grid search fails once, not once per fit)."""
        check_weights(self.model, self.weights, self._source_kind)

    def __sklearn_clone__(self):
        self._check_weights_available()
        new = super().__sklearn_clone__()
        if not isinstance(self.model, str):
            # A module or a fitted classifier is only read, never modified:
            # clones share it (sklearn would copy a module and unfit a
            # classifier).
            new.model = self.model
        return new

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit on ``X`` (and ``y``): see the subclass."""
        with _all_or_nothing(self):
            # (a refit runs where it is: forget where an unpickled copy was fitted)
            vars(self).pop(_device.FITTED_DEVICE, None)
            vars(self).pop(_device.FITTED_PRECISION, None)
            return self._fit(X, y)

    @abc.abstractmethod
    def _fit(self, X, y):
        """Fit (each estimator's own); ``fit`` undoes it if it fails."""

    # -- predicting ---------------------------------------------------------
    def _apply(self, X, method: str, run):
        """``run(images)`` of fitted ``X``; for a Dask collection, a lazy
        Dask array of ``method`` over its partitions instead, of the shape
        ``_dask_output(method)`` gives."""
        check_is_fitted(self)
        if _dask.is_dask(X):  # (each block checks the numerics where it runs)
            return _dask.lazy(self, X, method, *self._dask_output(method))
        return run(self._inputs(X, fitted=True))

    @abc.abstractmethod
    def _dask_output(self, method: str) -> tuple[int | None, np.dtype]:
        """The number of columns (None: one value per row) and the dtype of
        what ``method`` returns (each estimator's own)."""

    def _check_numerics(self) -> None:
        """Warn when a fitted estimator computes in reduced precision with
        other kernels than at fit (a pickle, a shared model, a cluster of
        other machines): its outputs may shift by a few percent."""
        here = precision_numerics(self.device_, self.precision_)
        fitted = getattr(self, "numerics_", here)
        if self.precision_ != "float32" and here != fitted:
            warn(
                f"This {type(self).__name__} was fitted with "
                f"precision={self.precision_!r} on {fitted!r} and now runs on "
                f"{here!r}. Reduced-precision kernels round differently, so its "
                "outputs may shift by a few percent from those of the machine it "
                "was fitted on. For outputs that agree across machines, fit it "
                "with precision='float32'.",
                NumericsWarning,
            )

    def _dtype(self) -> torch.dtype:
        """The dtype the engine autocasts to (int8 networks take float32)."""
        return _device.PRECISIONS.get(self.precision_, torch.float32)

    def _sibling(self):
        """A shallow copy sharing the fitted network (``copy.copy`` would
        pickle, dropping it), whose attributes a thread may replace."""
        sibling = object.__new__(type(self))
        vars(sibling).update(vars(self))
        return sibling

    # -- the fitted network -------------------------------------------------
    def _network(self) -> nn.Module:
        """``network_``, rebuilt from the pickled state on first use."""
        net = getattr(self, "network_", None)
        if net is None:
            net = self._rebuild_network()
            # (the state is kept until network_ is set: another thread may
            # pickle this estimator meanwhile, as a Dask worker sending it on)
            self.network_ = net
            self._drop_pickled_state()
        return net

    @abc.abstractmethod
    def _rebuild_network(self) -> nn.Module:
        """The fitted network from the pickled state (each estimator's own)."""


class ImageEstimator(TransferEstimator):
    """A :class:`TransferEstimator` whose inputs are images: the image
    parameters, the images adapter and the weights' preprocessing. Where
    its inputs take more options than ``num_workers`` and ``max_pixels``, a
    subclass extends ``_input_options()``."""

    _parameter_constraints: dict = IMAGE_CONSTRAINTS

    # -- inputs -------------------------------------------------------------
    def _input_options(self) -> dict:
        """Keywords of :func:`~sktransfer._images.inputs.as_images`."""
        return {"num_workers": self.num_workers, "max_pixels": self.max_pixels}

    def _inputs(self, X, fitted: bool = False):
        """``X`` as the images adapter; ``fitted``: decoded as in ``fit``."""
        images = as_images(X, **self._input_options())
        if fitted:
            _decode.plan_reduced_decoding(
                images, self.reduced_decoding, self.preprocessing_, self.device_
            )
        return images

    def _preprocessing_for(self, backbone, images, device: torch.device):
        """The preprocessing to fit with (the ``preprocessing`` parameter
        over the weights' own), with the images' decoding planned for it."""
        prep = _preprocess.resolve(
            self.preprocessing,
            backbone.preprocessing,
            lambda name: named_preprocessing(self.model, name),
        )
        _decode.plan_reduced_decoding(images, self.reduced_decoding, prep, device)
        return prep
