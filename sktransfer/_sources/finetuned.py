"""A fitted :class:`~sktransfer.FineTunedClassifier` as ``model``: its
trained backbone, reused by an extractor.

The classifier is recognised by the method it offers,
``_sktransfer_backbone()`` (a copy of its trained backbone), so that this
source, below the estimators, imports none of them.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from sktransfer._identity import module_digest
from sktransfer._sources.base import Backbone, Source

__all__ = ["FinetunedSource"]


class FinetunedSource(Source):
    """A fitted classifier: it brings its own trained weights."""

    name = "finetuned"

    def matches(self, model) -> bool:
        return hasattr(model, "_sktransfer_backbone")

    def identity(self, model, weights, seed) -> str | None:
        try:
            check_is_fitted(model)
        except NotFittedError:
            return None  # load says so
        return f"finetuned|{module_digest(model._network())}"

    def load(self, model, weights) -> Backbone:
        if not (weights is None or (isinstance(weights, str) and weights == "DEFAULT")):
            raise ValueError(
                "A FineTunedClassifier as 'model' brings its own trained weights; "
                f"leave weights='DEFAULT'. Got weights={weights!r}."
            )
        return model._sktransfer_backbone()
