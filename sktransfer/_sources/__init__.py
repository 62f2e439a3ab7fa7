"""Where models come from: the model-source registry (see ``base``).

The sources, in the order they are asked: a fitted classifier, a module,
a timm or Hugging Face hub name, a torchvision name (any other string);
for text estimators (``kind="text"``), a transformers model (a hub id or a
local folder).
A new source registers itself with :func:`register_source` and is asked
before these.
"""

from sktransfer._sources.base import (
    Backbone,
    Source,
    check_model,
    check_weights,
    load_backbone,
    named_preprocessing,
    published_weights_file,
    register_source,
    resolve_weights,
    source_of,
    weights_at_hand,
    weights_identity,
)
from sktransfer._sources.finetuned import FinetunedSource
from sktransfer._sources.module import ModuleSource
from sktransfer._sources.timm import TimmSource
from sktransfer._sources.torchvision import TorchvisionSource
from sktransfer._sources.transformers import TransformersSource

for _source in (
    TorchvisionSource(),
    TimmSource(),
    ModuleSource(),
    FinetunedSource(),
    TransformersSource(),
):
    register_source(_source)

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
