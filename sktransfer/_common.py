"""What the estimators and modules share: the common parameters, fitting
that is all or nothing, the warning when reduced-precision numerics change,
and the "did you mean" of error messages."""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn
from torchvision.models import WeightsEnum

from sktransfer import _device, _preprocess
from sktransfer._identity import numerics
from sktransfer.exceptions import NumericsWarning, warn

__all__ = [
    "SHARED_CONSTRAINTS",
    "all_or_nothing",
    "check_numerics",
    "did_you_mean",
    "owned_random_state",
    "precision_numerics",
    "replace_file",
    "require",
]

#: Parameters that both estimators take, with the same meaning.
SHARED_CONSTRAINTS: dict = {
    "model": [str, nn.Module],
    "weights": [str, os.PathLike, WeightsEnum, None],
    "preprocessing": [str, dict, _preprocess.Preprocessing],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "num_workers": [Interval(Integral, 0, None, closed="left"), None],
    "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
    "reduced_decoding": ["boolean"],
    "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
    "random_state": ["random_state"],
    "device": [str, torch.device],
    "verbose": ["verbose"],
}


@contextlib.contextmanager
def all_or_nothing(estimator):
    """Restore ``estimator``'s attributes if the block fails (Ctrl-C too).

    ``fit`` builds new objects rather than changing the fitted ones, so a
    shallow snapshot of ``__dict__`` is enough: a failed refit leaves the
    estimator exactly as it was, fitted or not, never half-fitted.
    """
    saved = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(saved)
        raise


def precision_numerics(device: torch.device, precision: str) -> str:
    """:func:`~sktransfer._identity.numerics` of a precision's name,
    ``"int8"`` (ONNX Runtime's, ``_int8``) included."""
    if precision == "int8":
        from sktransfer import _int8

        return _int8.numerics()
    return numerics(device, _device.PRECISIONS[precision])


def check_numerics(estimator) -> None:
    """Warn when a fitted estimator computes in reduced precision with other
    kernels than at fit (a pickle, a shared model, a cluster of other
    machines): its outputs may shift by a few percent."""
    here = precision_numerics(estimator.device_, estimator.precision_)
    fitted = estimator.__dict__.get("numerics_", here)
    if estimator.precision_ != "float32" and here != fitted:
        name = type(estimator).__name__
        warn(
            f"This {name} was fitted with precision={estimator.precision_!r} on "
            f"{fitted!r} and now runs on {here!r}. Reduced-precision kernels "
            "round differently, so its outputs may shift by a few percent from "
            "those of the machine it was fitted on. For outputs that agree "
            "across machines, fit it with precision='float32'.",
            NumericsWarning,
        )


def owned_random_state(random_state) -> np.random.RandomState:
    """A RandomState that fitting may draw from without touching numpy's
    global one: a new one for an int, one seeded with fresh entropy for None
    (unseeded, as sklearn's ``None`` is, but without advancing the global
    state), and the caller's own instance as given."""
    if random_state is None:
        return np.random.RandomState(secrets.randbits(32))
    return check_random_state(random_state)


def did_you_mean(name: str, choices, n: int = 3) -> str:
    """`` Did you mean 'a' or 'b'?`` for the choices closest to ``name``, or
    an empty string when none is close: the end of an error message."""
    close = difflib.get_close_matches(name, list(choices), n=n)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}, "
            "which is not "
            f"installed. Install it with: pip install 'sktransfer[{extra}]'"
        ) from exc


def replace_file(path, write) -> None:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside
    ``path``, which is then renamed to it, so that ``path`` is either the
    old file (or absent) or the complete new one, never half written."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
