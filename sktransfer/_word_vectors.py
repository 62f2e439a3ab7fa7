"""PretrainedWordVectors: texts to rows of pretrained word vectors.

No network: the vectors are a memory-mapped matrix and a vocabulary
(``_text.word_vectors``, reached through the model-source registry), and a
text's row is a pooling of its known words' vectors in numpy
(``_text.word_pooling``). The estimator holds only its own policy: the
parameters, the tokenizer, the SIF weights that ``fit`` learns, the
out-of-vocabulary accounting and light pickles.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sktransfer import _cache
from sktransfer._base import _all_or_nothing
from sktransfer._cache import EmbeddingCache
from sktransfer._common import report_errors
from sktransfer._identity import digest
from sktransfer._persist import MARK, SHARING, plain_state, restore_state
from sktransfer._sources import source_of
from sktransfer._sources.word_vectors import is_keyed_vectors
from sktransfer._text.inputs import Texts, as_texts
from sktransfer._text.word_pooling import (
    POOLINGS,
    TOKEN_PATTERN,
    default_tokenizer,
    lookup,
    pool,
)
from sktransfer.exceptions import MissingTextsWarning, OutOfVocabularyWarning, warn

__all__ = ["PretrainedWordVectors"]

#: The attributes that ``fit`` builds and that a pickle drops (rebuilt on
#: first use from the parameters and the fitted state).
_TRANSIENT = ("_table", "_weights")
#: The version of what a row of this transformer means (part of the cache key).
_ROWS = "word-rows-1"
#: The cache's names of a text's two stored vectors: its row, and its token
#: and known-token counts (for the out-of-vocabulary warning of a hit).
_ROW, _COUNTS = "row", "counts"


class PretrainedWordVectors(TransformerMixin, BaseEstimator):
    """Turn texts into pooled pretrained word vectors (GloVe, word2vec,
    fastText).

    Each text is lowercased (``lowercase=True``), split into tokens, and
    the vectors of the tokens found in the vocabulary are pooled into one
    row. No network runs: the vectors file is converted once into a
    memory-mapped matrix (kept beside the file, keyed by its content), so
    later loads, in any process, are fast and share memory.

    Read more in the user guide, ``docs/word_vectors.md``.

    Parameters
    ----------
    vectors : str, path-like or gensim KeyedVectors, default=None
        The word vectors: a file in GloVe text (no header), word2vec text or
        binary, or fastText ``.vec`` format, gzipped or not (recognised by
        content); the name of such a file in the folder
        ``$SKTRANSFER_WORD_VECTORS`` (default ``~/.cache/sktransfer/
        word_vectors``), without its extension (``"glove.6B.100d"`` for
        ``glove.6B.100d.txt``); or a gensim ``KeyedVectors`` (its
        vocabulary's vectors; fastText's subwords are not used). Required.
    pooling : {"mean", "max", "meanmax", "sif"}, default="mean"
        How a text's word vectors become one row: their mean, their
        maximum per dimension, both side by side (twice the width), or SIF
        (Arora et al., 2017): a mean weighted by ``sif_a / (sif_a + p(w))``,
        with ``p(w)`` the frequency of the word among the tokens of the
        texts given to ``fit``, minus the projection on the first principal
        component of the fitted texts' rows.
    lowercase : bool, default=True
        Lowercase each text before tokenizing it (GloVe 6B and fastText's
        lowercase models; set False for cased vectors such as word2vec's
        GoogleNews).
    tokenizer : callable, default=None
        A function from a text to its list of tokens, applied after
        lowercasing. None: a regular expression close to the tokenizer
        GloVe was built with (``sktransfer._text.word_pooling.TOKEN_PATTERN``:
        words, hyphenated words, numbers, ``n't`` and ``'s`` apart, each
        punctuation mark a token).
    sif_a : float, default=1e-3
        The ``a`` of the SIF weights (``pooling="sif"`` only).
    on_error : {"raise", "nan"}, default="raise"
        A missing text (None, NaN, ``pd.NA``): raise
        :class:`~sktransfer.exceptions.TextInputError` naming its row, or
        give it a row of NaN, recorded in ``errors_`` (with one
        :class:`~sktransfer.exceptions.MissingTextsWarning` per call). An
        empty text is valid (a row of zeros).
    batch_size : int, default=512
        Texts pooled at a time: bounds the memory of a transform and keeps
        the gathered vectors in the CPU caches.
    cache : "memory", str, path-like, EmbeddingCache or None, default=None
        Where rows are kept for reuse, keyed by content: the text, the
        vectors' content digest, ``lowercase``, the default tokenizer's
        pattern, ``pooling`` and, for ``"sif"``, the fitted weights and
        component (a fit on other texts never serves its rows to this
        one). As for :class:`PretrainedFeatureExtractor`: ``"memory"`` is
        the process-wide cache shared by every clone, a directory path adds
        a persistent layer with checksummed entries, None (the default)
        turns caching off: pooling word vectors costs little more than
        looking a row up. A custom ``tokenizer`` turns the cache off too:
        what a function computes cannot be identified reliably (it may read
        globals that change), and a stale row would be a silent wrong
        answer.

    Attributes
    ----------
    vectors_digest_ : str
        The content digest of the vectors: a fitted estimator refuses other
        vectors (a file changed since ``fit``).
    vocabulary_size_ : int
        The number of words with a vector.
    n_features_out_ : int
        The width of a row (the vectors' dimension, twice it for
        ``"meanmax"``).
    oov_rate_ : float
        The fraction of the tokens of the texts given to ``fit`` that have
        no vector (0.0 when they have no token).
    sif_ids_ : ndarray of int64
        ``pooling="sif"``: the rows of the words met in ``fit``'s texts
        (every other word has weight 1).
    sif_weights_ : ndarray of float32
        ``pooling="sif"``: their weights ``sif_a / (sif_a + p(w))``.
    sif_component_ : ndarray of float32 of shape (n_features_out,)
        ``pooling="sif"``: the unit first principal direction removed
        (zeros if the fitted texts had no known word).
    errors_ : list of TextInputError
        The missing texts of the last ``transform`` (``on_error="nan"``),
        in row order; empty after ``fit``.

    See Also
    --------
    PretrainedFeatureExtractor : the same for images, with a network.

    Notes
    -----
    The first load of a vectors file reads it twice (its digest, then its
    conversion) in bounded memory; later loads map the conversion and read
    only the words. A file whose folder cannot be written is converted into
    ``$SKTRANSFER_WORD_VECTORS``. Pickles and :func:`sktransfer.save` keep
    the file's path and digest, not the matrix (a gensim object is pickled
    with the estimator; ``save`` refuses it). A text whose tokens are all
    out of vocabulary (an empty text too) gets a row of zeros and one
    :class:`~sktransfer.exceptions.OutOfVocabularyWarning` per call with
    their count; :meth:`oov_counts` gives each text's counts.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sktransfer import PretrainedWordVectors
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.txt"
    >>> _ = path.write_text("good 1 0\\nbad -1 0\\nfilm 0 1\\n")
    >>> vectors = PretrainedWordVectors(vectors=path).fit(["a good film"])
    >>> vectors.transform(["Good film!", "bad"])
    array([[ 0.5,  0.5],
           [-1. ,  0. ]], dtype=float32)
    >>> vectors.oov_rate_
    0.3333333333333333
    """

    _parameter_constraints: dict = {
        "vectors": "no_validation",  # checked by its source, in fit
        "pooling": [StrOptions(set(POOLINGS))],
        "lowercase": ["boolean"],
        "tokenizer": [callable, None],
        "sif_a": [Interval(Real, 0, None, closed="neither")],
        "on_error": [StrOptions({"raise", "nan"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "cache": [str, os.PathLike, EmbeddingCache, None],
    }

    def __init__(
        self,
        *,
        vectors=None,
        pooling="mean",
        lowercase=True,
        tokenizer=None,
        sif_a=1e-3,
        on_error="raise",
        batch_size=512,
        cache=None,
    ):
        self.vectors = vectors
        self.pooling = pooling
        self.lowercase = lowercase
        self.tokenizer = tokenizer
        self.sif_a = sif_a
        self.on_error = on_error
        self.batch_size = batch_size
        self.cache = cache

    # -- fitting ------------------------------------------------------------
    def __sklearn_clone__(self):
        # A gensim object is only read: clones share it (sklearn would deep
        # copy its matrix). The rest is cloned as sklearn does.
        params = {
            name: value if name == "vectors" else clone(value, safe=False)
            for name, value in self.get_params(deep=False).items()
        }
        return type(self)(**params)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the vectors, count the out-of-vocabulary tokens of ``X`` and,
        for ``pooling="sif"``, learn the word weights and the component.

        Parameters
        ----------
        X : list, 1-D array or pandas Series of str
            The texts (a one-column DataFrame too).
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedWordVectors
            The fitted transformer.
        """
        with _all_or_nothing(self):
            return self._fit(X)

    def _fit(self, X):
        if self.vectors is None:
            raise ValueError(
                "The 'vectors' parameter is required: a GloVe, word2vec or "
                "fastText file (gzipped or not), its name in the local folder, or "
                "a gensim KeyedVectors. Got None."
            )
        _cache.resolve(self.cache)  # (checks the parameter, before the data)
        source = source_of(self.vectors, kind="word_vectors")
        source.check(self.vectors)
        table = source.load(self.vectors)
        texts = as_texts(X, on_error=self.on_error)
        present = [texts.texts[i] for i in texts.present()]
        self._check_tokenizer(present)
        ids, lengths, n_tokens = lookup(
            present, table.index, self._tokenize(), self.lowercase
        )
        total = int(n_tokens.sum())
        self.vectors_digest_ = table.digest
        self.errors_: list = []
        self.vocabulary_size_ = len(table)
        self.n_features_out_ = table.dim * (2 if self.pooling == "meanmax" else 1)
        self.oov_rate_ = (total - len(ids)) / total if total else 0.0
        self._table = table
        self._weights = None
        if self.pooling == "sif":
            seen, counts = np.unique(ids, return_counts=True)
            self.sif_ids_ = seen
            self.sif_weights_ = (self.sif_a / (self.sif_a + counts / total)).astype(
                np.float32
            )
            rows = pool(table.matrix, ids, lengths, "sif", self._word_weights())
            self.sif_component_ = _first_component(rows)
        return self

    def _tokenize(self):
        return default_tokenizer if self.tokenizer is None else self.tokenizer

    def _check_tokenizer(self, texts: list[str]) -> None:
        if self.tokenizer is None or not texts:
            return
        tokens = self.tokenizer(texts[0].lower() if self.lowercase else texts[0])
        if not isinstance(tokens, (list, tuple)) or not all(
            isinstance(t, str) for t in tokens
        ):
            raise TypeError(
                "The 'tokenizer' parameter must return a list of str for a text; "
                f"for {texts[0]!r:.60} it returned {tokens!r:.80}."
            )

    # -- transforming -------------------------------------------------------
    def _vectors(self):
        """The loaded vectors, the same as in ``fit`` (or an error)."""
        table = vars(self).get("_table")
        if table is None:
            # The file's content is checked before it is converted (which
            # writes beside it or in the cache folder): a loaded model names
            # a file its author chose.
            source = source_of(self.vectors, kind="word_vectors")
            found = source.identity(self.vectors)
            if found != self.vectors_digest_:
                raise ValueError(
                    f"The word vectors {self._describe_vectors()} are not those "
                    f"this estimator was fitted with (content digest "
                    f"{found}, fitted with {self.vectors_digest_}): the "
                    "file changed. Fit it again, or restore the original file."
                )
            table = source.load(self.vectors, found)
            self._table = table
        return table

    def _describe_vectors(self) -> str:
        if is_keyed_vectors(self.vectors):
            return f"(a {type(self.vectors).__name__})"
        return repr(os.fspath(self.vectors))

    def _word_weights(self) -> np.ndarray | None:
        """SIF: the weight of every row of the vocabulary."""
        if self.pooling != "sif":
            return None
        weights = vars(self).get("_weights")
        if weights is None:
            weights = np.ones(self.vocabulary_size_, np.float32)
            weights[self.sif_ids_] = self.sif_weights_
            self._weights = weights
        return weights

    def _pooled(self, texts: Texts):
        """The rows of ``texts`` (NaN for a missing one) and each present
        text's token and known-token counts."""
        table = self._vectors()
        out = np.full((len(texts), self.n_features_out_), np.nan, np.float32)
        present = np.asarray(texts.present(), dtype=np.int64)
        n_tokens = np.zeros(len(texts), np.int64)
        n_known = np.zeros(len(texts), np.int64)
        tokenize, weights = self._tokenize(), self._word_weights()
        for start in range(0, len(present), self.batch_size):
            rows = present[start : start + self.batch_size]
            ids, lengths, counts = lookup(
                [texts.texts[i] for i in rows],
                table.index,
                tokenize,
                self.lowercase,
            )
            block = pool(table.matrix, ids, lengths, self.pooling, weights)
            if self.pooling == "sif":
                u = self.sif_component_
                block -= np.outer(block @ u, u)
            out[rows] = block
            n_tokens[rows], n_known[rows] = counts, lengths
        return out, present, n_tokens, n_known

    def _cache_config(self) -> str:
        """The part of a row's cache key that is not the text: everything
        else that changes the row (and the counts stored with it)."""
        parts = [
            _ROWS,
            self.vectors_digest_,
            f"lowercase={self.lowercase}",
            f"tokens={TOKEN_PATTERN}",
            f"pooling={self.pooling}",
        ]
        if self.pooling == "sif":
            parts += [
                np.ascontiguousarray(self.sif_ids_, np.int64).data,
                np.ascontiguousarray(self.sif_weights_, np.float32).data,
                np.ascontiguousarray(self.sif_component_, np.float32).data,
            ]
        return digest(*parts)

    def _cached(self, store: EmbeddingCache, texts: Texts):
        """As :meth:`_pooled`, with the rows (and counts) of ``store``."""

        def compute(indices):
            subset = Texts([texts.texts[i] for i in indices], {})
            rows, _, n_tokens, n_known = self._pooled(subset)
            counts = np.c_[n_tokens, n_known].astype(np.float32)
            return np.hstack([rows, counts])

        width = self.n_features_out_
        both = _cache.cached_rows(
            store,
            self._cache_config(),
            texts,
            [_ROW, _COUNTS],
            [width, 2],
            {_ROW: width, _COUNTS: 2},
            compute,
        )
        present = np.asarray(texts.present(), dtype=np.int64)
        n_known = np.zeros(len(texts), np.int64)
        n_known[present] = both[present, width + 1]
        return np.ascontiguousarray(both[:, :width]), present, n_known

    def transform(self, X):
        """One row per text: the pooled vectors of its known words.

        Parameters
        ----------
        X : list, 1-D array or pandas Series of str
            The texts (a one-column DataFrame too).

        Returns
        -------
        X_new : ndarray of float32 of shape (n_samples, n_features_out)
            The rows, in input order; zeros for a text with no known word
            (with an :class:`~sktransfer.exceptions.OutOfVocabularyWarning`),
            NaN for a missing text with ``on_error="nan"``.
        """
        check_is_fitted(self)
        texts = as_texts(X, on_error=self.on_error)
        store = _cache.resolve(self.cache) if self.tokenizer is None else None
        if store is None:
            out, present, _, n_known = self._pooled(texts)
        else:
            out, present, n_known = self._cached(store, texts)
        report_errors(
            self, texts.errors, len(texts), "texts are missing", MissingTextsWarning
        )
        empty = int((n_known[present] == 0).sum())
        if empty:
            warn(
                f"{empty} of {len(texts)} texts have no word in the vocabulary "
                f"of the word vectors {self._describe_vectors()}: their rows are "
                "zeros. Check that 'lowercase' and 'tokenizer' match how the "
                "vectors were built; oov_counts(X) gives each text's counts.",
                OutOfVocabularyWarning,
            )
        return out

    def oov_counts(self, X) -> np.ndarray:
        """Each text's tokens and out-of-vocabulary tokens.

        Parameters
        ----------
        X : list, 1-D array or pandas Series of str
            The texts.

        Returns
        -------
        counts : ndarray of int64 of shape (n_samples, 2)
            Per text: its number of tokens, and how many of them have no
            vector (a missing text, with ``on_error="nan"``: 0 and 0).
        """
        check_is_fitted(self)
        texts = as_texts(X, on_error=self.on_error)
        tokenize, index = self._tokenize(), self._vectors().index
        counts = np.zeros((len(texts), 2), np.int64)
        present = texts.present()
        _, lengths, n_tokens = lookup(
            [texts.texts[i] for i in present], index, tokenize, self.lowercase
        )
        counts[present, 0] = n_tokens
        counts[present, 1] = n_tokens - lengths
        return counts

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``<pooling>_<index>``
        (``mean_*`` then ``max_*`` for ``"meanmax"``).

        Parameters
        ----------
        input_features : None
            Ignored; texts have no input feature names.

        Returns
        -------
        feature_names_out : ndarray of str objects
            The output feature names.
        """
        check_is_fitted(self)
        labels = ["mean", "max"] if self.pooling == "meanmax" else [self.pooling]
        width = self.n_features_out_ // len(labels)
        names = [f"{label}_{i}" for label in labels for i in range(width)]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    # -- persistence --------------------------------------------------------
    def __getstate__(self):
        state = dict(super().__getstate__())
        for name in _TRANSIENT:
            state.pop(name, None)
        if SHARING.get():
            if is_keyed_vectors(state["vectors"]):
                raise TypeError(
                    "This PretrainedWordVectors holds a gensim KeyedVectors, which "
                    "cannot be shared without pickle. Save the vectors to a file "
                    "(kv.save_word2vec_format('vectors.bin', binary=True)), pass "
                    "its path as 'vectors', fit, then save."
                )
            if isinstance(state["vectors"], os.PathLike):
                state["vectors"] = os.fspath(state["vectors"])
            state = plain_state(self, state)
        return state

    def __setstate__(self, state):
        if MARK in state:
            state = restore_state(self, state)
        super().__setstate__(state)

    def _published_weights_file(self):
        return None  # (the vectors are identified by their digest)

    def _pop_saved_weights_digest(self):
        return None  # (checked against vectors_digest_ when first used)


def _first_component(rows: np.ndarray) -> np.ndarray:
    """The unit first principal direction of ``rows``, uncentred (as in
    Arora et al.'s code, TruncatedSVD of the rows), or zeros if they are."""
    gram = rows.T.astype(np.float64) @ rows.astype(np.float64)
    if not gram.any():
        return np.zeros(rows.shape[1], np.float32)
    _, vectors = np.linalg.eigh(gram)
    return vectors[:, -1].astype(np.float32)
