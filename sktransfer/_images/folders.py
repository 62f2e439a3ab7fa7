"""From a directory to ``X`` (and ``y``) in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sktransfer._images.decode import EXTENSIONS
from sktransfer.exceptions import FolderLinkWarning, warn

__all__ = ["list_images", "load_image_folder", "read_list_file"]


def _is_image_name(name: str) -> bool:
    # Hidden files are skipped: macOS writes "._photo.jpg" companions that
    # are not images.
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _check_folder(folder) -> Path:
    path = Path(folder)
    if not path.is_dir():
        reason = "does not exist" if not path.exists() else "is not a directory"
        raise FileNotFoundError(f"The folder {str(folder)!r} {reason}.")
    return path


def list_images(folder, *, recursive=True) -> np.ndarray:
    """The paths of the image files in a folder, sorted.

    Image files are those with the extension of an accepted format (JPEG,
    PNG, WebP, BMP, TIFF, GIF; any case). Hidden files and folders (names
    starting with ``.``) are skipped. Links to folders are followed, except
    those that lead to ``folder`` or a folder above it (a loop), or to a
    folder listed otherwise (through its own path or another link): they
    are cut, and a :class:`~sktransfer.FolderLinkWarning` names them. So
    each file is listed once. The paths are not opened here: a file that
    turns out not to be an image is reported by ``transform``.

    Parameters
    ----------
    folder : str or path-like
        The folder to list.
    recursive : bool, default=True
        Whether to list the subfolders too.

    Returns
    -------
    paths : ndarray of str objects, shape (n_images,)
        Sorted paths, ready to be passed as ``X`` to an estimator.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from sktransfer import list_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.jpg", "notes.txt"):
    ...     Image.new("RGB", (8, 8)).save(folder / name, format="PNG")
    >>> [pathlib.Path(p).name for p in list_images(folder)]
    ['a.jpg', 'b.png']
    """
    root = _check_folder(folder)
    owned = dict.fromkeys(_tree(root) if recursive else (), "a folder listed here")
    owned.update(_above(root))
    cut: list[str] = []
    paths = _walk(root, recursive, owned, {}, cut)
    _report(sorted(cut), root)
    return np.asarray(sorted(paths), dtype=object)


Identity = tuple[int, int]


def _identity(path) -> Identity:
    """A folder's device and inode (a link's: its target's)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _above(root: Path) -> dict[Identity, str]:
    """``root`` and every folder above it: a link to one of them would list
    ``root``'s images again (``cat/loop -> ..``, ``all -> .``)."""
    real = Path(os.path.realpath(root))
    return dict.fromkeys(
        map(_identity, [real, *real.parents]), "the folder itself or one above it"
    )


def _tree(top) -> set[Identity]:
    """``top`` and the folders below it, links not followed: what ``top``
    holds by itself."""
    held = set()
    for dirpath, dirnames, _ in os.walk(top):  # (followlinks=False)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        held.add(_identity(dirpath))
    return held


def _walk(top, recursive, owned, seen, cut) -> list[str]:
    """Image paths under ``top``, following links to folders, except those
    that lead to a folder of ``owned`` (identity -> what it is) or of
    ``seen`` (the folders listed so far): their paths go to ``cut``. Every
    folder is listed once, a link loop ends, and a folder is listed under
    its own path rather than through a link."""
    seen[_identity(top)] = str(top)
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, name)
            try:
                identity = _identity(path)
            except OSError:  # a dangling link
                continue
            if identity in seen or (os.path.islink(path) and identity in owned):
                if os.path.islink(path):
                    cut.append(f"{path} (leads to {_where(identity, owned, seen)})")
                continue
            seen[identity] = path
            kept.append(name)
        dirnames[:] = kept if recursive else []
        paths.extend(os.path.join(dirpath, f) for f in filenames if _is_image_name(f))
    return paths


def _where(identity: Identity, owned, seen) -> str:
    return owned.get(identity) or f"{seen[identity]!r}, listed already"


def _report(cut: list[str], root: Path) -> None:
    if cut:
        warn(
            f"{len(cut)} link(s) in {str(root)!r} not followed, so that each "
            f"image is listed once, with one label: {'; '.join(cut)}.",
            FolderLinkWarning,
        )


def load_image_folder(folder):
    """Image paths and labels from a folder of class folders.

    The layout of torchvision's ``ImageFolder``: each subfolder of ``folder``
    is a class, named by the subfolder, and holds that class's images (its
    own subfolders included). Images directly in ``folder`` are ignored.

    Each image is listed once, with one label. Links are followed (a class
    folder may be a link to a folder elsewhere), except a link that leads
    to ``folder`` or a folder above it (``all -> .``), into another class
    folder (``kitty -> cat``, ``cat/dogs -> ../dog``) or to a folder listed
    already (two links to one folder): it is cut, so a class folder that is
    such a link is no class, and a :class:`~sktransfer.FolderLinkWarning`
    names the links cut.

    Parameters
    ----------
    folder : str or path-like
        The folder holding one subfolder per class.

    Returns
    -------
    X : ndarray of str objects, shape (n_images,)
        Image paths, sorted by class then path.
    y : ndarray of str, shape (n_images,)
        The class (subfolder name) of each image.

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder, has no class folders, or a class folder
        has no images.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from sktransfer import load_image_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for label in ("cat", "dog"):
    ...     (root / label).mkdir()
    ...     Image.new("RGB", (8, 8)).save(root / label / "1.png")
    >>> X, y = load_image_folder(root)
    >>> y.tolist()
    ['cat', 'dog']
    """
    root = _check_folder(folder)
    entries = sorted(
        (entry for entry in os.scandir(root) if not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    entries = [entry for entry in entries if entry.is_dir()]
    if not entries:
        raise FileNotFoundError(
            f"The folder {str(folder)!r} has no class folders. Expected one "
            "subfolder per class, each holding that class's images; for a "
            "flat folder of images use list_images."
        )
    # A class folder holds its own tree; a link that leads into another
    # class's tree, to the root or above it, or to a folder listed already
    # (two links to one folder) is cut: each image once, with one label.
    # Real folders are listed first, so that a link never takes their name.
    real = [entry.name for entry in entries if not entry.is_symlink()]
    links = [entry.name for entry in entries if entry.is_symlink()]
    owned: dict[Identity, str] = {}
    for label in real:
        owned.update(dict.fromkeys(_tree(root / label), f"class folder {label!r}"))
    owned.update(_above(root))
    seen: dict[Identity, str] = {}
    cut: list[str] = []
    listed = {}
    for label in real + links:
        top = root / label
        identity = _identity(top)
        if label in links and (identity in owned or identity in seen):
            cut.append(f"{top} (leads to {_where(identity, owned, seen)})")
            continue
        listed[label] = sorted(_walk(top, True, owned, seen, cut))
    _report(sorted(cut), root)
    X, y = [], []
    for label in sorted(listed):
        paths = listed[label]
        if len(paths) == 0:
            raise FileNotFoundError(
                f"The class folder {str(root / label)!r} has no image files "
                f"(extensions {', '.join(EXTENSIONS)}). Remove it or add images."
            )
        X.extend(paths)
        y.extend([label] * len(paths))
    return np.asarray(X, dtype=object), np.asarray(y)


def read_list_file(file) -> list[str]:
    """The paths of a list file: one path per line, each line verbatim.

    Only the line terminator is removed: ``\\n``, or ``\\r\\n`` when every
    line of the file ends so (a file written on Windows). Spaces, a leading
    ``#`` and any other character are part of the path; the bytes of a line
    become a path as the file system's names do (:func:`os.fsdecode`), so a
    name that is not UTF-8 is listed as it is. A last line without a
    terminator counts. There are no comments.

    Raises
    ------
    ValueError
        If a line is empty (its number named: every line is a row), or the
        file lists no path.
    """
    data = Path(file).read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the last line's terminator
        lines.pop()
    ended = len(lines) if data.endswith(b"\n") else len(lines) - 1
    if ended and all(line.endswith(b"\r") for line in lines[:ended]):
        lines[:ended] = [line[:-1] for line in lines[:ended]]
    for number, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(
                f"Line {number} of the list file {str(file)!r} is empty. A list "
                "file holds one path per line, each line a row: remove the "
                "empty line."
            )
    if not lines:
        raise ValueError(f"The list file {str(file)!r} lists no path.")
    return [os.fsdecode(line) for line in lines]
