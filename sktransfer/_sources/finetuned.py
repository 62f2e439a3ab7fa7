"""A fitted :class:`~sktransfer.FineTunedClassifier` as ``model``: its
trained backbone, reused by an extractor; and a fitted
:class:`~sktransfer.FineTunedTextClassifier`: its fine-tuned encoder, reused
by a text extractor (``_sktransfer_text_model()``).

The classifier is recognised by the method it offers,
``_sktransfer_backbone()`` (a copy of its trained backbone), so that this
source, below the estimators, imports none of them.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from sktransfer._identity import module_digest
from sktransfer._sources.base import Backbone, Source

__all__ = ["FinetunedSource", "FinetunedTextSource"]


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


class FinetunedTextSource(Source):
    """A fitted text classifier: its fine-tuned encoder, with the tokenizer
    and the sentence pooling of the model it was fitted from."""

    name = "finetuned-text"
    kind = "text"

    def matches(self, model) -> bool:
        return hasattr(model, "_sktransfer_text_model")

    def check(self, model) -> None:
        check_is_fitted(
            model,
            msg=(
                f"This {type(model).__name__} is not fitted yet: fit it on the "
                "source task before using it as the 'model' of an extractor."
            ),
        )

    def identity(self, model, weights=None, seed=None) -> str:
        return model._sktransfer_text_model().identity

    def load(self, model, weights=None):  # type: ignore[override]
        """The classifier's encoder, read-only (shared with it)."""
        self.check(model)
        return model._sktransfer_text_model()

    def cached_file(self, model, weights=None):
        return None  # (its tensors are pickled with it)
