"""Sharing fitted models without pickle: :func:`save` and :func:`load`.

Built on skops.io, scikit-learn's format for sharing: a zip of JSON and
arrays, loaded by building only the types that the loader trusts, never by
running code that the file carries. sktransfer's estimators take part with
plain data: while :func:`save` runs, their ``__getstate__`` gives their
parameters and fitted attributes as strings, numbers, lists, dicts and
arrays, their network's tensors as one safetensors blob (none at all for
published weights: their name and the digest of their file), and a checksum
of all of it. Their ``__setstate__`` checks the checksum before using
anything, so a state changed after saving is refused.

The types sktransfer trusts on its own are its estimators and
``Preprocessing``: their ``__setstate__`` runs sktransfer's code on plain
data. Any other type that a file needs and that skops does not trust by
default (a scikit-learn scorer or splitter inside a grid search, say) is
refused until the caller names it in ``trusted``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import stat
import struct
import zipfile
import zlib
from pathlib import Path

from sklearn.base import BaseEstimator

from sktransfer._common import replace_file, require
from sktransfer._finetune import FineTunedClassifier, FineTunedRegressor
from sktransfer._identity import file_digest
from sktransfer._persist import SHARING
from sktransfer._version import __version__
from sktransfer.exceptions import (  # (TamperedModelError: raised by load)
    TamperedModelError,
    UntrustedTypesError,
)

__all__ = ["TamperedModelError", "load", "save", "untrusted_types"]

#: Types whose ``__setstate__`` only reads plain data with sktransfer's code.
OUR_TYPES = [
    "sktransfer._extractor.PretrainedFeatureExtractor",
    "sktransfer._finetune.FineTunedClassifier",
    "sktransfer._finetune.FineTunedRegressor",
    "sktransfer._preprocess.Preprocessing",
    "sktransfer._word_vectors.PretrainedWordVectors",
    "sktransfer._text_extractor.PretrainedTextExtractor",
    "sktransfer._text_finetune.FineTunedTextClassifier",
]
MODEL_FILE = "model.skops"
#: What a model file may inflate to, by default (``max_bytes=None``): this
#: many times its own size (deflate shrinks sktransfer's JSON about tenfold,
#: its tensors by ~7%), at least ``INFLATE_FLOOR``, at most ``INFLATE_CAP``.
INFLATE_RATIO = 100
INFLATE_FLOOR = 256 << 20
INFLATE_CAP = 16 << 30
#: The most members a model file may have (one per array, and the schema).
MAX_MEMBERS = 100_000
_CHUNK = 1 << 20


# -- save and load ---------------------------------------------------------------


def _ours(obj) -> list:
    """The sktransfer estimators inside ``obj`` (pipelines, searches, nested
    models), each once."""
    found, seen = [], set()

    def walk(value):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, BaseEstimator):
            if type(value).__module__.startswith("sktransfer."):
                found.append(value)
            for item in vars(value).values():
                walk(item)

    walk(obj)
    return found


def _paths(path) -> tuple[Path, Path, Path | None]:
    """The model file, the card and the config of a saved model: a folder
    (``model.skops``, ``README.md``, ``config.json``: the Hugging Face hub's
    layout) or a ``*.skops`` file (its card beside it as ``*.md``)."""
    path = Path(path)
    if path.suffix == ".skops":
        return path, path.with_suffix(".md"), None
    return path / MODEL_FILE, path / "README.md", path / "config.json"


def save(obj, path, *, metrics=None) -> Path:
    """Save a fitted model without pickle, with a model card.

    Works for any fitted sktransfer estimator and for scikit-learn pipelines
    and searches that contain them (and the estimators after them). Built on
    ``skops.io``: sktransfer's estimators are stored as plain data and their
    tensors as safetensors; published weights (e.g. ImageNet) are stored as
    their name and the digest of their file, not as tensors.

    Read more in the user guide, ``docs/sharing.md``.

    Parameters
    ----------
    obj : estimator
        The fitted model.
    path : str or path-like
        A folder (created) that receives ``model.skops``, the model card
        ``README.md`` and ``config.json``: the layout of a Hugging Face hub
        repository, ready to push. Or a file ending with ``.skops``, with
        its card beside it as ``.md``.
    metrics : dict or str, optional
        What the card reports of the model's quality: ``{"name": value}``,
        or a text (a table) put in as it is.

    Returns
    -------
    model_file : Path
        The ``.skops`` file written.

    Raises
    ------
    TypeError
        If the model holds a module of your own (which cannot be rebuilt
        without pickle) or an ``EmbeddingCache`` object; the message says
        how to share it instead.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> import sktransfer
    >>> X = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
    >>> extractor = sktransfer.PretrainedFeatureExtractor(
    ...     model="resnet18", weights=None, random_state=0, verbose=False,
    ...     preprocessing={"resize_size": 32, "crop_size": 32}).fit(X)
    >>> folder = tempfile.mkdtemp()
    >>> _ = sktransfer.save(extractor, folder)
    >>> again = sktransfer.load(folder)
    >>> bool((again.transform(X) == extractor.transform(X)).all())
    True
    """
    sio = require("skops.io", "share", "sktransfer.save")
    model_file, card_file, config_file = _paths(path)
    token = SHARING.set(True)
    try:
        # Deflated: the JSON shrinks about tenfold; float tensors by ~7%.
        data = sio.dumps(obj, compression=zipfile.ZIP_DEFLATED)
    finally:
        SHARING.reset(token)
    config = _config(obj)
    card = _card(obj, config, model_file, metrics)
    replace_file(model_file, lambda tmp: tmp.write_bytes(data))
    replace_file(card_file, lambda tmp: tmp.write_text(card))
    if config_file is not None:
        text = json.dumps(config, indent=2) + "\n"
        replace_file(config_file, lambda tmp: tmp.write_text(text))
    return model_file


def _read(path, max_bytes=None) -> bytes:
    """The bytes of a saved model, refused before anything is inflated if
    its members declare more than ``max_bytes`` (:func:`_check_sizes`)."""
    model_file = Path(path) if Path(path).is_file() else _paths(path)[0]
    try:
        with open(model_file, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # (a FIFO would block, a device
                raise OSError(0, "not a regular file")  # never end)
            data = f.read(st.st_size)
    except OSError as exc:
        raise FileNotFoundError(
            f"No saved model at {str(path)!r} ({exc.strerror}): expected a folder "
            f"holding {MODEL_FILE} or a .skops file written by sktransfer.save."
        ) from exc
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(
            f"{str(model_file)!r} is not a file written by sktransfer.save (not "
            "a skops zip; a pickle, perhaps). It is not opened: loading a pickle "
            "runs whatever code it carries. Load it with joblib only if you trust "
            "its source."
        )
    _check_sizes(data, model_file, max_bytes)
    return data


def inflate_budget(size: int, max_bytes=None) -> int:
    """The most bytes a model file of ``size`` bytes may inflate to."""
    if max_bytes is not None:
        return int(max_bytes)
    return min(max(INFLATE_RATIO * size, INFLATE_FLOOR), INFLATE_CAP)


def _check_sizes(data: bytes, model_file, max_bytes=None) -> None:
    """Refuse a zip whose members declare more than the budget, before any
    is inflated, then one whose member inflates to more than it declares.

    zipfile cuts a member at its declared size, but only after inflating a
    whole read at once (``ZipFile.read`` inflates up to 2 GiB in one call),
    so a member that lies about its size is found here, by inflating each
    one in bounded steps and counting (:func:`_check_stream`)."""
    budget = inflate_budget(len(data), max_bytes)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise ValueError(
            f"{str(model_file)!r} is not a readable skops file ({exc})."
        ) from exc
    if len(members) > MAX_MEMBERS:
        raise ValueError(
            f"{str(model_file)!r} has {len(members)} members, more than the "
            f"{MAX_MEMBERS} a model file written by sktransfer.save may have. It "
            "is not loaded."
        )
    total = 0
    for member in members:
        total += member.file_size
        if total > budget:
            ratio = member.file_size / max(member.compress_size, 1)
            raise ValueError(
                f"{str(model_file)!r} would inflate to more than max_bytes="
                f"{budget} bytes: its member {member.filename!r} declares "
                f"{member.file_size} bytes from {member.compress_size} compressed "
                f"({ratio:.0f}x), {total} bytes in all so far for a file of "
                f"{len(data)} bytes (a compression bomb?). Nothing was inflated. "
                "If you trust this file and have the memory, pass a larger "
                "max_bytes."
            )
    view = memoryview(data)
    for member in members:
        _check_stream(view, member, model_file)


def _check_stream(data: memoryview, member: zipfile.ZipInfo, model_file) -> None:
    """Inflate ``member`` in steps of at most ``_CHUNK`` bytes, refusing it
    as soon as it gives more than it declares."""

    def refuse(why: str):
        return ValueError(
            f"{str(model_file)!r} is damaged or forged: its member "
            f"{member.filename!r} {why}. It is not loaded."
        )

    offset = member.header_offset
    header = bytes(data[offset : offset + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise refuse("has no local header where the directory says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = offset + 30 + name_length + extra_length
    raw = data[start : start + member.compress_size]
    if member.compress_type == zipfile.ZIP_STORED:
        if member.file_size != member.compress_size:
            raise refuse(
                f"is stored uncompressed, yet declares {member.file_size} bytes "
                f"for {member.compress_size}"
            )
        return
    if member.compress_type != zipfile.ZIP_DEFLATED:
        raise refuse(
            f"uses compression method {member.compress_type}; files written by "
            "sktransfer.save are stored or deflated"
        )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced = 0
    try:
        for position in range(0, len(raw), _CHUNK):
            pending: bytes | memoryview = raw[position : position + _CHUNK]
            while pending:
                produced += len(inflater.decompress(pending, _CHUNK))
                if produced > member.file_size:
                    raise refuse(
                        f"inflates to more than the {member.file_size} bytes it "
                        f"declares (from {member.compress_size} compressed)"
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        raise refuse(f"does not inflate ({exc})") from exc


@contextlib.contextmanager
def _zip_errors(path):
    """A member that inflates to other bytes than its header declares (a
    longer stream is cut at the declared size, then fails its CRC check):
    a ValueError naming the file."""
    try:
        yield
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"{str(path)!r} is damaged or forged: {exc} (a member inflates to "
            "other bytes than its header declares). It is not loaded."
        ) from exc


def untrusted_types(path, *, max_bytes=None) -> list[str]:
    """The types a saved model needs that neither skops nor sktransfer
    trusts by default: check them before passing them to :func:`load`.

    Parameters
    ----------
    path : str or path-like
        A folder or ``.skops`` file written by :func:`save`.
    max_bytes : int, optional
        The most bytes the file's members may inflate to, checked against
        the sizes they declare before any is inflated. Default: 100 times
        the file's size, at least 256 MiB and at most 16 GiB. A file that
        declares more (a compression bomb) is refused with a ValueError
        naming the member and its sizes.

    Returns
    -------
    types : list of str
        Fully qualified type names, e.g.
        ``"sklearn.model_selection._split.StratifiedKFold"``.
    """
    sio = require("skops.io", "share", "sktransfer.load")
    return _untrusted(sio, _read(path, max_bytes), path)


def _untrusted(sio, data: bytes, path) -> list[str]:
    try:
        with _zip_errors(path):
            needed = sio.get_untrusted_types(data=data)
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"This file is not a readable skops file ({type(exc).__name__}: {exc})."
        ) from exc
    return [name for name in needed if name not in OUR_TYPES]


def load(path, *, trusted=None, max_bytes=None):
    """Load a model saved by :func:`save`, running no code from the file.

    Only trusted types are built: those skops trusts by default (scikit-learn
    estimators, numpy arrays...), sktransfer's estimators, and the types
    listed in ``trusted``. Published weights are loaded from the torch hub
    cache (downloaded if needed) and checked against the digest saved with
    the model.

    Parameters
    ----------
    path : str or path-like
        A folder or ``.skops`` file written by :func:`save` (a Hugging Face
        hub repository downloaded with ``huggingface_hub.snapshot_download``
        is such a folder).
    trusted : list of str, optional
        Further types to trust, after checking them: see
        :func:`untrusted_types`.
    max_bytes : int, optional
        The most bytes the file's members may inflate to, checked against
        the sizes they declare before any is inflated. Default: 100 times
        the file's size, at least 256 MiB and at most 16 GiB. A file that
        declares more (a compression bomb) is refused with a ValueError
        naming the member and its sizes.

    Returns
    -------
    obj : estimator
        The model, ready to predict or transform.

    Raises
    ------
    UntrustedTypesError
        If the file needs types that are not trusted (they are listed).
    TamperedModelError
        If an estimator's state changed after it was saved.
    WeightsUnavailableError
        If published weights are not in the torch cache and cannot be
        downloaded.
    ValueError
        If the weights file in the torch cache differs from the one the model
        was saved with, the file is not a skops file, or it would inflate
        to more than ``max_bytes``.
    """
    sio = require("skops.io", "share", "sktransfer.load")
    data = _read(path, max_bytes)
    untrusted = _untrusted(sio, data, path)
    refused = [name for name in untrusted if name not in (trusted or [])]
    if refused:
        raise UntrustedTypesError(
            f"{str(path)!r} needs types that are not trusted: {refused}. Loading "
            "builds them, so trust only types you know to be safe: if they are, "
            f"pass trusted={refused!r} (sktransfer.untrusted_types(path) lists "
            "them)."
        )
    with _zip_errors(path):
        obj = sio.loads(data, trusted=OUR_TYPES + untrusted)
    for estimator in _ours(obj):
        check_weights_file(estimator)
        if hasattr(estimator, "_check_identity"):
            estimator._check_identity()  # (cache_key_ recomputed, never trusted)
    return obj


def check_weights_file(estimator) -> None:
    """Published weights: loaded (downloaded if needed) and checked against
    the digest of the file the estimator was saved with."""
    saved = estimator._pop_saved_weights_digest()
    if saved is None:
        return
    estimator._network()  # loads the weights: downloads, or says it cannot
    here = estimator._published_weights_file()
    if file_digest(here) != saved:
        raise ValueError(
            f"The weights file {str(here)!r} ({estimator.weights_}) differs from "
            "the one this model was saved with (their digests differ): its "
            "outputs would differ too. Replace that file with the published one "
            "(delete it to download it again), or ask the model's author which "
            "weights they used."
        )


# -- the card and the config -----------------------------------------------------


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"sktransfer": __version__, "python": platform.python_version()}
    packages = ("torch", "torchvision", "scikit-learn", "numpy", "skops", "safetensors")
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):  # (not installed)
            out[package] = version(package)
    return out


def _describe(estimator) -> dict:
    """What a card and a config say of one sktransfer estimator."""
    out = {
        "estimator": type(estimator).__name__,
        "model": estimator.model
        if isinstance(estimator.model, str)
        else f"{type(estimator.model).__name__}(model={estimator.model.model!r})",
        "weights": getattr(estimator, "weights_", str(estimator.weights)),
    }
    published = estimator._published_weights_file()
    if published is not None:
        out["weights_file_digest"] = f"blake2b:{file_digest(published)}"
    if isinstance(estimator, (FineTunedClassifier, FineTunedRegressor)):
        out["layer"] = estimator.layer
        out["hidden_layer_sizes"] = repr(estimator.hidden_layer_sizes)
        out["trainable_layers"] = estimator.trainable_layers
        if isinstance(estimator, FineTunedClassifier):
            out["classes"] = [str(c) for c in getattr(estimator, "classes_", [])]
    else:
        out["layers"] = getattr(estimator, "layers_", estimator.layer)
        out["pooling"] = estimator.pooling
        out["n_features_out"] = getattr(estimator, "n_features_out_", None)
    out["preprocessing"] = repr(getattr(estimator, "preprocessing_", None))
    out["precision"] = getattr(estimator, "precision_", estimator.precision)
    return out


def _config(obj) -> dict:
    """``config.json``: what the model is made of (its fitted sktransfer
    estimators), and the versions it was saved with."""
    fitted = [e for e in _ours(obj) if hasattr(e, "preprocessing_")]
    return {
        "library_name": "sktransfer",
        "model_file": MODEL_FILE,
        "format": "skops",
        "estimator": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "components": [_describe(e) for e in fitted],
        "versions": _versions(),
    }


def _card(obj, config: dict, model_file: Path, metrics) -> str:
    """The model card (``README.md``): ``config`` for people."""
    import sklearn

    with sklearn.config_context(print_changed_only=True):
        summary = repr(obj)
    components = ""
    for described in config["components"]:
        rows = "\n".join(f"| {k} | `{v}` |" for k, v in described.items())
        components += f"\n| | |\n| --- | --- |\n{rows}\n"
    if metrics is None:
        quality = "No metrics were given when it was saved."
    elif isinstance(metrics, dict):
        quality = "| metric | value |\n| --- | --- |\n" + "\n".join(
            f"| {k} | {v} |" for k, v in metrics.items()
        )
    else:
        quality = f"```text\n{metrics}\n```"
    versions = "\n".join(f"| {k} | {v} |" for k, v in config["versions"].items())
    where = model_file.parent.name if model_file.name == MODEL_FILE else model_file.name
    return f"""---
library_name: sktransfer
tags:
- sktransfer
- scikit-learn
- transfer-learning
- image-classification
---

# {type(obj).__name__} ({where})

A fitted model saved by `sktransfer.save`: scikit-learn objects and
sktransfer estimators as plain data in `{model_file.name}` (skops format),
network tensors as safetensors inside it, published weights by name and
digest. Loading it runs no code from the file.

```text
{summary}
```

## Backbones
{components or "(none)"}
## Quality

{quality}

## Versions it was saved with

| package | version |
| --- | --- |
{versions}

## How to load it

```python
import sktransfer

model = sktransfer.load("{where}")  # the folder, or the .skops file
```

`sktransfer.load` builds only trusted types; if it refuses some, check them
with `sktransfer.untrusted_types(path)` and pass `trusted=[...]`. Published
weights come from the torch hub cache (downloaded if needed) and are checked
against the digest above.
"""
