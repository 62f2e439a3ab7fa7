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
import platform
import zipfile
from pathlib import Path

from sklearn.base import BaseEstimator

from sktransfer._common import replace_file, require
from sktransfer._finetune import FineTunedClassifier
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
    "sktransfer._preprocess.Preprocessing",
    "sktransfer._text_extractor.PretrainedTextExtractor",
]
MODEL_FILE = "model.skops"


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


def _read(path) -> bytes:
    model_file = Path(path) if Path(path).is_file() else _paths(path)[0]
    try:
        data = model_file.read_bytes()
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
    return data


def untrusted_types(path) -> list[str]:
    """The types a saved model needs that neither skops nor sktransfer
    trusts by default: check them before passing them to :func:`load`.

    Parameters
    ----------
    path : str or path-like
        A folder or ``.skops`` file written by :func:`save`.

    Returns
    -------
    types : list of str
        Fully qualified type names, e.g.
        ``"sklearn.model_selection._split.StratifiedKFold"``.
    """
    sio = require("skops.io", "share", "sktransfer.load")
    return _untrusted(sio, _read(path))


def _untrusted(sio, data: bytes) -> list[str]:
    try:
        needed = sio.get_untrusted_types(data=data)
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"This file is not a readable skops file ({type(exc).__name__}: {exc})."
        ) from exc
    return [name for name in needed if name not in OUR_TYPES]


def load(path, *, trusted=None):
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
        was saved with, or the file is not a skops file.
    """
    sio = require("skops.io", "share", "sktransfer.load")
    data = _read(path)
    untrusted = _untrusted(sio, data)
    refused = [name for name in untrusted if name not in (trusted or [])]
    if refused:
        raise UntrustedTypesError(
            f"{str(path)!r} needs types that are not trusted: {refused}. Loading "
            "builds them, so trust only types you know to be safe: if they are, "
            f"pass trusted={refused!r} (sktransfer.untrusted_types(path) lists "
            "them)."
        )
    obj = sio.loads(data, trusted=OUR_TYPES + untrusted)
    for estimator in _ours(obj):
        check_weights_file(estimator)
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
        else f"FineTunedClassifier(model={estimator.model.model!r})",
        "weights": getattr(estimator, "weights_", str(estimator.weights)),
    }
    published = estimator._published_weights_file()
    if published is not None:
        out["weights_file_digest"] = f"blake2b:{file_digest(published)}"
    if isinstance(estimator, FineTunedClassifier):
        out["trainable_layers"] = estimator.trainable_layers
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
