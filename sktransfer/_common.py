"""Leaf utilities: the "did you mean" of error messages, progress bars,
optional dependencies, atomic file writes (with the modes of the umask), bounded
non-blocking reads of untrusted files, owned random generators and the report
of rows that could not be had. Imports only :mod:`sktransfer.exceptions` of
the package (which imports nothing of it), so that every module may import
it."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import secrets
import stat
import sys
import threading

import numpy as np
from sklearn.utils import check_random_state

from sktransfer.exceptions import warn

__all__ = [
    "did_you_mean",
    "file_mode",
    "owned_random_state",
    "progress",
    "progress_label",
    "read_regular_file",
    "replace_file",
    "report_errors",
    "install_extra",
    "require",
]


#: What the bars drawn inside :func:`progress_label` are about ("" outside).
_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="")


@contextlib.contextmanager
def progress_label(label: str):
    """Within this block, every bar's description starts with ``label``
    (a probe's bars name the model whose images they count)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def progress(*, total: int, desc: str, unit: str, verbose, leave: bool = True):
    """A tqdm bar, off with ``verbose=False``; its description starts with
    the label of the enclosing :func:`progress_label`, if any.

    Where stderr is not a terminal (a log file, CI, ``make demo`` piped),
    a bar shows only for work longer than 10 s and refreshes every 30 s:
    a log gets a few lines, not one per batch of every epoch.
    """
    from tqdm.auto import tqdm

    stream = sys.stderr
    quiet = (
        {}
        if getattr(stream, "isatty", lambda: False)()
        else {
            "delay": 10,
            "mininterval": 30,
        }
    )
    label = _LABEL.get()
    return tqdm(
        total=total,
        desc=f"{label}: {desc}" if label else desc,
        unit=unit,
        disable=not verbose,
        leave=leave,
        **quiet,
    )


def report_errors(
    estimator, errors: dict, n_rows: int, what: str, category, show_first=False
) -> None:
    """Set ``estimator.errors_`` to ``errors`` (row -> error) in row order
    and, if there are any, warn once (``category``) naming their rows:
    ``"<k> of <n_rows> <what>; their rows are NaN ..."``, with the first
    error's message if ``show_first``."""
    rows = sorted(errors)
    estimator.errors_ = [errors[i] for i in rows]
    if rows:
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        first = f" The first error: {estimator.errors_[0]}" if show_first else ""
        warn(
            f"{len(rows)} of {n_rows} {what}; their rows are NaN (rows {shown})."
            f"{first} See the estimator's errors_ for all of them.",
            category,
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
            f"which is not installed. {install_extra(extra)}"
        ) from exc


def install_extra(extra: str) -> str:
    """How to install an extra: from a checkout (sktransfer is not on PyPI,
    where the name could be anyone's), or its packages, as this install's
    metadata lists them."""
    import importlib.metadata

    try:
        lines = importlib.metadata.requires("sktransfer") or []
    except importlib.metadata.PackageNotFoundError:
        lines = []
    wanted = f'extra == "{extra}"'
    packages = [line.split(";")[0].strip() for line in lines if wanted in line]
    listed = " ".join(f"'{p}'" for p in packages)
    return (
        f"Install the extra {extra!r}: pip install -e '.[{extra}]' in a checkout "
        "of sktransfer" + (f", or its packages: pip install {listed}" if listed else "")
    )


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without a window where it is looser: from
    ``/proc/self/status`` where Linux gives it, else by setting it to 077
    (stricter than any) and back, under a lock."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode an ordinary new file gets (``open(path, "w")``): 0o666 less
    the umask, read now (not at import: a program may change it)."""
    return 0o666 & ~_umask()


def replace_file(path, write) -> None:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside
    ``path``, which is then renamed to it, so that ``path`` is either the
    old file (or absent) or the complete new one, never half written. The
    file gets the mode of an ordinary new file (the umask's, see
    :func:`file_mode`), not ``mkstemp``'s 0600."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_regular_file(
    path, limit: int | None, *, follow: bool = True, check_size=None
) -> bytes:
    """The content of the regular file ``path``, read without blocking and
    within a bound: opened non-blocking (a FIFO or a device never stalls the
    reader), refused unless ``fstat`` says it is a regular file, and never
    more than ``limit + 1`` bytes read (the one extra byte tells an overlong
    file; None: no bound). ``follow=False`` refuses a symbolic link
    (``OSError`` ``ELOOP``).

    Raises ``IsADirectoryError`` for a directory, ``ValueError`` for any
    other file that is not a regular one, ``OSError`` if it cannot be opened.
    The caller checks the length against ``limit``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", os.fspath(path))
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        if check_size is not None:
            check_size(os.fstat(fd).st_size)
        chunks = []
        left = None if limit is None else limit + 1
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
