"""FineTunedTextClassifier: new layers on a pretrained text encoder, trained
with its last N transformer blocks."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from numbers import Integral, Real
from typing import cast

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer import _cache, _dask, _device, _training
from sktransfer._base import (
    SHARED_CONSTRAINTS,
    TransferEstimator,
    compute_precision,
    precision_numerics,
)
from sktransfer._cache import EmbeddingCache
from sktransfer._finetune import (
    ACTIVATIONS,
    ClassifierTargets,
    fit_network,
    hidden_sizes,
    new_layers,
)
from sktransfer._identity import digest, module_digest
from sktransfer._sources import source_of
from sktransfer._sources.transformers import TextModel
from sktransfer._text.encode import POOLINGS, Slot, encode, padded, pool, token_ids
from sktransfer._text.inputs import as_texts
from sktransfer._text_extractor import (
    PretrainedTextExtractor,
    check_layer,
    resolve_max_length,
    slot_of,
    warn_truncated,
)
from sktransfer.exceptions import TruncationWarning

__all__ = ["FineTunedTextClassifier", "TextClassifierNetwork", "transformer_blocks"]


class TextClassifierNetwork(nn.Module):
    """A text encoder, one hidden state pooled over the real tokens, then
    the new layers (``head``).

    Its input is a ``(b, 2, length)`` tensor: the token ids and the mask of
    real tokens, stacked (one tensor, so that the training step can split
    a batch into micro-batches).
    """

    encoder: nn.Module
    head: nn.Module

    def __init__(self, encoder, head, layer: int, mode: str, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.layer, self.mode, self.normalize = layer, mode, normalize

    def forward(self, x):
        output = self.encoder(
            input_ids=x[:, 0],
            attention_mask=x[:, 1],
            output_hidden_states=True,
            return_dict=True,
        )
        hidden = output.hidden_states[self.layer]
        return self.head(pool(hidden, x[:, 1].bool(), self.mode, self.normalize))


def transformer_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's transformer blocks, first to last: its one
    ``nn.ModuleList`` of ``config.num_hidden_layers`` modules (BERT's
    ``encoder.layer``, DistilBERT's ``transformer.layer``...); a ValueError
    where there is no such list, or several."""
    n = int(getattr(encoder, "config").num_hidden_layers)  # noqa: B009  (a Module)
    found = [
        (name, module)
        for name, module in encoder.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n
    ]
    if len(found) != 1:
        where = [name for name, _ in found]
        raise ValueError(
            f"trainable_layers as a number of blocks needs the transformer blocks "
            f"of the encoder, but {type(encoder).__name__} has "
            f"{'no' if not found else len(found)} lists of {n} modules "
            f"{where if found else ''}(sktransfer looks for one, as BERT's "
            "encoder.layer). Use trainable_layers=0 (the new layers alone) or "
            "'all'."
        )
    return list(found[0][1])


def _freeze(encoder: nn.Module, trainable_layers, kept: int, layer) -> int:
    """Set ``requires_grad`` of ``encoder`` (a private copy) for
    ``trainable_layers``; return how many blocks train."""
    if trainable_layers == "all":
        encoder.requires_grad_(True)
        return kept
    blocks = transformer_blocks(encoder)[:kept]
    if trainable_layers > kept:
        cut = "the model has" if layer is None else f"layer={layer} keeps"
        raise ValueError(
            f"trainable_layers={trainable_layers}, but {cut} {kept} transformer "
            f"blocks. Use at most {kept}, or 'all'."
        )
    encoder.requires_grad_(False)
    for block in blocks[kept - trainable_layers :]:
        block.requires_grad_(True)
    return trainable_layers


class FineTunedTextClassifier(ClassifierMixin, ClassifierTargets, TransferEstimator):
    """Fine-tune a pretrained text encoder on your classes: new layers on one
    of its hidden states, trained with its last N transformer blocks.

    Each text is tokenized by the model's own tokenizer, run through the
    encoder, and hidden state ``layer`` is pooled over its real tokens as
    :class:`PretrainedTextExtractor` pools it; new layers follow
    (``hidden_layer_sizes``, then one output per class). The new layers and
    the last ``trainable_layers`` transformer blocks are trained with AdamW
    on a cross-entropy loss, by the training loop of
    :class:`FineTunedClassifier` (micro-batches out of memory, early
    stopping, class weights, generators owned by the fit); the rest stays
    frozen.

    A fitted classifier can be the ``model`` of a
    :class:`PretrainedTextExtractor`: its fine-tuned encoder, frozen, at any
    layer ("develop a source model, then reuse it").

    Read more in the user guide, ``docs/text.md``. Needs
    ``pip install 'sktransfer[text]'``.

    Parameters
    ----------
    model : str or path-like, default="sentence-transformers/all-MiniLM-L6-v2"
        The pretrained encoder, as in :class:`PretrainedTextExtractor`: a
        local model folder in the transformers format or a Hugging Face hub
        id found in the local hub cache. Never modified.

    layer : int or None, default=None
        The hidden state the new layers read, as in
        :class:`PretrainedTextExtractor`: ``None`` is the model's own
        sentence embedding (a sentence-transformers folder's pooling and
        normalisation, else the mean of the last hidden state), 0 the
        embedding layer's output, k the output of block k, negative values
        count from the end. Blocks after it are not trained.

    pooling : {"mean", "cls", "max"}, default="mean"
        How an int ``layer``'s hidden state becomes a vector (padding
        excluded, special tokens included), as in
        :class:`PretrainedTextExtractor`. Ignored for ``layer=None``.

    max_length : int or None, default=None
        The longest input in tokens, special tokens included; None: the
        model's. Longer texts are truncated to their first ``max_length``
        tokens, in training and prediction, with one
        :class:`~sktransfer.TruncationWarning` per call giving how many.

    hidden_layer_sizes : tuple of int, default=()
        The new hidden layers, as in
        :class:`~sklearn.neural_network.MLPClassifier`. ``()``: a linear
        head.

    activation : {"relu", "gelu", "tanh", "logistic", "identity"}, \
            default="relu"
        The activation of the new hidden layers.

    dropout : float, default=0.0
        Dropout rate on the input of each new linear layer, while training.

    trainable_layers : int or "all", default=0
        How much of the encoder is trained: 0 trains the new layers only,
        on features that the frozen encoder computes once per text (through
        a :class:`PretrainedTextExtractor` and its ``cache``, so that further
        epochs, refits and a grid search over the new layers cost almost
        nothing); N also trains the last N transformer blocks up to
        ``layer`` (for BERT-like encoders: the one list of
        ``num_hidden_layers`` blocks, such as BERT's ``encoder.layer``; other
        architectures get a clear error); ``"all"`` trains every parameter
        of the encoder, the embeddings included.

    learning_rate : float, default=1e-3
        Learning rate of the new layers.

    backbone_lr_scale : float, default=0.1
        The encoder's learning rate is ``learning_rate * backbone_lr_scale``:
        pretrained weights need smaller steps than new layers.

    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay.

    max_epochs : int, default=10
        Number of passes over the training data (fewer with early stopping).

    batch_size : int, default=32
        Texts per optimisation step (and per forward pass in ``predict``).

    early_stopping : bool, default=False
        Set aside ``validation_fraction`` of the training data (stratified)
        and stop when its accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the weights of the best epoch are kept.

    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.

    n_iter_no_change : int, default=3
        Epochs without improvement before early stopping.

    tol : float, default=1e-4
        Smallest improvement of the validation accuracy that counts.

    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, as in sklearn's linear models.

    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        Where the frozen encoder's pooled vectors are kept
        (``trainable_layers=0``), as in :class:`PretrainedTextExtractor`:
        clones and refits on the same texts reuse them.

    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Mixed-precision training and prediction (autocast), as in
        :class:`FineTunedClassifier`; bfloat16 on a CPU without bf16
        instructions falls back to float32 with a warning.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the new layers' initialisation, the
        shuffling and dropout (torch's global generator, forked for the fit
        and restored after it). Fitting never changes numpy's or torch's
        global random state; an int gives the same model on the same machine
        (CPU).

    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, then MPS, else the CPU.

    verbose : bool, default=True
        Show progress bars (embedding, and each epoch's loss).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.

    network_ : TextClassifierNetwork
        The encoder (``encoder``; with ``trainable_layers=0``, the loaded
        model's, shared) and the new layers (``head``), in eval mode.

    layer_ : int or None
        The hidden state the new layers read (negative values made
        positive; None: the model's sentence embedding).

    max_length_ : int
        The longest input in tokens.

    model_folder_ : str
        The local folder the model was loaded from (its tokenizer is used).

    model_identity_ : str
        Digest of the pretrained model's files.

    encoder_identity_ : str
        Digest of the fitted encoder: ``model_identity_`` when it was not
        trained, so that its reuse shares the pretrained model's cached rows.

    n_trainable_layers_ : int
        Number of transformer blocks trained.

    n_trainable_params_ : int
        Number of trained parameters (new layers included).

    n_iter_ : int
        Number of epochs run.

    loss_curve_ : list of float
        Mean training loss of each epoch.

    validation_scores_ : list of float or None
        Validation accuracy after each epoch (early stopping only).

    best_validation_score_ : float or None
        The best of ``validation_scores_``, whose weights were kept.

    device_ : torch.device
        The device the network is on.

    precision_ : str
        The compute precision used, e.g. ``"float32"``.

    numerics_ : str
        What produced the model's outputs at fit, as in
        :class:`FineTunedClassifier`.

    See Also
    --------
    PretrainedTextExtractor : Frozen text features for any sklearn estimator.
    FineTunedClassifier : The same recipe for images.

    Notes
    -----
    Input: as for :class:`PretrainedTextExtractor`, a list, tuple, 1-D array,
    pandas Series or one-column DataFrame of ``str``; a missing text is an
    error naming its row.

    Training runs in train mode (dropout on) in the trained blocks and the
    new layers, in eval mode in the frozen parts; prediction runs in eval
    mode under ``torch.inference_mode``. Pickles hold the new layers'
    tensors, and the encoder's only where it was trained; the tokenizer and
    the frozen encoder are loaded again from ``model``, checked by digest.

    Examples
    --------
    >>> from sktransfer import FineTunedTextClassifier
    >>> clf = FineTunedTextClassifier(
    ...     model="../shared/weights/text/all-MiniLM-L6-v2", trainable_layers=1,
    ...     max_epochs=3, verbose=False, random_state=0,
    ... )  # doctest: +SKIP
    >>> clf.fit(["a great film", "an awful film"], [1, 0]).predict(["great"])
    ... # doctest: +SKIP
    array([1])
    """

    _source_kind = "text"
    _input_word = "texts"

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "model": [str, os.PathLike],
        "layer": [Integral, None],
        "pooling": [StrOptions(set(POOLINGS))],
        "max_length": [Interval(Integral, 2, None, closed="left"), None],
        "hidden_layer_sizes": [
            "array-like",
            Interval(Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "trainable_layers": [
            Interval(Integral, 0, None, closed="left"),
            StrOptions({"all"}),
        ],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "cache": [str, os.PathLike, EmbeddingCache, None],
    }

    def __init__(
        self,
        *,
        model="sentence-transformers/all-MiniLM-L6-v2",
        layer=None,
        pooling="mean",
        max_length=None,
        hidden_layer_sizes=(),
        activation="relu",
        dropout=0.0,
        trainable_layers=0,
        learning_rate=1e-3,
        backbone_lr_scale=0.1,
        weight_decay=1e-4,
        max_epochs=10,
        batch_size=32,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        tol=1e-4,
        class_weight=None,
        cache="memory",
        precision="auto",
        random_state=None,
        device="auto",
        verbose=True,
    ):
        self.model = model
        self.layer = layer
        self.pooling = pooling
        self.max_length = max_length
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.trainable_layers = trainable_layers
        self.learning_rate = learning_rate
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.class_weight = class_weight
        self.cache = cache
        self.precision = precision
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- inputs and weights --------------------------------------------------
    def _inputs(self, X, fitted: bool = False):
        return as_texts(X, on_error="raise")

    def _source(self):
        return source_of(self.model, kind="text")

    def _check_weights_available(self) -> None:
        if isinstance(self.model, (str, os.PathLike)):  # (else: fit says why)
            self._source().check_available(self.model)

    def _pretrained(self) -> TextModel:
        """The pretrained model of ``model`` (shared, read-only), checked
        against the files it was fitted with."""
        text_model = self._source().load(self.model)
        if text_model.identity != self.model_identity_:
            raise ValueError(
                f"The files of the text model {self.model!r} (now in "
                f"{str(text_model.folder)!r}) differ from those this classifier "
                "was fitted with (their digests differ): its tokenizer or frozen "
                "encoder would differ too. Fit it again on these files, or "
                "restore the original ones."
            )
        return text_model

    # -- fitting ------------------------------------------------------------
    def fit(self, X, y):  # (the base's, documented here)
        """Train the new layers and the trainable blocks on ``X``, ``y``.

        Parameters
        ----------
        X : list, array or pandas Series of str, or a one-column DataFrame
            Texts (see Notes of the class).
        y : array-like of shape (n_texts,)
            Class labels (any type sklearn accepts for classification).

        Returns
        -------
        self : FineTunedTextClassifier
            The fitted classifier.
        """
        return super().fit(X, y)

    def _fit(self, X, y):
        name = type(self).__name__
        if _dask.is_dask(X):
            raise TypeError(
                f"{name}.fit trains on texts in memory, not on a Dask "
                "collection: compute the training set first (X.compute()). "
                "predict and predict_proba take Dask collections."
            )
        if y is None:
            raise ValueError(
                f"{name} requires y to be passed, but the target y is None."
            )
        _cache.resolve(self.cache)  # (checks the parameter, before the data)
        hidden = hidden_sizes(self.hidden_layer_sizes)
        texts = self._inputs(X)
        targets, stratify = self._encode_targets(y)
        if len(targets) != len(texts):
            raise ValueError(
                f"X has {len(texts)} texts but y has {len(targets)} labels; they "
                "must be equal."
            )
        source = self._source()
        source.check(self.model)
        pretrained = source.load(self.model)
        n_hidden = pretrained.n_hidden_states
        layer = check_layer(self.layer, n_hidden, "layer")
        slot = slot_of(layer, self.pooling, pretrained)
        if layer is None and pretrained.sentence is None and pretrained.unsupported:
            raise ValueError(
                "layer=None asks for the sentence embedding of this "
                f"sentence-transformers model, but {pretrained.unsupported}. Pass "
                "an int layer (-1: the last hidden state) with a pooling instead."
            )
        max_length = resolve_max_length(self.max_length, pretrained)
        device = _device.resolve_device(self.device)
        dtype = compute_precision(self.precision, device)
        rng = self._random_state()
        train, valid = np.arange(len(targets)), None
        if self.early_stopping:
            train, valid = train_test_split(
                train,
                test_size=self.validation_fraction,
                stratify=stratify,
                random_state=rng,
            )
        seed = int(rng.randint(2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        kept = n_hidden - 1 if slot.layer is None else slot.layer
        if self.trainable_layers == 0:
            encoder = pretrained.on(device).encoder  # (shared, frozen)
            n_trainable = 0
        else:
            encoder = copy.deepcopy(pretrained.encoder)
            n_trainable = _freeze(encoder, self.trainable_layers, kept, layer)
        head = new_layers(
            pretrained.width,
            hidden,
            self._n_outputs(),
            self.activation,
            self.dropout,
            generator,
        )
        net = _network_of(encoder, head, slot, pretrained).to(device)
        self.network_ = net
        self.layer_ = layer
        self.max_length_ = max_length
        self.model_folder_ = str(pretrained.folder)
        self.model_identity_ = pretrained.identity
        self.device_ = device
        self.precision_ = _device.dtype_name(dtype)
        self.numerics_ = precision_numerics(device, self.precision_)
        self.n_trainable_layers_ = n_trainable
        self.n_trainable_params_ = sum(
            p.numel() for p in net.parameters() if p.requires_grad
        )
        if n_trainable == 0 and self.trainable_layers == 0:
            self._train_head(texts, targets, train, valid, dtype, generator)
            self.encoder_identity_ = pretrained.identity
        else:
            self._train_network(
                pretrained, texts, targets, train, valid, dtype, generator
            )
            self.encoder_identity_ = digest(
                "finetuned-text", pretrained.identity, module_digest(encoder)
            )
        return self

    def _train_head(self, texts, targets, train, valid, dtype, generator):
        """Train the new layers on the frozen encoder's pooled vectors,
        computed once per text."""
        net, device = self.network_, self.device_
        features = torch.from_numpy(self._frozen_features(texts))

        def batches(order):
            return _training.feature_batches(features, order, self.batch_size, device)

        def outputs_of(rows):
            return _head_outputs(net, features[rows], device)

        fit_network(
            self,
            net=net,
            forward=net.head,
            batches=batches,
            outputs_of=outputs_of,
            targets=targets,
            train=train,
            valid=valid,
            dtype=dtype,
            generator=generator,
            train_mode=lambda: self._train_mode(net),
        )

    def _train_network(
        self, pretrained, texts, targets, train, valid, dtype, generator
    ):
        """Train the new layers and the trainable blocks, texts tokenized
        once and padded per batch."""
        net, device = self.network_, self.device_
        warn_truncated(pretrained, texts.texts, self.max_length_, chunk=False)
        ids = token_ids(pretrained, _keys(texts.texts, pretrained), self.max_length_)
        pad = pretrained.tokenizer.pad_token_id or 0

        def batches(order):
            start = 0
            for size in _training.plan_batches(len(order), self.batch_size):
                rows = order[start : start + size]
                start += size
                input_ids, mask = padded([ids[r] for r in rows], pad)
                x = torch.stack([input_ids, mask.long()], dim=1)
                yield rows, x.to(device, non_blocking=True)

        def outputs_of(rows):
            # (the encoder in training: its identity is not known yet)
            training = dataclasses.replace(pretrained, encoder=net.encoder)
            return self._encoded_outputs([texts.texts[r] for r in rows], training)

        fit_network(
            self,
            net=net,
            forward=net,
            batches=batches,
            outputs_of=outputs_of,
            targets=targets,
            train=train,
            valid=valid,
            dtype=dtype,
            generator=generator,
            train_mode=lambda: self._train_mode(net),
        )

    @staticmethod
    def _train_mode(net: TextClassifierNetwork) -> None:
        """Train mode, except the frozen parts of the encoder (no dropout
        where nothing learns)."""
        net.train()
        for module in net.encoder.modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()

    # -- features and outputs -----------------------------------------------
    def _extractor(self) -> PretrainedTextExtractor:
        """The frozen encoder as an extractor at ``layer`` (its cache)."""
        return PretrainedTextExtractor(
            model=self.model,
            layer=self.layer_,
            pooling=self.pooling,
            max_length=self.max_length_,
            batch_size=self.batch_size,
            cache=self.cache,
            precision=self.precision_,
            device=self.device_,
            verbose=self.verbose,
        )

    def _frozen_features(self, texts) -> np.ndarray:
        """The frozen encoder's pooled vectors of ``texts``, through the
        extractor (and its cache); truncation is counted in our words."""
        extractor = self._extractor().fit(texts.texts)
        if extractor.model_identity_ != self.model_identity_:
            self._pretrained()  # (raises: the files changed)
        with warnings.catch_warnings():
            # (its warning suggests long_text='chunk', which we do not have)
            warnings.simplefilter("ignore", TruncationWarning)
            out = extractor.transform(texts.texts)
        warn_truncated(extractor.network_, texts.texts, self.max_length_, chunk=False)
        return out

    def _encoded_outputs(self, texts: list[str], model=None) -> np.ndarray:
        """The network's logits for ``texts``, the encoder run by
        :func:`~sktransfer._text.encode.encode` (eval mode); ``model``: the
        text model to run (the fitted one by default)."""
        net = self._network()
        model = self._text_model() if model is None else model
        features, _ = encode(
            model,
            texts,
            [self._slot_at_fit(model)],
            max_length=self.max_length_,
            chunk=False,
            batch_size=self.batch_size,
            device=self.device_,
            dtype=self._dtype(),
            verbose=False,
        )
        return _head_outputs(net, torch.from_numpy(features), self.device_)

    def _outputs(self, texts) -> np.ndarray:
        """The logits of every text."""
        self._check_numerics()
        net = self._network()
        if self.encoder_identity_ == self.model_identity_:  # a frozen encoder
            features = torch.from_numpy(self._frozen_features(texts))
            return _head_outputs(net, features, self.device_)
        model = self._text_model()
        warn_truncated(model, texts.texts, self.max_length_, chunk=False)
        return self._encoded_outputs(texts.texts)

    # -- prediction ---------------------------------------------------------
    def predict_proba(self, X):
        """Class probabilities of each text.

        Parameters
        ----------
        X : list, array or pandas Series of str, or a one-column DataFrame
            Texts (see Notes of the class).

        Returns
        -------
        proba : ndarray of shape (n_texts, n_classes)
            Probabilities, columns in the order of ``classes_``.
        """
        return self._apply(X, "predict_proba", self._proba)

    def predict(self, X):
        """The most probable class of each text.

        Parameters
        ----------
        X : list, array or pandas Series of str, or a one-column DataFrame
            Texts (see Notes of the class).

        Returns
        -------
        y_pred : ndarray of shape (n_texts,)
            Predicted labels, of the type of ``classes_``.
        """
        return self._apply(X, "predict", self._predict)

    # -- reuse as an extractor's model --------------------------------------
    def _sktransfer_text_model(self) -> TextModel:
        """The fitted encoder with the pretrained model's tokenizer, for
        :class:`PretrainedTextExtractor` (shared, read-only; on the CPU)."""
        check_is_fitted(
            self,
            msg=(
                f"This {type(self).__name__} is not fitted yet: fit it on the "
                "source task before using it as the 'model' of an extractor."
            ),
        )
        return self._text_model(cpu=True)

    def _text_model(self, cpu: bool = False) -> TextModel:
        encoder = cast(TextClassifierNetwork, self._network()).encoder
        if cpu and self.device_.type != "cpu":
            encoder = copy.deepcopy(encoder).cpu()
        return dataclasses.replace(
            self._pretrained(), encoder=encoder, identity=self.encoder_identity_
        )

    # -- persistence --------------------------------------------------------
    def _tensors_to_pickle(self, net):
        if self.encoder_identity_ == self.model_identity_:  # (loaded from model)
            return {f"head.{k}": v for k, v in net.head.state_dict().items()}
        return net.state_dict()

    def _published_weights_file(self):
        return self._source().cached_file(self.model)

    def _rebuild_network(self) -> TextClassifierNetwork:  # type: ignore[override]
        state = self._pickled_network_state()
        if state is None:
            raise ValueError(
                f"This {type(self).__name__}'s pickle holds no network tensors: "
                "it was not written by sktransfer. Fit it again."
            )
        pretrained = self._pretrained()
        trained = any(key.startswith("encoder.") for key in state)
        if trained:
            encoder = copy.deepcopy(pretrained.encoder)
        else:
            encoder = pretrained.on(self.device_).encoder
        head = new_layers(  # (initialised, then loaded)
            pretrained.width,
            hidden_sizes(self.hidden_layer_sizes),
            self._n_outputs(),
            self.activation,
            self.dropout,
            torch.Generator(),
        )
        net = _network_of(encoder, head, self._slot_at_fit(pretrained), pretrained)
        if trained:
            net.load_state_dict(state)
        else:
            net.head.load_state_dict({k[len("head.") :]: v for k, v in state.items()})
        net.requires_grad_(False)
        return net.to(self.device_).eval()

    def _slot_at_fit(self, pretrained: TextModel) -> Slot:
        """The pooled vector the new layers read."""
        return slot_of(self.layer_, self.pooling, pretrained)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        return tags


def _network_of(encoder, head, slot: Slot, pretrained: TextModel):
    """The network that reads ``slot`` of ``encoder``."""
    if slot.layer is None:  # a sentence-transformers folder's own embedding
        sentence = pretrained.sentence
        assert sentence is not None
        last = pretrained.n_hidden_states - 1
        return TextClassifierNetwork(
            encoder, head, last, sentence.mode, sentence.normalize
        )
    return TextClassifierNetwork(encoder, head, slot.layer, slot.pooling, False)


def _head_outputs(net, features: torch.Tensor, device) -> np.ndarray:
    """The new layers' outputs (eval mode) for pooled vectors."""
    with torch.inference_mode():
        return net.head(features.to(device)).float().cpu().numpy()


def _keys(texts, pretrained: TextModel) -> list[str]:
    """The texts as the model reads them (lowercased where its
    sentence-transformers configuration says so, as ``encode`` does)."""
    sentence = pretrained.sentence
    if sentence is not None and sentence.lowercase:
        return [text.lower() for text in texts]
    return list(texts)
