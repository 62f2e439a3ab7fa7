"""Text models: a Hugging Face hub id or a local model folder.

A ``model`` of a text estimator is a folder in the transformers format
(``config.json``, the weights, the tokenizer files), possibly a
sentence-transformers folder (``modules.json``, ``1_Pooling/``...), or the
id of such a repository on the Hugging Face hub (``"org/name"``), found in
the local hub cache first. A repository missing there is downloaded only
when the hub is not offline (``HF_HUB_OFFLINE``); a download that fails, or
an offline miss, is a :class:`~sktransfer.exceptions.WeightsUnavailableError`
at once, naming the cache folder and how to pass a local folder instead.

The identity of a model is the content of its files (weights, configuration,
tokenizer, sentence-transformers modules), never its name or path. Loaded
models are shared between the estimators that use the same files (a grid
search's clones): they are only read.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sktransfer._common import require
from sktransfer._identity import digest, file_digest
from sktransfer._memo import Memo
from sktransfer._sources.base import Source
from sktransfer.exceptions import WeightsUnavailableError

__all__ = ["SentencePooling", "TextModel", "TransformersSource", "clear", "hub_cache"]

#: Files never part of a model's identity: documentation, and other
#: runtimes' exports that a folder may carry beside the torch weights.
_SKIPPED_DIRS = frozenset({"onnx", "openvino", ".git", ".cache"})
_SKIPPED_SUFFIXES = (".md", ".onnx", ".h5", ".msgpack", ".ot", ".gitattributes")
#: What a download of a hub repository fetches.
_DOWNLOADED = ["*.json", "*.txt", "*.model", "*.safetensors", "*/config.json"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
#: Pooling modes of sentence-transformers' Pooling module that are reproduced.
ST_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")


@dataclass(frozen=True)
class SentencePooling:
    """How a sentence-transformers folder makes its sentence embedding from
    the last hidden state: a pooling mode and a final normalisation."""

    mode: str  # one of ST_MODES
    normalize: bool
    lowercase: bool = False  # sentence_bert_config.json's do_lower_case


@dataclass
class TextModel:
    """A loaded text encoder and what travels with it (shared, read-only)."""

    encoder: nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    folder: Path
    identity: str
    n_hidden_states: int  # transformer blocks + 1 (the embedding layer)
    width: int
    max_length: int  # the longest input the model takes, in tokens
    sentence: SentencePooling | None
    unsupported: str | None = field(default=None)  # why layer=None cannot run
    #: Held while the tokenizer runs: a fast tokenizer's settings (truncation,
    #: stride) are per object, and threads (Dask's) share the model.
    lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def on(self, device: torch.device) -> TextModel:
        """This model with its encoder on ``device`` (one copy per device and
        process, shared like the model)."""
        if device.type == "cpu":
            return self
        key = (self.identity, str(device))
        moved = _LOADED.get(key)
        if moved is None:
            moved = copy.copy(self)
            moved.encoder = copy.deepcopy(self.encoder).to(device)
            _LOADED.put(key, moved)
        return moved


#: Loaded models by identity (and device), shared by the estimators that
#: use them.
_LOADED = Memo(size=4)


def clear() -> None:
    """Forget the loaded models (estimators keep theirs)."""
    _LOADED.clear()


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as the environment sets it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    hub = require("huggingface_hub", "text", "A text model")
    return Path(hub.constants.HF_HUB_CACHE)


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.upper() in ("1", "ON", "YES", "TRUE"):
        return True
    hub = require("huggingface_hub", "text", "A text model")
    return bool(hub.constants.HF_HUB_OFFLINE)


def _looks_like_a_path(model) -> bool:
    if isinstance(model, os.PathLike):
        return True
    text = str(model)
    return (
        text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
    )


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / name).is_file() for name in _WEIGHTS
    )


def _unavailable(model, cache: Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"The text model {model!r} is not in the Hugging Face hub cache "
        f"({str(cache)!r}) and {reason}. Download it where there is a network "
        "(huggingface_hub.snapshot_download or the hf command), copy that "
        "cache folder here (or set HF_HUB_CACHE to it), or pass the path of a "
        "local model folder as model='path/to/folder'."
    )


class TransformersSource(Source):
    """Hugging Face transformers models: hub ids and local folders."""

    name = "transformers"
    kind = "text"

    def __init__(self):
        self._failed: set[str] = set()  # hub ids that could not be had here
        self._lock = threading.Lock()

    def matches(self, model) -> bool:
        return isinstance(model, (str, os.PathLike))

    def check(self, model) -> None:
        if isinstance(model, str) and not model.strip():
            raise ValueError(
                "The 'model' parameter must be a Hugging Face hub id such as "
                "'sentence-transformers/all-MiniLM-L6-v2' or the path of a model "
                "folder. Got an empty string."
            )

    def folder(self, model) -> Path:
        """The local folder of ``model``: the folder itself, or the hub
        cache's snapshot of the repository (downloaded if the hub is
        online); WeightsUnavailableError or FileNotFoundError otherwise."""
        self.check(model)
        path = Path(os.path.expanduser(os.fspath(model)))
        if path.is_dir():
            if not _is_model_folder(path):
                raise FileNotFoundError(
                    f"The folder {str(path)!r} is not a transformers model folder: "
                    f"it needs config.json and one of {', '.join(_WEIGHTS)}."
                )
            return path
        if _looks_like_a_path(model):
            raise FileNotFoundError(
                f"The model folder {os.fspath(model)!r} does not exist. Pass the "
                "path of a folder holding config.json, the weights and the "
                "tokenizer files, or a Hugging Face hub id such as "
                "'sentence-transformers/all-MiniLM-L6-v2'."
            )
        return self._hub_folder(str(model))

    def _hub_folder(self, repo: str) -> Path:
        hub = require("huggingface_hub", "text", "A text model")
        cache = hub_cache()
        try:
            found = Path(
                hub.snapshot_download(repo, cache_dir=cache, local_files_only=True)
            )
            if _is_model_folder(found):
                return found
        except (OSError, ValueError):  # not cached (or not a valid repo id)
            pass
        with self._lock:
            failed = repo in self._failed
        if _offline():
            raise _unavailable(repo, cache, "the hub is offline (HF_HUB_OFFLINE)")
        if failed:
            raise _unavailable(repo, cache, "could not be downloaded earlier")
        try:
            found = Path(
                hub.snapshot_download(
                    repo, cache_dir=cache, allow_patterns=_DOWNLOADED, etag_timeout=5
                )
            )
        except Exception as exc:  # no network, no such repository, ...
            with self._lock:
                self._failed.add(repo)
            raise _unavailable(
                repo, cache, f"could not be downloaded ({type(exc).__name__}: {exc})"
            ) from exc
        if not _is_model_folder(found):
            raise _unavailable(repo, cache, "its download holds no torch weights")
        return found

    def identity(self, model, weights=None, seed=None) -> str:
        """A digest of the folder's files (weights, configuration,
        tokenizer, sentence-transformers modules), each by content."""
        folder = self.folder(model)
        found = []  # (path relative to the folder, path)
        # (as rglob did: symbolic links to folders are not entered)
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
            for name in files:
                path = os.path.join(root, name)
                if (
                    name.endswith(_SKIPPED_SUFFIXES)
                    or name.startswith("README")
                    or not os.path.isfile(path)
                ):
                    continue
                found.append((Path(path).relative_to(folder), path))
        found.sort(key=lambda item: item[0])  # (Path order, as before)
        parts = [
            f"{relative.as_posix()}={file_digest(path)}" for relative, path in found
        ]
        return digest("text-model", *parts)

    def load(self, model, weights=None) -> TextModel:  # type: ignore[override]
        """The model of these files, loaded once per process (shared)."""
        folder = self.folder(model)
        identity = self.identity(model)
        loaded = _LOADED.get(identity)
        if loaded is None:
            loaded = _load(folder, identity)
            _LOADED.put(identity, loaded)
        return loaded

    def cached_file(self, model, weights=None) -> Path | None:
        """The weights file of the folder (safetensors first)."""
        try:
            folder = self.folder(model)
        except (OSError, ValueError):
            return None
        for name in _WEIGHTS:
            if (folder / name).is_file():
                return folder / name
        return None

    def check_available(self, model, weights=None) -> None:
        """Raise at once if this hub id could not be had earlier in this
        process and is still not cached (no network access)."""
        if isinstance(model, str) and model in self._failed:
            self.folder(model)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sentence_pooling(folder: Path) -> tuple[SentencePooling | None, int | None, str]:
    """What a sentence-transformers folder says: its pooling, its maximum
    sequence length, and why ``layer=None`` cannot reproduce it ("" if it
    can); ``(None, None, "")`` for a plain transformers folder."""
    if not (folder / "modules.json").is_file():
        return None, None, ""
    modules = _read_json(folder / "modules.json")
    kinds = [m.get("type", "").rpartition(".")[2] for m in modules]
    max_length, lowercase = None, False
    if (folder / "sentence_bert_config.json").is_file():
        config = _read_json(folder / "sentence_bert_config.json")
        max_length = config.get("max_seq_length")
        lowercase = bool(config.get("do_lower_case", False))
    other = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if other or "Pooling" not in kinds:
        why = (
            f"its modules are {kinds}; sktransfer reproduces Transformer, "
            "Pooling and Normalize only"
        )
        return None, max_length, why
    pooling = modules[kinds.index("Pooling")]
    config = _read_json(folder / pooling.get("path", "1_Pooling") / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        chosen = [
            m
            for m in ST_MODES
            if config.get(f"pooling_mode_{m}_token")
            or (config.get(f"pooling_mode_{m}_tokens"))
        ]
        mode = chosen[0] if len(chosen) == 1 else "+".join(chosen)
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(
        mode, mode
    )
    if mode == "mean_sqrt_len":
        mode = "mean_sqrt_len_tokens"
    if mode not in ST_MODES:
        return None, max_length, f"its pooling mode is {mode!r}"
    return SentencePooling(mode, "Normalize" in kinds, lowercase), max_length, ""


def _load(folder: Path, identity: str) -> TextModel:
    transformers = require("transformers", "text", "A text model")
    sentence, st_length, unsupported = _sentence_pooling(folder)
    try:
        # (a model's missing tensors are drawn from torch's global generator:
        # forked, so that loading never changes the caller's random state)
        with torch.random.fork_rng(devices=[]):
            encoder = transformers.AutoModel.from_pretrained(
                folder, local_files_only=True
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True, use_fast=True
        )
    except OSError as exc:
        raise WeightsUnavailableError(
            f"The model folder {str(folder)!r} cannot be loaded by transformers "
            f"({exc})."
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"The model folder {str(folder)!r} has no fast tokenizer "
            "(tokenizer.json), which sktransfer needs to count and split long "
            "texts. Convert it with transformers: "
            "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)."
        )
    encoder.float().eval()  # (float32 whatever the checkpoint's dtype)
    encoder.requires_grad_(False)
    config = encoder.config
    limits = [
        getattr(config, "max_position_embeddings", None),
        tokenizer.model_max_length if tokenizer.model_max_length < 1e6 else None,
        st_length,
    ]
    max_length = min((int(x) for x in limits if x), default=512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        # (their positions start after the padding index)
        positions = getattr(config, "max_position_embeddings", 514)
        max_length = min(max_length, positions - 2)
    return TextModel(
        encoder=encoder,
        tokenizer=tokenizer,
        folder=folder,
        identity=identity,
        n_hidden_states=int(config.num_hidden_layers) + 1,
        width=int(config.hidden_size),
        max_length=max_length,
        sentence=sentence,
        unsupported=unsupported or None,
    )
