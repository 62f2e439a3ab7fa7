"""Leaf utilities: the "did you mean" of error messages, optional
dependencies, atomic file writes and owned random generators. Imports
nothing of the package, so that every module may import it."""

from __future__ import annotations

import difflib
import os
import secrets

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["did_you_mean", "owned_random_state", "replace_file", "require"]


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
