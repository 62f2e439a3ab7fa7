"""From what the user passes to a checked sequence of texts.

:func:`as_texts` accepts a list or tuple of ``str``, a 1-D numpy array of
strings (``str_`` or ``object``), a pandas Series, a pandas ``Index`` or a
one-column DataFrame (a Dask collection is handled by the estimators, one
partition at a time). A missing text (``None``, NaN, ``pd.NA``) follows
``on_error``: a :class:`~sktransfer.exceptions.TextInputError` naming its
row (``"raise"``), or a row of NaN, recorded in ``errors`` (``"nan"``). Any
other non-string is a ``TypeError`` naming its row and type; an empty
string is a valid text. A single string is refused: sklearn's text
vectorizers take an iterable of texts, and a string would be its letters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from sktransfer.exceptions import TextInputError

__all__ = ["Texts", "as_texts", "text_digest"]


def text_digest(text: str) -> str:
    """The content identity of one text: a digest of its UTF-8 bytes (any
    string, lone surrogates included, round-trips)."""
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' NA and NaT


def _values(X) -> list:
    """The texts of ``X`` as a list, in order, or a TypeError/ValueError."""
    if isinstance(X, (str, bytes)):
        raise TypeError(
            "Expected a sequence of texts (a list, a 1-D array or a pandas "
            f"Series of str); got a single {type(X).__name__}. Wrap it in a "
            "list: [text]."
        )
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"A DataFrame of texts must have one column; got {X.shape[1]} "
                f"({list(X.columns)[:5]}). Select the text column: X['text'], "
                "or use a ColumnTransformer."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy") and hasattr(X, "dtype"):  # a Series or an Index
        return list(X.to_numpy(dtype=object, na_value=None))
    if isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise ValueError(
                f"Expected a 1-D array of texts; got an array of shape {X.shape}."
            )
        if X.dtype.kind not in "UO":
            raise TypeError(
                f"Expected an array of str (dtype str_ or object); got dtype "
                f"{X.dtype}. Texts are strings; convert them first if they are "
                "not."
            )
        return X.tolist()
    if hasattr(X, "__array__") and not isinstance(X, Iterable):
        raise TypeError(f"Expected a sequence of texts; got {type(X).__name__}.")
    if not isinstance(X, Iterable):
        raise TypeError(
            "Expected a sequence of texts (a list, a 1-D array or a pandas "
            f"Series of str); got {type(X).__name__}."
        )
    return list(X)


class Texts:
    """A checked sequence of texts, in input order.

    Attributes
    ----------
    texts : list of str or None
        One per row; None where a text is missing (``on_error="nan"``).
    errors : dict of int to TextInputError
        The rows whose text is missing, and why.
    """

    def __init__(self, texts: list, errors: dict):
        self.texts = texts
        self.errors = errors
        self._digests: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def present(self) -> list[int]:
        """The rows that hold a text, in order."""
        return [i for i, text in enumerate(self.texts) if text is not None]

    def digests(self, rows: Iterable[int] | None = None) -> list[str | None]:
        """:func:`text_digest` of each row (None for a missing text),
        computed once."""
        if self._digests is None:
            self._digests = [
                None if text is None else text_digest(text) for text in self.texts
            ]
        if rows is None:
            return list(self._digests)
        return [self._digests[i] for i in rows]

    def decoded_digest(self, row: int) -> str | None:
        """The digest a row's vectors are stored under (the cache's
        protocol; for a text, :func:`text_digest`)."""
        return self.digests([row])[0]


def as_texts(X, *, on_error: str = "raise") -> Texts:
    """``X`` as :class:`Texts`, or a TypeError/ValueError naming the fix.

    Parameters
    ----------
    X : list, tuple, 1-D ndarray, pandas Series or Index, or one-column DataFrame
        The texts.
    on_error : {"raise", "nan"}
        A missing text (None, NaN, ``pd.NA``): raise
        :class:`~sktransfer.exceptions.TextInputError` naming its row, or
        give it a row of NaN and record it in ``errors``.
    """
    values = _values(X)
    if not values:
        raise ValueError("Found array with 0 texts: at least 1 is required.")
    texts: list[str | None] = []
    errors: dict[int, TextInputError] = {}
    for i, value in enumerate(values):
        if isinstance(value, str):  # (np.str_ too)
            texts.append(str(value))
            continue
        if not _is_missing(value):
            raise TypeError(
                f"Row {i} is not a text: got {type(value).__name__} "
                f"({value!r:.60}). Every row must be a str; convert the column "
                "with .astype(str) if its values are texts of another type."
            )
        error = TextInputError(
            f"Row {i} has no text ({value!r}). Drop or fill the missing texts "
            "(an empty string is a valid text), or pass on_error='nan' to get "
            "a row of NaN for each.",
            index=i,
        )
        if on_error == "raise":
            raise error
        texts.append(None)
        errors[i] = error
    return Texts(texts, errors)
