"""The model-source protocol, its registry, and what a source loads.

A *source* is where a ``model`` specification comes from: a torchvision
name, a timm or Hugging Face hub name, a user's module, a fitted
:class:`~sktransfer.FineTunedClassifier`. Each is one :class:`Source`
registered here; :func:`source_of` is the one place that looks at a
``model`` to decide which, and the functions below (loading, resolving
weights, identifying them, finding their cached file) ask that source.
A new kind of model (a text model, a file of word vectors) is a new entry,
not a new branch in a dozen places.
"""

from __future__ import annotations

import abc
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sktransfer import _preprocess
from sktransfer._families import Family
from sktransfer._identity import file_digest
from sktransfer.exceptions import WeightsUnavailableError

__all__ = [
    "Backbone",
    "Source",
    "check_model",
    "check_weights",
    "load_backbone",
    "named_preprocessing",
    "published_weights_file",
    "register_source",
    "resolve_weights",
    "source_of",
    "weights_at_hand",
    "weights_identity",
]


@dataclass
class Backbone:
    """A loaded backbone and what travels with it: an eval-mode CPU module
    whose classification head is an ``nn.Identity`` (its output is the
    model's standard embedding), the preprocessing its weights expect, and
    a description of those weights."""

    module: nn.Module
    preprocessing: _preprocess.Preprocessing
    weights: str | None  # "ResNet50_Weights.IMAGENET1K_V2", a path, or None
    family: Family
    head: str | None  # qualified name of the removed head, if any


class Source(abc.ABC):
    """Where a kind of ``model`` comes from, and how its weights are had.

    Subclasses implement :meth:`matches`, :meth:`identity` and
    :meth:`load`; the other methods have the answers of a source without
    published weights. An image source's :meth:`load` gives a
    :class:`Backbone`; a source of another ``kind`` gives what its
    estimators run (a text encoder and its tokenizer, say).
    """

    #: A short name, for messages and the registry.
    name: str = ""
    #: The inputs of the models it gives ("image", "text"): an estimator
    #: asks only the sources of its kind, so that a name means one thing.
    kind: str = "image"

    @abc.abstractmethod
    def matches(self, model) -> bool:
        """Whether ``model`` (the parameter) belongs to this source."""

    def check(self, model) -> None:
        """Raise ValueError, naming the fix, unless ``model`` is valid."""
        return None  # (by default, matching is enough)

    def resolve_weights(self, model, weights):
        """The ``weights`` parameter as this source uses it."""
        return weights

    @abc.abstractmethod
    def identity(self, model, weights, seed: int | None) -> str | None:
        """The weights' identity by content, cheap to compute before loading
        (None: not shareable, or invalid; :meth:`load` then says why)."""

    @abc.abstractmethod
    def load(self, model, weights) -> Backbone:
        """The backbone, a private copy the caller may change."""

    def cached_file(self, model, weights) -> Path | None:
        """The local file of published weights that a fitted estimator
        names (a path that may not exist); None for other weights."""
        return None

    def weights_at_hand(self, model) -> list[str]:
        """Names of published weights usable offline, best first."""
        return []

    def named_preprocessing(self, model, name: str) -> _preprocess.Preprocessing:
        """The preprocessing of the published weights called ``name``."""
        raise ValueError(
            "A weights name as 'preprocessing' needs a torchvision or timm model "
            f"name as 'model'. Got preprocessing={name!r}; pass a dict instead."
        )

    def unavailable(self) -> dict:
        """Published weights that could not be had in this process (their
        key -> the error), so that the next clone fails at once."""
        return {}

    def still_unavailable(self, resolved) -> Exception | None:
        """The error of resolved weights that could not be had and are
        still not in the local cache (None: they may be had)."""
        return None

    def check_available(self, model, weights) -> None:
        """Raise at once if these weights already could not be had in this
        process (called by ``clone``: no network access, a ``stat`` at most)."""
        if not self.unavailable():
            return
        try:
            resolved = self.resolve_weights(model, weights)
        except (ValueError, TypeError, OSError):
            return  # (fit says what is wrong)
        error = self.still_unavailable(resolved)
        if error is not None:
            raise WeightsUnavailableError(str(error))


#: The registered sources, in the order they are asked (first match wins):
#: the newest first, so that a source registered later (a text model's
#: names, say) is asked before torchvision's, which takes any string.
_SOURCES: list[Source] = []


def register_source(source: Source) -> Source:
    """Add ``source`` to the registry, asked before those registered earlier."""
    if any(s.name == source.name for s in _SOURCES):
        raise ValueError(f"A model source named {source.name!r} is registered already.")
    _SOURCES.insert(0, source)
    return source


def source_of(model, kind: str = "image") -> Source:
    """The source of a ``model`` parameter of an estimator whose inputs are
    of ``kind``; TypeError if there is none."""
    for source in _SOURCES:
        if source.kind == kind and source.matches(model):
            return source
    if kind != "image":
        raise TypeError(
            f"No model source of {kind} models takes a 'model' parameter of type "
            f"{type(model).__name__} ({model!r:.80})."
        )
    raise TypeError(
        "The 'model' parameter must be a torchvision model name such as "
        "'resnet50', a timm model name such as 'timm/convnext_tiny.fb_in22k', "
        "a torch.nn.Module or a fitted FineTunedClassifier. Got "
        f"{type(model).__name__}."
    )


def check_model(model) -> None:
    """Raise TypeError or ValueError, naming the fix, unless ``model`` is a
    valid ``model`` parameter."""
    source_of(model).check(model)


def resolve_weights(model, weights):
    """The ``weights`` parameter as ``model``'s source uses it: a weights
    enum member (torchvision), the timm name of published weights, a path,
    or None."""
    return source_of(model).resolve_weights(model, weights)


def weights_identity(model, weights, seed) -> str | None:
    """Identify a network's weights by content, before loading them.

    Published weights: their name and the digest of the cached file (or
    ``absent``); a checkpoint: the digest of its bytes; a module or a
    fitted classifier: :func:`~sktransfer._identity.module_digest` (code,
    settings, hooks, tensors); seeded random weights: the model and the seed
    (in one process, the same seed gives the same tensors). None: not
    shareable (unseeded random weights, or a specification that
    :func:`load_backbone` will refuse with a clear error).
    """
    for source in _SOURCES:
        if source.kind == "image" and source.matches(model):
            return source.identity(model, weights, seed)
    return None  # invalid; load_backbone says what is wrong


def random_or_file_identity(base: str, weights, seed) -> str | None:
    """The identity of random weights (seeded: shareable) or of a file."""
    if weights is None:
        return None if seed is None else f"{base}|random|{seed}"
    try:
        return f"{base}|file|{file_digest(weights)}"
    except (OSError, TypeError):
        return None  # a missing file: load_backbone says what is wrong


def not_a_weights_name(name) -> ValueError:
    """The error for a ``preprocessing`` string that names no weights."""
    return ValueError(
        "The 'preprocessing' parameter must be 'auto', a weights name, a "
        f"dict or a Preprocessing. Got {name!r}."
    )


def load_backbone(model, weights, seed: int | None = None) -> Backbone:
    """Load ``model`` with ``weights`` as an eval-mode CPU backbone.

    Building a model draws its random initialisation from torch's global
    generator, which is forked here and restored after: loading never changes
    the caller's random state. ``seed`` makes a random initialisation
    (``weights=None``) reproducible; without it the fork is seeded with fresh
    entropy.
    """
    source = source_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(secrets.randbits(63) if seed is None else seed)
        return source.load(model, weights)


def published_weights_file(model, weights) -> Path | None:
    """The cached file of the published weights a fitted estimator names
    (``weights_``), which may not exist; None for other weights (random, a
    checkpoint, a module)."""
    if not isinstance(weights, str):
        return None
    return source_of(model).cached_file(model, weights)


def weights_at_hand(model) -> list[str]:
    """Names of the model's published weights whose files are in the local
    cache, usable offline, best (DEFAULT) first."""
    return source_of(model).weights_at_hand(model)


def named_preprocessing(model, name: str) -> _preprocess.Preprocessing:
    """The preprocessing of the weights called ``name`` of ``model``."""
    return source_of(model).named_preprocessing(model, name)


def check_weights(model, weights, kind: str = "image") -> None:
    """Raise :class:`~sktransfer.exceptions.WeightsUnavailableError` at once
    if these published weights already could not be had in this process and
    are still not in the local cache.

    Called when an estimator is cloned: a grid search whose fits need
    weights that cannot be downloaded stops at the second candidate, in the
    parent, with the clear message, instead of failing every fit. Anything
    else is left to ``fit``.
    """
    if weights is None or isinstance(weights, os.PathLike):
        return
    for source in _SOURCES:
        if source.kind == kind and source.matches(model):
            source.check_available(model, weights)
            return
