"""Errors and warnings raised by sktransfer.

Every warning the library emits is a :class:`SktransferWarning` of one of
the categories below, so that a program can filter sktransfer's warnings by
category (``warnings.filterwarnings("ignore", category=...)``), never by the
text of a message. This module imports nothing of the package: every other
module may import it.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "CacheWarning",
    "DeviceWarning",
    "FolderLinkWarning",
    "FusionWarning",
    "ImageReadError",
    "LayerError",
    "MissingTextsWarning",
    "NumericsWarning",
    "OutOfVocabularyWarning",
    "PerformanceWarning",
    "PrecisionFallbackWarning",
    "PreprocessingWarning",
    "ProbeUsageError",
    "ProbeWarning",
    "QuantizationError",
    "SktransferWarning",
    "TamperedModelError",
    "TextInputError",
    "TruncationWarning",
    "UnreadableImagesWarning",
    "UntrustedTypesError",
    "WeightsUnavailableError",
]


# -- errors ----------------------------------------------------------------------


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be obtained (offline and not in the cache).

    The message says where torch looks for the file and how to pass a local
    checkpoint instead. The original exception is chained as ``__cause__``.
    """


class ImageReadError(OSError, ValueError):
    """An input image could not be read or decoded.

    Raised for a missing file, a directory, a file that cannot be read, an
    empty or truncated file, a file that is not an image of an accepted
    format, an image larger than ``max_pixels``, or pixel values outside the
    accepted range. Both an ``OSError`` and a ``ValueError``, so either
    ``except`` clause catches it. The original exception, if any, is chained
    as ``__cause__``.

    Attributes
    ----------
    index : int or None
        Position of the image in the input (its row in the output).
    path : str or None
        The file, when the image was given as a path.
    """

    def __init__(self, message, *, index=None, path=None):
        super().__init__(message)
        self.index = index
        self.path = path


class TextInputError(ValueError):
    """A row of the input has no text (None, NaN, ``pd.NA``).

    Attributes
    ----------
    index : int or None
        Position of the text in the input (its row in the output).
    """

    def __init__(self, message, *, index=None):
        super().__init__(message)
        self.index = index


class LayerError(ValueError):
    """The ``layer`` parameter names no cut point of the model.

    The message names the closest cut points and
    :func:`sktransfer.list_layers`; the command line exits with status 2.
    """


class TamperedModelError(ValueError):
    """A shared model whose contents changed after it was saved
    (:func:`sktransfer.load`)."""


class UntrustedTypesError(ValueError):
    """A shared model that needs types the caller has not trusted
    (:func:`sktransfer.load`; see :func:`sktransfer.untrusted_types`)."""


class ProbeUsageError(ValueError):
    """A model, weights or layer specification that :func:`sktransfer.probe`
    cannot use."""


class QuantizationError(RuntimeError):
    """A network that cannot be quantized to int8. The extractor catches it,
    warns with :class:`PrecisionFallbackWarning` and runs a float precision."""


# -- warnings --------------------------------------------------------------------


class SktransferWarning(UserWarning):
    """Base class of every warning sktransfer emits."""


class UnreadableImagesWarning(SktransferWarning):
    """Some images could not be read (``on_error="nan"``): their rows are NaN,
    and the estimator's ``errors_`` names them."""


class NumericsWarning(SktransferWarning):
    """A fitted estimator runs in reduced precision on other kernels than it
    was fitted on (a pickle, a shared model, another machine): its outputs may
    shift by a few percent. Or computed rows hold inf or NaN values (float16
    overflows above 65504)."""


class PrecisionFallbackWarning(SktransferWarning):
    """The requested precision cannot run here; another one runs instead, and
    ``precision_`` says which."""


class PerformanceWarning(SktransferWarning):
    """The requested setting runs slower here than it should (int8 slower than
    its float fallback, operations left in float32)."""


class CacheWarning(SktransferWarning):
    """The embedding cache met a damaged entry or a folder it cannot write;
    rows are recomputed, never taken from a bad entry."""


class DeviceWarning(SktransferWarning):
    """The device an estimator was fitted on is not available here."""


class FolderLinkWarning(SktransferWarning):
    """A link in an image folder leads to a folder that is listed elsewhere
    (the folder itself or one above it, another class folder, or a folder
    listed already): it is not followed, so that each image is listed once,
    with one label. The message names the links."""


class FusionWarning(SktransferWarning, RuntimeWarning):
    """A fused CPU operator failed its self-test and runs unfused (the same
    results, somewhat slower)."""


class PreprocessingWarning(SktransferWarning):
    """The published preprocessing of a model cannot be reproduced exactly
    by sktransfer's batched preprocessing; what runs instead is named."""


class OutOfVocabularyWarning(SktransferWarning):
    """Some texts have no word in the vocabulary of the word vectors: their
    rows are zeros (:class:`~sktransfer.PretrainedWordVectors`)."""


class MissingTextsWarning(SktransferWarning):
    """Some texts were missing (None, NaN; ``on_error="nan"``): their rows
    are NaN, and the estimator's ``errors_`` names them."""


class TruncationWarning(SktransferWarning):
    """Some texts were longer than the model's ``max_length`` and were cut
    (``long_text="truncate"``); the message gives how many, and
    ``long_text="chunk"`` embeds them whole."""


class ProbeWarning(SktransferWarning):
    """:func:`sktransfer.probe` skipped a model or used other weights than
    those asked for."""


# -- emitting --------------------------------------------------------------------

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
#: Besides sktransfer's own frames, those of the libraries that call into it
#: are skipped to find the user's line: scikit-learn (``fit`` is wrapped;
#: pipelines and searches call our estimators), torch (a network's
#: ``__call__`` runs our modules), joblib, Dask (a lazy array's blocks,
#: computed in the caller's thread) and skops (:func:`sktransfer.load`
#: unpickles our estimators).
_CALLERS = ("sklearn", "torch", "joblib", "dask", "skops")
#: The code torch.fx generates for a traced network (``<eval_with_key>.3``):
#: a frame of torch's, though no file of torch's.
_GENERATED = ("<eval_with_key>",)


def _internal_prefixes() -> tuple[str, ...]:
    folders = [_PACKAGE]
    for name in _CALLERS:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file is not None:
            folders.append(os.path.dirname(os.path.abspath(file)))
    return tuple(folder + os.sep for folder in folders)


def warn(message: str, category: type[SktransferWarning]) -> None:
    """Emit ``message`` as a ``category`` warning that points at the user's
    line: the first calling frame outside sktransfer and the libraries that
    call into it (the outermost frame where every frame is theirs, as in a
    worker thread).
    """
    prefixes = _internal_prefixes()
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_GENERATED)
        or os.path.abspath(frame.f_code.co_filename).startswith(prefixes)
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level + 1)
