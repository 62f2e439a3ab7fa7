"""From texts to rows of word vectors: tokens, their rows in the
vocabulary, and pooling, in numpy.

The Python work per text is one regular-expression scan and one dict
lookup per token; everything after it (gathering the vectors, summing,
weighting, taking maxima) runs on all the texts of a batch at once, with
``np.add.reduceat`` / ``np.maximum.reduceat`` over one flat array of rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np

__all__ = ["POOLINGS", "TOKEN_PATTERN", "default_tokenizer", "lookup", "pool"]

#: The default token pattern, applied to the lowercased text: close to the
#: Stanford (PTB) tokenizer GloVe's vocabularies were built with. Numbers
#: with separators stay whole (``1,000``, ``3.14``), so do abbreviations
#: (``u.s.``) and hyphenated words (``e-mail``); ``n't`` and the clitics
#: ``'s 're 've 'll 'd 'm`` are tokens of their own (``do n't``,
#: ``it 's``), as is each punctuation mark.
TOKEN_PATTERN = (
    r"\d+(?:[.,]\d+)+"
    r"|(?:[^\W\d_]\.){2,}"
    r"|\w+(?=n't\b)|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"
    r"|\w+(?:-\w+)*"
    r"|[^\w\s]"
)
_TOKENS = re.compile(TOKEN_PATTERN)
POOLINGS = ("mean", "max", "meanmax", "sif")


def default_tokenizer(text: str) -> list[str]:
    """The tokens of ``text`` by :data:`TOKEN_PATTERN`, after typographic
    apostrophes (U+2019) become ASCII ones."""
    return _TOKENS.findall(text.replace("\u2019", "'"))


def lookup(
    texts: Sequence[str],
    index: dict,
    tokenize: Callable[[str], list[str]],
    lowercase: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The known words of each text as rows of the vocabulary.

    Returns
    -------
    ids : ndarray of int64
        The rows of every text's known tokens, text after text.
    lengths : ndarray of int64
        How many of ``ids`` each text has (its known tokens).
    n_tokens : ndarray of int64
        How many tokens each text has, known or not.
    """
    get = index.get
    known: list[list[int]] = []
    counts: list[int] = []
    for text in texts:
        tokens = tokenize(text.lower() if lowercase else text)
        counts.append(len(tokens))
        known.append([i for i in map(get, tokens) if i is not None])
    lengths = np.fromiter(map(len, known), np.int64, len(known))
    ids = np.fromiter(chain.from_iterable(known), np.int64, int(lengths.sum()))
    return ids, lengths, np.asarray(counts, np.int64)


def pool(
    matrix: np.ndarray,
    ids: np.ndarray,
    lengths: np.ndarray,
    pooling: str,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """One float32 row per text: the ``pooling`` of its words' vectors.

    ``"mean"`` averages them (``"sif"``: weighted by ``weights[id]``, still
    divided by the number of words), ``"max"`` takes each dimension's
    maximum, ``"meanmax"`` puts the mean and the maximum side by side. A
    text with no known word gets a row of zeros.
    """
    dim = matrix.shape[1]
    out = np.zeros((len(lengths), 2 * dim if pooling == "meanmax" else dim), np.float32)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    starts = (np.cumsum(lengths) - lengths)[nonempty]
    vectors = np.asarray(matrix[ids], dtype=np.float32)
    if pooling in ("mean", "meanmax", "sif"):
        vectors_w = vectors if weights is None else vectors * weights[ids, None]
        sums = np.add.reduceat(vectors_w, starts, axis=0)
        out[nonempty, :dim] = sums / lengths[nonempty, None].astype(np.float32)
    if pooling in ("max", "meanmax"):
        column = dim if pooling == "meanmax" else 0
        out[nonempty, column : column + dim] = np.maximum.reduceat(
            vectors, starts, axis=0
        )
    return out
