"""Where models come from: the model-source registry (see ``base``).

The image sources, in the order they are asked: a fitted classifier, a
module, a timm or Hugging Face hub name, a torchvision name (any other
string). Sources of other kinds: a transformers model (a hub id or a
local folder; ``kind="text"``), a fitted text classifier (its fine-tuned
encoder; ``kind="text"``), word vectors (a file, a gensim object
or a name; ``kind="word_vectors"``).
A new source registers itself with :func:`register_source` and is asked
before these.
"""

from sktransfer._sources.base import *  # noqa: F403  (the registry's API)
from sktransfer._sources.base import __all__ as __all__
from sktransfer._sources.base import register_source
from sktransfer._sources.finetuned import FinetunedSource, FinetunedTextSource
from sktransfer._sources.module import ModuleSource
from sktransfer._sources.timm import TimmSource
from sktransfer._sources.torchvision import TorchvisionSource
from sktransfer._sources.transformers import TransformersSource
from sktransfer._sources.word_vectors import WordVectorsSource

for _source in (
    TorchvisionSource(),
    TimmSource(),
    ModuleSource(),
    FinetunedSource(),
    WordVectorsSource(),
    TransformersSource(),
    FinetunedTextSource(),
):
    register_source(_source)
