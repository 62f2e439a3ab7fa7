"""sktransfer: transfer learning from pretrained image models, the sklearn way.

The estimators and functions are imported on first use (PEP 562), so that
``import sktransfer`` and ``sktransfer --help`` do not load torch; the
errors and warning categories are imported at once.
"""

import importlib
from typing import TYPE_CHECKING

from sktransfer._version import __version__  # noqa: F401  (sktransfer.__version__)
from sktransfer.exceptions import (
    CacheWarning,
    DeviceWarning,
    FolderLinkWarning,
    FusionWarning,
    ImageReadError,
    LayerError,
    MissingTextsWarning,
    NumericsWarning,
    OutOfVocabularyWarning,
    PerformanceWarning,
    PrecisionFallbackWarning,
    PreprocessingWarning,
    ProbeUsageError,
    ProbeWarning,
    SktransferWarning,
    TamperedModelError,
    TextInputError,
    TruncationWarning,
    UnreadableImagesWarning,
    UntrustedTypesError,
    WeightsUnavailableError,
)

#: Public names imported on first use: name -> the module that defines it.
_LAZY = {
    "EmbeddingCache": "sktransfer._cache",
    "default_cache": "sktransfer._cache",
    "embed_dataset": "sktransfer._embed",
    "read_embeddings": "sktransfer._embed",
    "PretrainedFeatureExtractor": "sktransfer._extractor",
    "FineTunedClassifier": "sktransfer._finetune",
    "FineTunedRegressor": "sktransfer._finetune",
    "list_images": "sktransfer._images.folders",
    "load_image_folder": "sktransfer._images.folders",
    "Preprocessing": "sktransfer._preprocess",
    "ProbeResult": "sktransfer._probe",
    "probe": "sktransfer._text_probe",  # (images, or texts)
    "TextProbeResult": "sktransfer._text_probe",
    "probe_texts": "sktransfer._text_probe",
    "list_layers": "sktransfer._runtime.layers",
    "PretrainedWordVectors": "sktransfer._word_vectors",
    "PretrainedTextExtractor": "sktransfer._text_extractor",
    "FineTunedTextClassifier": "sktransfer._text_finetune",
    "load": "sktransfer._share",
    "save": "sktransfer._share",
    "untrusted_types": "sktransfer._share",
}

if TYPE_CHECKING:  # (what the names are, for type checkers and editors)
    from sktransfer._cache import EmbeddingCache, default_cache
    from sktransfer._embed import embed_dataset, read_embeddings
    from sktransfer._extractor import PretrainedFeatureExtractor
    from sktransfer._finetune import FineTunedClassifier, FineTunedRegressor
    from sktransfer._images.folders import list_images, load_image_folder
    from sktransfer._preprocess import Preprocessing
    from sktransfer._probe import ProbeResult
    from sktransfer._runtime.layers import list_layers
    from sktransfer._share import load, save, untrusted_types
    from sktransfer._text_extractor import PretrainedTextExtractor
    from sktransfer._text_finetune import FineTunedTextClassifier
    from sktransfer._text_probe import TextProbeResult, probe, probe_texts
    from sktransfer._word_vectors import PretrainedWordVectors


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sktransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # (imported once)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CacheWarning",
    "DeviceWarning",
    "EmbeddingCache",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "FineTunedTextClassifier",
    "FolderLinkWarning",
    "FusionWarning",
    "ImageReadError",
    "LayerError",
    "MissingTextsWarning",
    "NumericsWarning",
    "OutOfVocabularyWarning",
    "PerformanceWarning",
    "PrecisionFallbackWarning",
    "Preprocessing",
    "PreprocessingWarning",
    "ProbeResult",
    "ProbeUsageError",
    "ProbeWarning",
    "PretrainedFeatureExtractor",
    "PretrainedWordVectors",
    "PretrainedTextExtractor",
    "SktransferWarning",
    "TamperedModelError",
    "TextInputError",
    "TextProbeResult",
    "TruncationWarning",
    "UnreadableImagesWarning",
    "UntrustedTypesError",
    "WeightsUnavailableError",
    "clear_caches",
    "default_cache",
    "embed_dataset",
    "list_images",
    "list_layers",
    "list_models",
    "load",
    "load_image_folder",
    "probe",
    "probe_texts",
    "read_embeddings",
    "save",
    "untrusted_types",
]


def clear_caches() -> None:
    """Free what sktransfer keeps between calls in this process.

    Drops the networks that clones share (and the memory they hold, on the
    GPU too), the in-memory embeddings of every process-wide cache (the
    ``"memory"`` one and those of ``cache="directory"``; the files on disk
    stay), the remembered digests of checkpoint files and the loaded word
    vectors (their files stay mapped by the estimators that hold them). Fitted
    estimators keep working: they hold their own network. Everything is
    rebuilt or recomputed on demand.

    Examples
    --------
    >>> import sktransfer
    >>> sktransfer.clear_caches()
    >>> len(sktransfer.default_cache())
    0
    """
    import torch

    from sktransfer import _cache, _identity, _network
    from sktransfer._runtime import int8 as _int8
    from sktransfer._sources import transformers as _text_models
    from sktransfer._text import word_vectors as _word_vectors

    _network.clear()
    _text_models.clear()
    _int8.clear()
    _cache.clear_memory()
    _identity.clear()
    _word_vectors.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def list_models(pattern: str = "*") -> list[str]:
    """Return the names of the models the ``model`` parameter accepts, sorted.

    Parameters
    ----------
    pattern : str, default="*"
        A glob filtering the names, e.g. ``"resnet*"``: torchvision's
        classification models. A pattern that starts with ``"timm/"``
        (``"timm/convnext*"``) lists timm's published weights instead, as
        ``"timm/<architecture>.<tag>"`` (needs ``sktransfer[timm]``).

    Returns
    -------
    names : list of str
        Values accepted by the ``model`` parameter.

    Examples
    --------
    >>> from sktransfer import list_models
    >>> list_models("resnet*")[:3]
    ['resnet101', 'resnet152', 'resnet18']
    >>> list_models("timm/resnet18.*")[:2]  # doctest: +SKIP
    ['timm/resnet18.a1_in1k', 'timm/resnet18.a2_in1k']
    """
    import fnmatch

    from sktransfer._sources import timm as _timm
    from sktransfer._sources.torchvision import model_names

    if pattern.startswith(_timm.PREFIX):
        return _timm.list_names(pattern[len(_timm.PREFIX) :])
    return [n for n in model_names() if fnmatch.fnmatchcase(n, pattern)]
