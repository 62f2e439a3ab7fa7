"""sktransfer: transfer learning from pretrained image models, the sklearn way."""

from sktransfer._cache import EmbeddingCache, default_cache
from sktransfer._embed import embed_dataset
from sktransfer._extractor import PretrainedFeatureExtractor
from sktransfer._finetune import FineTunedClassifier
from sktransfer._images.folders import list_images, load_image_folder
from sktransfer._preprocess import Preprocessing
from sktransfer._probe import ProbeResult, probe
from sktransfer._runtime.layers import list_layers
from sktransfer._share import load, save, untrusted_types
from sktransfer._sources.torchvision import model_names as _model_names
from sktransfer._text_extractor import PretrainedTextExtractor
from sktransfer._version import __version__  # noqa: F401  (sktransfer.__version__)
from sktransfer.exceptions import (
    CacheWarning,
    DeviceWarning,
    FusionWarning,
    ImageReadError,
    LayerError,
    MissingTextsWarning,
    NumericsWarning,
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

__all__ = [
    "CacheWarning",
    "DeviceWarning",
    "EmbeddingCache",
    "FineTunedClassifier",
    "FusionWarning",
    "ImageReadError",
    "LayerError",
    "MissingTextsWarning",
    "NumericsWarning",
    "PerformanceWarning",
    "PrecisionFallbackWarning",
    "Preprocessing",
    "PreprocessingWarning",
    "ProbeResult",
    "ProbeUsageError",
    "ProbeWarning",
    "PretrainedFeatureExtractor",
    "PretrainedTextExtractor",
    "SktransferWarning",
    "TamperedModelError",
    "TextInputError",
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
    "save",
    "untrusted_types",
]


def clear_caches() -> None:
    """Free what sktransfer keeps between calls in this process.

    Drops the networks that clones share (and the memory they hold, on the
    GPU too), the in-memory embeddings of every process-wide cache (the
    ``"memory"`` one and those of ``cache="directory"``; the files on disk
    stay), and the remembered digests of checkpoint files. Fitted
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

    _network.clear()
    _text_models.clear()
    _int8.clear()
    _cache.clear_memory()
    _identity.clear()
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

    if pattern.startswith(_timm.PREFIX):
        return _timm.list_names(pattern[len(_timm.PREFIX) :])
    return [n for n in _model_names() if fnmatch.fnmatchcase(n, pattern)]
