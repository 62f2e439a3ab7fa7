"""From a directory to ``X`` (and ``y``) in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sktransfer._images.decode import EXTENSIONS

__all__ = ["list_images", "load_image_folder"]


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
    starting with ``.``) are skipped. Links to folders are followed, but no
    folder is listed twice, so a link loop ends. The paths are not opened here: a
    file that turns out not to be an image is reported by ``transform``.

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
    return np.asarray(sorted(_walk(root, recursive, set())), dtype=object)


def _walk(root: Path, recursive: bool, seen: set) -> list[str]:
    """Image paths under ``root``, following links to folders, but never
    into a folder already listed (``seen`` holds their device and inode):
    a link loop (``cat/loop -> ..``) ends, and each folder is listed once."""
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.stat(dirpath)
        seen.add((here.st_dev, here.st_ino))
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:  # a dangling link
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                kept.append(name)
        dirnames[:] = kept if recursive else []
        paths.extend(os.path.join(dirpath, f) for f in filenames if _is_image_name(f))
    return paths


def load_image_folder(folder):
    """Image paths and labels from a folder of class folders.

    The layout of torchvision's ``ImageFolder``: each subfolder of ``folder``
    is a class, named by the subfolder, and holds that class's images (its
    own subfolders included). Images directly in ``folder`` are ignored.

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
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(
            f"The folder {str(folder)!r} has no class folders. Expected one "
            "subfolder per class, each holding that class's images; for a "
            "flat folder of images use list_images."
        )
    # Folders are listed once over the whole tree: a link from one class
    # folder to another (or to the root) never labels the other's images.
    seen = {
        (st.st_dev, st.st_ino)
        for st in map(os.stat, [root, *(root / label for label in classes)])
    }
    X, y = [], []
    for label in classes:
        paths = sorted(_walk(root / label, True, seen))
        if len(paths) == 0:
            raise FileNotFoundError(
                f"The class folder {str(root / label)!r} has no image files "
                f"(extensions {', '.join(EXTENSIONS)}). Remove it or add images."
            )
        X.extend(paths)
        y.extend([label] * len(paths))
    return np.asarray(X, dtype=object), np.asarray(y)
