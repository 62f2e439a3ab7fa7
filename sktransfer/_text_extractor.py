"""PretrainedTextExtractor: a frozen pretrained language model as a transformer."""

from __future__ import annotations

import os
from numbers import Integral
from typing import cast

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sktransfer import _cache, _dask, _device
from sktransfer._base import SHARED_CONSTRAINTS, TransferEstimator, precision_numerics
from sktransfer._cache import EmbeddingCache
from sktransfer._common import report_errors
from sktransfer._identity import cpu_kernels, digest
from sktransfer._sources import source_of
from sktransfer._sources.transformers import TextModel
from sktransfer._text.encode import POOLINGS, Slot, count_long, encode, stride_of
from sktransfer._text.inputs import as_texts
from sktransfer.exceptions import (
    LayerError,
    MissingTextsWarning,
    PrecisionFallbackWarning,
    TextInputError,
    TruncationWarning,
    warn,
)

__all__ = [
    "PretrainedTextExtractor",
    "check_layer",
    "resolve_max_length",
    "slot_of",
    "warn_truncated",
]

#: The version of what a row of this extractor means (part of the cache key).
_ROWS = "text-rows-1"


def check_layer(value, n_hidden: int, what: str) -> int | None:
    """A ``layer`` value as a hidden-state index in ``[0, n_hidden)``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise LayerError(
            f"The {what!r} parameter must be None, an int (a hidden state: 0 is "
            "the embedding layer's output, -1 the last layer) or a list of them. "
            f"Got {value!r} of type {type(value).__name__}."
        )
    value = int(value)
    if not -n_hidden <= value < n_hidden:
        raise LayerError(
            f"The {what!r} parameter {value} is out of range: this model has "
            f"{n_hidden} hidden states (0 = the embedding layer's output, "
            f"{n_hidden - 1} = the last of its {n_hidden - 1} blocks); pass an "
            f"int in [{-n_hidden}, {n_hidden - 1}]."
        )
    return value % n_hidden


def slot_of(layer: int | None, pooling: str, text_model: TextModel) -> Slot:
    """The slot of a checked layer: a plain encoder's default embedding is
    the mean of its last hidden state (and shares its cache entries)."""
    if layer is None and text_model.sentence is None:
        return Slot(text_model.n_hidden_states - 1, "mean")
    return Slot(layer, "sentence" if layer is None else pooling)


def _layer_values(value, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise LayerError(f"The {what!r} parameter is an empty list.")
        return list(value)
    return [value]


def resolve_max_length(max_length, text_model: TextModel) -> int:
    """The ``max_length`` parameter checked against the model's limit (None:
    the model's)."""
    if max_length is None:
        return text_model.max_length
    if max_length > text_model.max_length:
        raise ValueError(
            f"The 'max_length' parameter is {max_length}, more than this model "
            f"takes ({text_model.max_length} tokens). Pass at most "
            f"{text_model.max_length}, or None for the model's."
        )
    return int(max_length)


def warn_truncated(
    model: TextModel, texts, max_length: int, chunk: bool, digests=None
) -> None:
    """One :class:`~sktransfer.TruncationWarning` giving how many ``texts``
    are longer than ``max_length`` tokens (``chunk``: say that
    ``long_text='chunk'`` keeps them whole; ``digests``: the texts'
    digests, if known)."""
    n_long = count_long(model, texts, max_length, digests)
    if n_long:
        fix = (
            " Pass long_text='chunk' to embed them whole (overlapping windows "
            "pooled into one row)."
            if chunk
            else ""
        )
        warn(
            f"{n_long} of {len(texts)} texts are longer than max_length="
            f"{max_length} tokens and were truncated to their first "
            f"{max_length} tokens.{fix}",
            TruncationWarning,
        )


class PretrainedTextExtractor(TransformerMixin, TransferEstimator):
    """Embed texts with a frozen pretrained language model, at any layer.

    Each text is tokenized by the model's own tokenizer and run through the
    encoder once with every hidden state; the requested hidden states are
    pooled over the text's real tokens into one float32 row per text, in
    input order. ``fit`` loads the model and checks the parameters: it
    learns nothing, so the extractor can sit first in a
    :class:`~sklearn.pipeline.Pipeline` and be grid-searched over ``layer``
    and ``pooling`` (with ``cache_layers``, at the cost of one pass per
    text in all).

    Read more in the user guide, ``docs/text.md``. Needs
    ``pip install -e '.[text]'``.

    Parameters
    ----------
    model : str, path-like or FineTunedTextClassifier, \
            default="sentence-transformers/all-MiniLM-L6-v2"
        A local model folder in the transformers format (``config.json``,
        the weights, a fast tokenizer's ``tokenizer.json``), a
        sentence-transformers folder included, or the id of such a
        repository on the Hugging Face hub, looked up in the local hub cache
        first. Where the hub is offline (``HF_HUB_OFFLINE=1``) or cannot be
        reached, a model missing from the cache is a
        :class:`~sktransfer.exceptions.WeightsUnavailableError` at once,
        naming the cache folder. Or a fitted
        :class:`FineTunedTextClassifier`: its fine-tuned encoder, frozen, at
        any layer ("develop a source model, then reuse it").

    layer : int, list of int or None, default=None
        ``None``: the model's own sentence embedding. For a
        sentence-transformers folder, the pooling and normalisation its
        configuration files define (its rows equal
        ``SentenceTransformer(folder).encode(texts)``); for another encoder,
        the mean of its last hidden state. An int is a hidden state, pooled
        with ``pooling``: 0 is the embedding layer's output, 1 to L the
        outputs of the L transformer blocks, negative values count from the
        end (-1 is the last). A list concatenates several (``None`` may be
        one of them).

    pooling : {"mean", "cls", "max"}, default="mean"
        How an int ``layer``'s hidden state becomes a vector: the mean or
        maximum over the text's tokens (padding excluded; special tokens
        such as ``[CLS]`` and ``[SEP]`` included, as sentence-transformers
        does), or the first token's state (``[CLS]`` or ``<s>``). Ignored
        for ``layer=None``.

    max_length : int or None, default=None
        The longest input in tokens, special tokens included; None: the
        model's (a sentence-transformers folder's ``max_seq_length``, else
        the tokenizer's and the position embeddings' limit). At most the
        model's.

    long_text : {"truncate", "chunk"}, default="truncate"
        What a text longer than ``max_length`` becomes: its first
        ``max_length`` tokens, with one
        :class:`~sktransfer.TruncationWarning` per call giving how many
        texts were cut; or overlapping windows of ``max_length`` tokens
        (consecutive windows share a quarter of them) pooled into one row:
        ``"mean"`` over the tokens of all windows, ``"max"`` over all of
        them, ``"cls"`` the mean of the windows' first tokens.

    batch_size : int, default=32
        The most texts per forward pass (which bounds memory). Texts are
        sorted by length and cut into the batches that run the fewest
        padded tokens: a few long texts run apart instead of padding many
        short ones to their length. Out of memory, a batch is halved and
        retried.

    on_error : {"raise", "nan"}, default="raise"
        What a missing text (None, NaN, ``pd.NA``) does: ``"raise"`` raises
        :class:`~sktransfer.exceptions.TextInputError` naming its row;
        ``"nan"`` gives it a row of NaN, warns, and records it in
        ``errors_``. A non-string is always a ``TypeError`` naming its row;
        an empty string is a valid text.

    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        Where pooled vectors are kept for reuse, keyed by content: the
        text, the model's files (weights, configuration, tokenizer),
        ``max_length``, ``long_text``, the layer and pooling, and the
        numerics. As for :class:`PretrainedFeatureExtractor`: ``"memory"``
        is the process-wide cache shared by every clone, a directory path
        adds a persistent layer with checksummed entries, None turns
        caching off.

    cache_layers : list, "all" or None, default=None
        Further hidden states computed in the same forward pass and stored
        in the cache with each pooling (``"mean"``, ``"cls"``, ``"max"``),
        so that a later request for one of them costs no pass. ``"all"``:
        every hidden state and ``None``. Set it to the ``layer`` values of
        your grid: the whole search then runs each text through the model
        once. Ignored when ``cache=None``.

    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Compute precision of the encoder (autocast; pooling and outputs stay
        float32). ``"auto"``: float32 on CPUs and MPS, bfloat16 (else
        float16) on CUDA GPUs. On a CPU without bf16 instructions (no
        AVX512-BF16 or AMX), a reduced precision would run several times
        slower than float32: it is refused with a
        :class:`~sktransfer.PrecisionFallbackWarning` and float32 runs.

    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, then MPS, else the CPU.

    verbose : bool, default=True
        Show a progress bar during ``transform``.

    Attributes
    ----------
    model_folder_ : str
        The local folder the model was loaded from.

    model_identity_ : str
        Digest of the model's files, by content: an unpickled extractor
        whose folder no longer holds these files refuses to run.

    layers_ : list of int or None
        The hidden states of the output, in order (negative values made
        positive; None: the model's sentence embedding).

    sentence_pooling_ : str or None
        How a sentence-transformers folder pools its sentence embedding
        (``layer=None``), e.g. ``"mean+normalize"``; None for another
        encoder (its ``layer=None`` is the mean of its last hidden state).

    n_hidden_states_ : int
        The model's hidden states: its transformer blocks plus one.

    max_length_ : int
        The longest input in tokens.

    device_ : torch.device
        The device the encoder runs on.

    precision_ : str
        The compute precision used, e.g. ``"float32"``.

    numerics_ : str
        What produced the rows at fit, as far as it changes their digits
        (see :class:`PretrainedFeatureExtractor`).

    network_ : TextModel
        The encoder and its tokenizer. Not pickled: loaded again from
        ``model`` on first use after unpickling.

    n_features_per_layer_ : list of int
        Output width of each layer in ``layers_``.

    n_features_out_ : int
        Number of output features (their sum).

    computed_layers_ : list of str
        Every pooled vector the encoder's pass computes, by its cache name
        (``"<layer>|<pooling>"``, or ``"sentence"``): those of ``layers_``,
        then the taps of ``cache_layers``.

    computed_widths_ : list of int
        Width of each vector of ``computed_layers_``.

    taps_ : list of str
        The vectors of ``computed_layers_`` that are only stored in the
        cache.

    cache_key_ : str
        Digest of the model's files, ``max_length`` and ``long_text``: with
        the numerics, the part of every cache key that is not the text or
        the layer.

    errors_ : list of TextInputError
        The missing texts of the last ``transform`` (their rows are NaN,
        ``on_error="nan"``); each has ``index`` (the row). Empty after
        ``fit``.

    See Also
    --------
    PretrainedFeatureExtractor : The same for images.

    Notes
    -----
    Input: a list, tuple, 1-D array, pandas Series or one-column DataFrame
    of ``str`` (or a Dask bag or dataframe Series of them). Output: a
    float32 array ``(n, n_features_out_)``, one row per text, in input
    order. Identical texts are embedded once. A text's row does not depend
    on the other texts of its batch beyond float32 rounding (about 1e-6 of
    its norm).

    Pickles hold the model's name (a hub id or a folder) and the digest of
    its files, never the tensors; ``transform`` in another process loads
    the model again from there.

    ``fit`` sets every fitted attribute; ``transform`` sets one,
    ``errors_``, about the texts of the call that just ran.

    Examples
    --------
    >>> from sktransfer import PretrainedTextExtractor
    >>> extractor = PretrainedTextExtractor(
    ...     model="../shared/weights/text/all-MiniLM-L6-v2", verbose=False
    ... )  # doctest: +SKIP
    >>> extractor.fit_transform(["a cat", "a dog"]).shape  # doctest: +SKIP
    (2, 384)
    """

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "model": [str, os.PathLike, HasMethods(["_sktransfer_text_model"])],
        "layer": [Integral, list, tuple, None],
        "pooling": [StrOptions(set(POOLINGS))],
        "max_length": [Interval(Integral, 2, None, closed="left"), None],
        "long_text": [StrOptions({"truncate", "chunk"})],
        "on_error": [StrOptions({"raise", "nan"})],
        "cache": [str, os.PathLike, EmbeddingCache, None],
        "cache_layers": [StrOptions({"all"}), list, tuple, None],
    }

    def __init__(
        self,
        *,
        model="sentence-transformers/all-MiniLM-L6-v2",
        layer=None,
        pooling="mean",
        max_length=None,
        long_text="truncate",
        batch_size=32,
        on_error="raise",
        cache="memory",
        cache_layers=None,
        precision="auto",
        device="auto",
        verbose=True,
    ):
        self.model = model
        self.layer = layer
        self.pooling = pooling
        self.max_length = max_length
        self.long_text = long_text
        self.batch_size = batch_size
        self.on_error = on_error
        self.cache = cache
        self.cache_layers = cache_layers
        self.precision = precision
        self.device = device
        self.verbose = verbose

    # -- inputs and weights --------------------------------------------------
    def _inputs(self, X, fitted: bool = False):
        return as_texts(X, on_error=self.on_error)

    def _source(self):
        return source_of(self.model, kind="text")

    def _check_weights_available(self) -> None:
        if isinstance(self.model, (str, os.PathLike)):  # (else: fit says why)
            self._source().check_available(self.model)

    # -- fitting ------------------------------------------------------------
    def fit(self, X, y=None):  # (the base's, documented here)
        """Load the model and check the parameters and the texts.

        Parameters
        ----------
        X : list, array or pandas Series of str, or a one-column DataFrame
            Texts (see Notes of the class). Only checked: nothing is learned
            and nothing is run through the model.
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedTextExtractor
            The fitted extractor.
        """
        return super().fit(X, y)

    def _fit(self, X, y):
        store = _cache.resolve(self.cache)  # (checks the parameter, before the data)
        if _dask.is_dask(X):
            X = _dask.first_images(X, 1)
        self._inputs(X)
        source = self._source()
        source.check(self.model)
        text_model = source.load(self.model)
        n_hidden = text_model.n_hidden_states
        layers = [
            check_layer(v, n_hidden, "layer")
            for v in _layer_values(self.layer, "layer")
        ]
        if None in layers and text_model.sentence is None and text_model.unsupported:
            raise ValueError(
                "layer=None asks for the sentence embedding of this "
                f"sentence-transformers model, but {text_model.unsupported}. Pass "
                "an int layer (-1: the last hidden state) with a pooling instead."
            )
        slots = [slot_of(layer, self.pooling, text_model) for layer in layers]
        computed = list(dict.fromkeys(slots))
        if store is not None and self.cache_layers is not None:
            computed += [s for s in self._taps(text_model) if s not in computed]
        max_length = resolve_max_length(self.max_length, text_model)
        specials = text_model.tokenizer.num_special_tokens_to_add()
        if self.long_text == "chunk" and stride_of(max_length) >= max_length - specials:
            raise ValueError(
                f"max_length={max_length} is too short to split long texts into "
                f"overlapping windows: the model adds {specials} special tokens to "
                "each. Pass a larger max_length, or long_text='truncate'."
            )
        device = _device.resolve_device(self.device)
        precision = self._precision(device)
        text_model = text_model.on(device)
        policy = self.long_text
        if policy == "chunk":
            policy += f"|stride={stride_of(max_length)}"
        self.model_folder_ = str(text_model.folder)
        self.model_identity_ = text_model.identity
        self.n_hidden_states_ = n_hidden
        self.layers_ = layers
        self.max_length_ = max_length
        self.device_ = device
        self.precision_ = precision
        self.numerics_ = precision_numerics(device, precision)
        self.network_ = text_model
        sentence = text_model.sentence
        self.sentence_pooling_ = None
        if sentence is not None:
            self.sentence_pooling_ = sentence.mode + ("+normalize" * sentence.normalize)
        self.computed_layers_ = [s.name for s in computed]
        self.computed_widths_ = [text_model.width] * len(computed)
        self.taps_ = [s.name for s in computed if s not in slots]
        self.n_features_per_layer_ = [text_model.width] * len(slots)
        self.n_features_out_ = int(sum(self.n_features_per_layer_))
        self.cache_key_ = digest(
            _ROWS, text_model.identity, f"max_length={max_length}", policy
        )
        self.errors_: list[TextInputError] = []
        return self

    def _taps(self, text_model: TextModel) -> list[Slot]:
        n_hidden = text_model.n_hidden_states
        if isinstance(self.cache_layers, str):  # "all"
            values: list = [None, *range(n_hidden)]
        else:
            values = _layer_values(self.cache_layers, "cache_layers")
        taps = []
        for value in values:
            layer = check_layer(value, n_hidden, "cache_layers")
            if layer is None:
                taps.append(slot_of(None, self.pooling, text_model))
            else:
                taps.extend(Slot(layer, pooling) for pooling in POOLINGS)
        return taps

    def _precision(self, device: torch.device) -> str:
        dtype = _device.resolve_precision(self.precision, device)
        fast = cpu_kernels() in ("amx", "avx512bf16")
        if device.type == "cpu" and dtype != torch.float32 and not fast:
            warn(
                f"precision={self.precision!r} would run several times slower than "
                "float32 on this CPU, which has no bf16 instructions (AVX512-BF16 "
                "or AMX): float32 runs instead (precision_='float32').",
                PrecisionFallbackWarning,
            )
            dtype = torch.float32
        return _device.dtype_name(dtype)

    # -- transforming -------------------------------------------------------
    def transform(self, X):
        r"""Embed each text as one row.

        Parameters
        ----------
        X : list, array or pandas Series of str, or a one-column DataFrame
            Texts (see Notes of the class), or a Dask bag or dataframe
            Series of them (needs ``sktransfer[dask]``).

        Returns
        -------
        X_new : ndarray of shape (n_texts, n_features_out\_), dtype float32
            One row per text, in input order; NaN for missing texts when
            ``on_error="nan"``. For a Dask collection, a lazy
            ``dask.array.Array``, one block per partition (``errors_`` is
            not set).
        """
        return self._apply(X, "transform", self._transform)

    def _dask_output(self, method):
        return self.n_features_out_, np.dtype(np.float32)

    def _transform(self, texts) -> np.ndarray:
        self._check_numerics()
        model = cast(TextModel, self._network())
        present = texts.present()
        if self.long_text == "truncate" and present:
            texts_present = [texts.texts[i] for i in present]
            warn_truncated(
                model,
                texts_present,
                self.max_length_,
                chunk=True,
                digests=texts.digests(present),
            )
        store = _cache.resolve(self.cache)
        names = [s.name for s in self._requested()]
        if store is None:
            out = np.full((len(texts), self.n_features_out_), np.nan, np.float32)
            if present:
                columns = self._compute(texts, np.asarray(present))
                out[present] = self._select(columns, names)
        else:
            config = digest(
                self.cache_key_, precision_numerics(self.device_, self.precision_)
            )
            out = _cache.cached_rows(
                store,
                config,
                texts,
                names,
                self.n_features_per_layer_,
                dict(zip(self.computed_layers_, self.computed_widths_, strict=True)),
                lambda indices: self._compute(texts, indices),
            )
        report_errors(
            self, texts.errors, len(texts), "texts are missing", MissingTextsWarning
        )
        return out

    def _requested(self) -> list[Slot]:
        """The slots of ``layers_``, in order."""
        last = self.n_hidden_states_ - 1
        return [
            Slot(last, "mean")  # (a plain encoder's own embedding)
            if layer is None and self.sentence_pooling_ is None
            else Slot(layer, "sentence" if layer is None else self.pooling)
            for layer in self.layers_
        ]

    def _computed_slots(self) -> list[Slot]:
        slots = []
        for name in self.computed_layers_:
            if name == "sentence":
                slots.append(Slot(None, "sentence"))
            else:
                layer, _, pooling = name.partition("|")
                slots.append(Slot(int(layer), pooling))
        return slots

    def _select(self, columns: np.ndarray, names: list[str]) -> np.ndarray:
        bounds = _cache.column_bounds(self.computed_layers_, self.computed_widths_)
        return np.hstack([columns[:, slice(*bounds[name])] for name in names])

    def _compute(self, texts, indices) -> np.ndarray:
        """The columns of every slot of ``computed_layers_`` for those rows."""
        out, _ = encode(
            self._network(),
            [texts.texts[i] for i in indices],
            self._computed_slots(),
            max_length=self.max_length_,
            chunk=self.long_text == "chunk",
            batch_size=self.batch_size,
            device=self.device_,
            dtype=self._dtype(),
            verbose=self.verbose,
            indices=indices,
        )
        return out

    def get_feature_names_out(self, input_features=None):
        """Names of the output features.

        ``embedding_<i>`` for ``layer=None``, ``layer<k>_<pooling>_<i>`` for
        hidden state ``k``.

        Parameters
        ----------
        input_features : None
            Ignored.

        Returns
        -------
        feature_names_out : ndarray of str objects
            The output feature names.
        """
        check_is_fitted(self)
        names = []
        for layer, width in zip(self.layers_, self.n_features_per_layer_, strict=True):
            label = "embedding" if layer is None else f"layer{layer}_{self.pooling}"
            names.extend(f"{label}_{i}" for i in range(width))
        return np.asarray(names, dtype=object)

    # -- persistence --------------------------------------------------------
    def _tensors_to_pickle(self, net):
        return None  # loaded again from the model's folder, checked by digest

    def _published_weights_file(self):
        return self._source().cached_file(self.model)

    def _rebuild_network(self) -> TextModel:  # type: ignore[override]
        text_model = self._source().load(self.model)
        if text_model.identity != self.model_identity_:
            raise ValueError(
                f"The files of the text model {self.model!r} (now in "
                f"{str(text_model.folder)!r}) differ from those this extractor was "
                "fitted with (their digests differ): its rows would differ too. "
                "Fit it again on these files, or restore the original ones."
            )
        return text_model.on(self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = []
        return tags
