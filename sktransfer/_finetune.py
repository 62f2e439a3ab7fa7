"""FineTunedClassifier and FineTunedRegressor: the recipe of transfer
learning in sklearn. Keep a pretrained network up to a cut point, add new
layers, train them (and the last kept stages)."""

from __future__ import annotations

import abc
import copy
import math
import os
from numbers import Integral, Real
from typing import cast

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
from torch import nn

from sktransfer import _cache, _dask, _device, _engine, _network, _training
from sktransfer._base import (
    IMAGE_CONSTRAINTS,
    ImageEstimator,
    compute_precision,
    precision_numerics,
)
from sktransfer._cache import EmbeddingCache
from sktransfer._families import family_of
from sktransfer._identity import digest, module_digest
from sktransfer._images import decode as _decode
from sktransfer._memo import Memo
from sktransfer._runtime import layers as _layers
from sktransfer._sources import Backbone, load_backbone, weights_identity
from sktransfer._sources.checkpoints import last_linear, replace_head

__all__ = [
    "ClassifierTargets",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "fit_network",
    "hidden_sizes",
    "new_layers",
]

_NORMS_WITH_STATS = (nn.modules.batchnorm._BatchNorm,)

#: The activations of the new hidden layers (sklearn's MLP names, and GELU).
ACTIVATIONS = {
    "identity": nn.Identity,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}
#: Parameters added after the first release: unpickled estimators that lack
#: them get these values (what those estimators did).
_LATER_PARAMETERS = {
    "layer": None,
    "pooling": "avg",
    "hidden_layer_sizes": (),
    "activation": "relu",
    "dropout": 0.0,
    "cache": None,
}
#: The version of what a frozen-features row means (part of its cache key),
#: and its name in the cache (the key's ``layer``: the cut is in the config).
_FROZEN_ROWS, _FROZEN = "finetuned-frozen-rows-1", "frozen"
#: The kept module's digest by the identity of its loaded weights.
_KEPT_DIGESTS = Memo(size=256)


class ClassifierNetwork(nn.Module):
    """The kept part of a backbone (its old head removed) followed by the
    new layers (``head``: one ``nn.Linear``, or hidden layers then one)."""

    backbone: nn.Module
    head: nn.Module

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def new_head(width: int, n_classes: int, generator: torch.Generator) -> nn.Linear:
    """A new ``nn.Linear`` head, initialised as PyTorch initialises one
    (Kaiming-uniform weight, uniform bias) from ``generator``, without a
    draw from torch's global generator."""
    head = nn.utils.skip_init(nn.Linear, width, n_classes)
    nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(width)
    nn.init.uniform_(head.bias, -bound, bound, generator=generator)
    return head


def new_layers(
    width: int,
    hidden_layer_sizes: tuple[int, ...],
    n_outputs: int,
    activation: str,
    dropout: float,
    generator: torch.Generator,
) -> nn.Module:
    """The new layers: for each hidden size a linear layer and the
    activation, then the output layer; dropout (if any) on the input of
    each linear layer. No hidden layer and no dropout: a single
    ``nn.Linear``, as in the first release (same state dict keys)."""
    layers: list[nn.Module] = []
    sizes = (*hidden_layer_sizes, n_outputs)
    for i, size in enumerate(sizes):
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(new_head(width, size, generator))
        if i < len(sizes) - 1:
            layers.append(ACTIVATIONS[activation]())
        width = size
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def hidden_sizes(value) -> tuple[int, ...]:
    """The ``hidden_layer_sizes`` parameter as a tuple (an int is one
    layer), checked."""
    sizes = (value,) if isinstance(value, Integral) else tuple(value)
    if not all(isinstance(s, Integral) and int(s) >= 1 for s in sizes):
        raise ValueError(
            "The 'hidden_layer_sizes' parameter must be a tuple of positive "
            f"integers (() for a linear head). Got {value!r}."
        )
    return tuple(int(s) for s in sizes)


def head_width(head: nn.Module) -> int:
    """The width of the features the new layers read."""
    if isinstance(head, nn.Linear):
        return head.in_features
    return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features


def _layer_index(key: str) -> int:
    """The position of a ``head.<i>.weight`` in the new layers (-1: a
    single ``head.weight``)."""
    parts = key.split(".")
    return int(parts[1]) if len(parts) == 3 else -1


def _has_parameters(module: nn.Module, name: str) -> bool:
    try:
        sub = module.get_submodule(name)
    except AttributeError:  # (after the cut)
        return False
    return any(True for _ in sub.parameters())


def trainable_groups(module: nn.Module, family) -> list[list[str]]:
    """The family's units of fine-tuning that hold parameters, in
    ``module`` (a network cut at a layer keeps the stages before it)."""
    groups = [
        [name for name in group if _has_parameters(module, name)]
        for group in family.trainable_groups(module)
    ]
    return [group for group in groups if group]


def freeze(module: nn.Module, family, trainable_layers) -> int:
    """Set ``requires_grad`` for ``trainable_layers``; return how many groups
    are trainable."""
    groups = trainable_groups(module, family)
    if trainable_layers == "all":
        module.requires_grad_(True)
        return len(groups)
    if trainable_layers > len(groups):
        raise ValueError(
            f"trainable_layers={trainable_layers}, but the model has "
            f"{len(groups)} stages: {[g[0] for g in groups]}. Use at most "
            f"{len(groups)}, or 'all'."
        )
    module.requires_grad_(False)
    for group in groups[len(groups) - trainable_layers :]:
        for name in group:
            module.get_submodule(name).requires_grad_(True)
    return trainable_layers


def kept_stages(model, weights, layer, seed=None) -> int:
    """How many stages ``trainable_layers`` can count when the network is cut
    at ``layer`` (what ``fit`` would keep), without fitting: the most it
    accepts, short of ``"all"``."""
    estimator = FineTunedClassifier(model=model, weights=weights, layer=layer)
    backbone = load_backbone(model, weights, seed)
    module = estimator._kept(backbone)
    body = module.body if isinstance(module, _layers.CutNet) else module
    return len(trainable_groups(body, backbone.family))


def fit_network(
    estimator,
    *,
    net: nn.Module,
    forward,
    batches,
    outputs_of,
    targets: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray | None,
    dtype: torch.dtype,
    generator: torch.Generator,
    train_mode,
) -> None:
    """Train ``net`` (its new layers, ``net.head``, and its other trainable
    parameters) with :func:`_training.fit_loop`, as ``estimator``'s
    parameters say; record the history in its fitted attributes.

    ``forward`` maps what ``batches(order)`` yields to outputs (the network,
    or its head alone on precomputed features); ``outputs_of(rows)`` gives
    the eval-mode outputs of those rows, for early stopping. The new layers
    learn at ``learning_rate``, the other trainable parameters at
    ``learning_rate * backbone_lr_scale``; the loss, the class weights and
    the validation score are the estimator's.
    """
    device = estimator.device_
    head_params = list(cast(nn.Module, net.head).parameters())
    in_head = {id(p) for p in head_params}
    body_params = [
        p for p in net.parameters() if p.requires_grad and id(p) not in in_head
    ]
    groups = [{"params": head_params, "lr": estimator.learning_rate}]
    if body_params:
        lr = estimator.learning_rate * estimator.backbone_lr_scale
        groups.append({"params": body_params, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=estimator.weight_decay)
    loss, weight = estimator._loss(targets, train)
    step = _training.TrainStep(forward, optimizer, weight, device, dtype, loss=loss)
    validate, stopper = None, None
    if valid is not None:

        def validate():
            net.eval()
            return estimator._validation_score(outputs_of(valid), targets[valid])

        stopper = _training.EarlyStopping(estimator.n_iter_no_change, estimator.tol)
    # Dropout draws from torch's global generator: fork it, seeded from
    # ours, so that the caller's state is left untouched. Training runs
    # under the cuDNN settings of transform (autotuned; no TF32 in
    # float32), set once for the whole loop.
    devices = [_device.cuda_index(device)] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        _device.cudnn_settings(device, dtype),
    ):
        torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        history = _training.fit_loop(
            net=net,
            step=step,
            batches=batches,
            targets=torch.from_numpy(targets),
            train_rows=train,
            max_epochs=estimator.max_epochs,
            generator=generator,
            train_mode=train_mode,
            validate=validate,
            stopper=stopper,
            verbose=estimator.verbose,
        )
    estimator.n_iter_ = history.n_iter
    estimator.loss_curve_ = history.loss_curve
    estimator.validation_scores_ = history.validation_scores
    estimator.best_validation_score_ = None if stopper is None else stopper.best_score
    if stopper is not None and stopper.best_state is not None:
        net.load_state_dict(stopper.best_state)
    net.eval()


class ClassifierTargets:
    """The classifiers' policy, whatever their inputs: labels encoded as
    ``classes_``, a (class-weighted) cross-entropy, the accuracy for early
    stopping, and classes and probabilities from the logits that
    ``_outputs(inputs)`` gives."""

    classes_: np.ndarray
    #: What ``X`` holds, in error messages.
    _input_word = "images"

    def _encode_targets(self, y):
        y = column_or_1d(y, warn=True)
        if len(y) == 0:
            raise ValueError(
                f"Found 0 {self._input_word} (y is empty); at least 2 are required."
            )
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                "The training data must have at least 2 classes; got 1 class: "
                f"{classes.tolist()}."
            )
        self.classes_ = classes
        encoded = encoded.astype(np.int64)
        return encoded, encoded

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _loss(self, targets, train):
        class_weight = self.class_weight  # type: ignore[attr-defined]
        if class_weight is None:
            return None, None
        weight = compute_class_weight(
            class_weight, classes=self.classes_, y=self.classes_[targets[train]]
        )
        device = self.device_  # type: ignore[attr-defined]
        return None, torch.as_tensor(weight, dtype=torch.float32, device=device)

    def _validation_score(self, outputs, targets) -> float:
        return float(np.mean(outputs.argmax(1) == targets))

    def _dask_output(self, method):
        if method == "predict":
            return None, self.classes_.dtype
        return len(self.classes_), np.dtype(np.float64)

    def _proba(self, inputs) -> np.ndarray:
        outputs = self._outputs(inputs)  # type: ignore[attr-defined]
        return torch.softmax(torch.from_numpy(outputs).double(), dim=1).numpy()

    def _predict(self, inputs) -> np.ndarray:
        outputs = self._outputs(inputs)  # type: ignore[attr-defined]
        return self.classes_[outputs.argmax(axis=1)]


class _FineTuned(ImageEstimator):
    """What the fine-tuned estimators share: the kept network, the new
    layers, the training loop, prediction, reuse as a backbone and
    persistence. A subclass passes its policy: its targets
    (``_encode_targets``), its loss (``_loss``), its validation score
    (``_validation_score``) and how many outputs it has (``_n_outputs``)."""

    network_: ClassifierNetwork
    #: What ``y`` holds, in error messages.
    _target_word = "targets"

    _parameter_constraints: dict = {
        **IMAGE_CONSTRAINTS,
        "layer": [str, None],
        "pooling": [StrOptions(set(_layers.POOLINGS)), None],
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
        "freeze_batchnorm": ["boolean"],
        "augment": ["boolean"],
        "cache": [str, os.PathLike, EmbeddingCache, None],
    }

    def __init__(
        self,
        *,
        model="resnet50",
        weights="DEFAULT",
        layer=None,
        pooling="avg",
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
        freeze_batchnorm=False,
        augment=False,
        cache="memory",
        preprocessing="auto",
        precision="auto",
        num_workers=None,
        max_pixels=_decode.DEFAULT_MAX_PIXELS,
        reduced_decoding=True,
        random_state=None,
        device="auto",
        verbose=True,
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
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
        self.freeze_batchnorm = freeze_batchnorm
        self.augment = augment
        self.cache = cache
        self.preprocessing = preprocessing
        self.precision = precision
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.reduced_decoding = reduced_decoding
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __setstate__(self, state):
        super().__setstate__(state)
        for name, value in _LATER_PARAMETERS.items():
            vars(self).setdefault(name, value)

    # -- subclass policy ----------------------------------------------------
    @abc.abstractmethod
    def _encode_targets(self, y) -> tuple[np.ndarray, np.ndarray | None]:
        """Check ``y`` and set what ``fit`` learns of it; return the
        training targets and the labels to stratify the validation split by
        (None: not stratified)."""

    @abc.abstractmethod
    def _n_outputs(self) -> int:
        """How many outputs the new layers have."""

    @abc.abstractmethod
    def _loss(self, targets, train) -> tuple[nn.Module | None, torch.Tensor | None]:
        """The loss (summed, or None: cross-entropy) and the class weights
        of ``TrainStep``."""

    @abc.abstractmethod
    def _validation_score(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        """The early-stopping score (higher is better) of the outputs."""

    # -- fitting ------------------------------------------------------------
    def _fit(self, X, y):
        name = type(self).__name__
        if _dask.is_dask(X):
            raise TypeError(
                f"{name}.fit trains on images in memory, not on a Dask "
                "collection: compute the training set first (X.compute()). "
                f"{self._dask_methods} take Dask collections."
            )
        if y is None:
            raise ValueError(
                f"{name} requires y to be passed, but the target y is None."
            )
        _cache.resolve(self.cache)  # (checks the parameter, before the data)
        targets, stratify = self._encode_targets(y)
        images = self._inputs(X)
        if len(targets) != len(images):
            raise ValueError(
                f"X has {len(images)} images but y has {len(targets)} "
                f"{self._target_word}; they must be equal."
            )
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
        net, prep = self._build(images, device, dtype, seed, generator)
        self.network_, self.preprocessing_ = net, prep
        self.device_ = device
        self.precision_ = _device.dtype_name(dtype)
        self.numerics_ = precision_numerics(device, self.precision_)
        self._train(images, targets, train, valid, dtype, generator)
        return self

    def _hidden_layer_sizes(self) -> tuple[int, ...]:
        return hidden_sizes(self.hidden_layer_sizes)

    def _kept(self, backbone: Backbone) -> nn.Module:
        """The backbone's module up to ``layer`` (the whole of it for None),
        its old head removed."""
        module, head_name = backbone.module, backbone.head
        if head_name is None:  # a module of the user's: its last nn.Linear
            head_name = last_linear(module)
            if head_name is None and self.layer is None:
                raise ValueError(
                    "The 'model' module has no nn.Linear layer to replace with a "
                    "new head. Give it a final nn.Linear classifier, or cut it "
                    "with 'layer'."
                )
            if head_name is not None:
                replace_head(module, head_name)
        self._head_name = head_name
        if self.layer is None:
            return module
        names = _layers.node_names(module, head_name)
        _layers.resolve_layers(self.layer, names, self._model_label())
        return _layers.CutNet(module, self.layer, self.pooling, backbone.family.nhwc)

    def _build(self, images, device, dtype, seed, generator):
        """The kept backbone with the new layers, on ``device``, frozen as
        ``trainable_layers`` says."""
        hidden = self._hidden_layer_sizes()
        memo_id = weights_identity(self.model, self.weights, seed)
        backbone, memo_id = _network.load_identified(
            self.model, self.weights, seed, memo_id
        )
        module = _device.prepare_network(self._kept(backbone).to(device))
        prep = self._preprocessing_for(backbone, images, device)
        self.cache_key_ = self._frozen_key(backbone, prep, memo_id)  # (uncut)
        width = self._kept_width(module, images, prep, device, dtype)
        body = module.body if isinstance(module, _layers.CutNet) else module
        self.n_trainable_layers_ = freeze(body, backbone.family, self.trainable_layers)
        head = new_layers(
            width, hidden, self._n_outputs(), self.activation, self.dropout, generator
        )
        net = ClassifierNetwork(module, head.to(device))
        self.n_trainable_params_ = sum(
            p.numel() for p in net.parameters() if p.requires_grad
        )
        return net, prep

    def _train_mode(self, net: nn.Module) -> None:
        """Train mode, except batch norms whose statistics are frozen."""
        net.train()
        for module in net.modules():
            if isinstance(module, _NORMS_WITH_STATS) and (
                self.freeze_batchnorm
                or not any(p.requires_grad for p in module.parameters(recurse=False))
            ):
                module.eval()

    def _train(self, images, targets, train, valid, dtype, generator):
        """Train ``network_`` with :func:`fit_network`."""
        net, prep, device = self.network_, self.preprocessing_, self.device_
        frozen_config = self._frozen_config(device, self.precision_)
        augment = self._augmentation(prep, generator) if self.augment else None
        frozen = not any(p.requires_grad for p in net.backbone.parameters())
        if frozen and augment is None:
            # Nothing before the new layers changes: run the frozen part once.
            width = head_width(net.head)
            features = self._frozen_features(images, width, frozen_config)
            features = torch.from_numpy(features)
            forward = net.head

            def batches(order):
                return _training.feature_batches(
                    features, order, self.batch_size, device
                )

            def outputs_of(rows):
                with torch.inference_mode():
                    return net.head(features[rows].to(device)).float().cpu().numpy()
        else:
            forward = net

            def batches(order):
                return _training.image_batches(
                    images, prep, order, self.batch_size, device, augment
                )

            def outputs_of(rows):
                return self._outputs(images, rows)

        fit_network(
            self,
            net=net,
            forward=forward,
            batches=batches,
            outputs_of=outputs_of,
            targets=targets,
            train=train,
            valid=valid,
            dtype=dtype,
            generator=generator,
            train_mode=lambda: self._train_mode(net),
        )

    def _embed(self, images, width, indices=None) -> np.ndarray:
        """The frozen backbone's outputs for every image, or those at
        ``indices`` (eval mode)."""
        backbone = self.network_.backbone.eval()
        out, _ = _engine.extract(
            lambda x: [backbone(x)],
            self.preprocessing_,
            images,
            n_features=width,
            batch_size=self.batch_size,
            device=self.device_,
            dtype=self._dtype(),
            indices=indices,
            verbose=self.verbose,
            desc="Embedding (frozen backbone)",
        )
        return out

    # -- the frozen features through the embedding cache ---------------------
    # Where nothing before the new layers trains (trainable_layers=0, no
    # augmentation), the kept network's rows are those of an extractor: they
    # are kept in the embedding cache under a digest of the kept network
    # (its code, settings, cut, pooling and tensors), the preprocessing and
    # the numerics, so a grid search over the new layers and the training
    # settings runs each image through the network once per cut point.
    def _frozen_key(self, backbone: Backbone, prep, memo_id) -> str | None:
        """``cache_key_``: a digest of the kept network (the whole module's
        code, settings and tensors, before the cut; the cut, the pooling),
        and the preprocessing; None where the features are not cached (a
        kept layer trains, augmentation, no cache)."""
        frozen = self.trainable_layers == 0 and not self.augment
        if not frozen or _cache.resolve(self.cache) is None:
            return None
        # The module's digest once per loaded weights (``memo_id``: their
        # identity), not at every fit of a search: hashing reads every tensor.
        module_key = _KEPT_DIGESTS.get(memo_id)
        if module_key is None:
            module_key = module_digest(backbone.module)
            _KEPT_DIGESTS.put(memo_id, module_key)
        return digest(
            _FROZEN_ROWS,
            module_key,
            f"layer={self.layer}|pooling={self.pooling}|nhwc={backbone.family.nhwc}",
            repr(prep),
        )

    def _frozen_config(self, device, precision) -> str | None:
        """The cache configuration of the frozen features: ``cache_key_``
        and the numerics (None where they are not cached)."""
        key = getattr(self, "cache_key_", None)
        if key is None or _cache.resolve(self.cache) is None:
            return None
        return digest(key, precision_numerics(device, precision))

    def _kept_width(self, module, images, prep, device, dtype) -> int:
        """The width of the kept network's rows (the new layers' input): read
        from the cache where it holds the first image's frozen row, else
        measured on that image, computed as :meth:`_embed` computes rows (on
        ``device``, in ``dtype``, eval mode), and then cached with the others,
        so that a search runs no image twice."""
        row, image = images.first(prep.geometry)
        config = self._frozen_config(device, _device.dtype_name(dtype))
        store = _cache.resolve(self.cache)
        key = None if config is None else images.decoded_digest(row)
        if store is not None and config is not None and key is not None:
            found = _cache.vectors_of(store, config, [_FROZEN], key)
            if found is not None:
                return len(found[0])
        module.eval()
        with _device.cudnn_settings(device, dtype):
            features = _engine.run_batch(
                lambda x: [module(x)],
                prep,
                image,
                device,
                dtype,
                resized=images.resizes,
            ).reshape(1, -1)
        if store is not None and config is not None and key is not None:
            _cache.store_vectors(
                store, config, [_FROZEN], key, [features[0].cpu().numpy()]
            )
        return features.shape[1]

    def _frozen_features(self, images, width, config) -> np.ndarray:
        """The frozen part's rows of every image: from the cache where it
        holds them, computed (and stored) for the others (``config``: the
        cache configuration, None for none)."""
        store = _cache.resolve(self.cache)
        if config is None or store is None:
            return self._embed(images, width)
        return _cache.cached_rows(
            store,
            config,
            images,
            [_FROZEN],
            [width],
            {_FROZEN: width},
            lambda indices: self._embed(images, width, indices),
        )

    @staticmethod
    def _augmentation(prep, generator):
        size = prep.crop_size or prep.resize_size
        if size is None:
            raise ValueError(
                "augment=True needs a fixed input size: set "
                "preprocessing={'crop_size': ...}."
            )
        return _training.Augmentation(size, generator)

    # -- prediction ---------------------------------------------------------
    def _outputs(self, images, indices=None) -> np.ndarray:
        """The network's outputs (logits, standardised values)."""
        net = self._network()
        if indices is None:  # (a prediction, not a validation pass in fit)
            self._check_numerics()
            config = self._frozen_config(self.device_, self.precision_)
            if config is not None:  # the frozen features, through the cache
                head = self.network_.head
                features = self._frozen_features(images, head_width(head), config)
                with torch.inference_mode():
                    x = torch.from_numpy(features).to(self.device_)
                    return head(x).float().cpu().numpy()
        out, _ = _engine.extract(
            lambda x: [net(x)],
            self.preprocessing_,
            images,
            n_features=self._n_outputs(),
            batch_size=self.batch_size,
            device=self.device_,
            dtype=self._dtype(),
            indices=indices,
            verbose=False,
        )
        return out

    # -- reuse as a backbone ------------------------------------------------
    def _sktransfer_backbone(self) -> Backbone:
        """A copy of the trained backbone (the kept part), for
        PretrainedFeatureExtractor."""
        name = type(self).__name__
        check_is_fitted(
            self,
            msg=(
                f"This {name} is not fitted yet: fit it on the source "
                "task before using it as the 'model' of an extractor."
            ),
        )
        self._network()
        backbone = self.network_.backbone
        module = copy.deepcopy(backbone).cpu().eval()
        module.requires_grad_(False)
        family = family_of(self.model if isinstance(self.model, str) else None, module)
        description = f"{name}(model={self._model_label()})"
        return Backbone(
            module, self.preprocessing_, description, family, self._head_name
        )

    # -- persistence --------------------------------------------------------
    def _rebuild_network(self) -> ClassifierNetwork:
        state = self._pickled_network_state()
        if state is None:
            raise ValueError(
                f"This {type(self).__name__}'s pickle holds no network tensors: "
                "it was not written by sktransfer. Fit it again."
            )
        backbone = load_backbone(self.model, None)
        if backbone.head is None and self._head_name is not None:
            replace_head(backbone.module, self._head_name)
        module = backbone.module
        if self.layer is not None:
            module = _layers.CutNet(
                module, self.layer, self.pooling, backbone.family.nhwc
            )
        # (the first linear layer's input; a state dict read back from a
        # file need not keep the module order)
        weights = [k for k, v in state.items() if k.startswith("head.") and v.ndim == 2]
        width = state[min(weights, key=_layer_index)].shape[1]
        head = new_layers(  # (initialised, then loaded)
            width,
            self._hidden_layer_sizes(),
            self._n_outputs(),
            self.activation,
            self.dropout,
            torch.Generator(),
        )
        net = ClassifierNetwork(module, head)
        net.load_state_dict(state)
        net.requires_grad_(False)
        return _device.prepare_network(net.to(self.device_).eval())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class FineTunedClassifier(ClassifierMixin, ClassifierTargets, _FineTuned):
    """Fine-tune a pretrained network on your classes: keep N layers, add new
    ones, train them.

    The network is kept up to ``layer`` (all of it but its classification
    head, its final ``nn.Linear``, by default), its output pooled as in
    :class:`PretrainedFeatureExtractor`; new layers follow
    (``hidden_layer_sizes``, then one output per class); the new layers and
    the last ``trainable_layers`` kept stages are trained with AdamW on a
    cross-entropy loss, the rest stays frozen. Images are preprocessed as the
    weights expect, as in :class:`PretrainedFeatureExtractor`, and inputs
    take the same forms (arrays, tensors, paths, PIL images...).

    A fitted classifier can be the ``model`` of a
    :class:`PretrainedFeatureExtractor`: its trained backbone, frozen, cut at
    any layer ("develop a source model, then reuse it").

    Read more in the user guide, ``docs/transfer_learning.md``.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet50"
        A torchvision classification model name (see
        :func:`sktransfer.list_models`), a timm model
        (``"timm/<architecture>[.<tag>]"``, ``"hf-hub:<org>/<repo>"``; needs
        ``sktransfer[timm]``; see ``docs/backbones.md``), or a module of
        your own whose final ``nn.Linear`` is its head. Copied, never
        modified.

    weights : str, path-like, WeightsEnum or None, default="DEFAULT"
        The initial weights, as in :class:`PretrainedFeatureExtractor`
        (``None``: random initialisation, i.e. training from scratch, usually
        with ``trainable_layers="all"``).

    layer : str or None, default=None
        Where to cut the network: the kept layers are those up to and
        including this cut point, any name that
        :class:`PretrainedFeatureExtractor` accepts (a node of the traced
        graph or a module, ``"layer3"``; see :func:`sktransfer.list_layers`).
        None keeps the whole network but its head.

    pooling : {"avg", "max", "avgmax", "cls", "clsavg", "flatten"} or None, \
            default="avg"
        How the cut layer's output becomes a vector, as in
        :class:`PretrainedFeatureExtractor`. Ignored with ``layer=None``.

    hidden_layer_sizes : tuple of int, default=()
        The new hidden layers, as in
        :class:`~sklearn.neural_network.MLPClassifier`: the i-th element is
        the width of the i-th hidden layer. ``()``: a linear head.

    activation : {"relu", "gelu", "tanh", "logistic", "identity"}, \
            default="relu"
        The activation of the new hidden layers.

    dropout : float, default=0.0
        Dropout rate on the input of each new linear layer (the kept
        network's features, then each hidden layer), while training.

    trainable_layers : int or "all", default=0
        How much of the kept network is trained: 0 trains the new layers
        only (a linear probe, fitted by gradient descent, with no hidden
        layer); N also trains the last N kept stages, counted backwards
        from the cut (ResNet: ``layer4``, then ``layer3``...; MobileNet,
        EfficientNet, ConvNeXt: the last blocks of ``features``; ViT: the last
        encoder blocks, the final norm with the last one; timm models: the
        stages of their ``feature_info``, what follows the last one, such
        as a final norm, with it); ``"all"`` trains
        every parameter, the pretrained weights being the initialisation.
        With 0 and ``augment=False``, the frozen backbone runs once over the
        images (in eval mode, so without dropout) and the head trains on its
        outputs: further epochs cost almost nothing.
        The stages of each family are defined in one place
        (``sktransfer._families``); for a module of your own they are its
        top-level children with parameters.

    learning_rate : float, default=1e-3
        Learning rate of the new layers.

    backbone_lr_scale : float, default=0.1
        The backbone's learning rate is ``learning_rate * backbone_lr_scale``:
        pretrained weights need smaller steps than a new head.

    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay.

    max_epochs : int, default=10
        Number of passes over the training data (fewer with early stopping).

    batch_size : int, default=32
        Images per optimisation step (and per forward pass in ``predict``).

    early_stopping : bool, default=False
        Set aside ``validation_fraction`` of the training data (stratified)
        and stop when its accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the weights of the best epoch are kept.
        As in :class:`~sklearn.neural_network.MLPClassifier`.

    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.

    n_iter_no_change : int, default=3
        Epochs without improvement before early stopping.

    tol : float, default=1e-4
        Smallest improvement of the validation accuracy that counts.

    freeze_batchnorm : bool, default=False
        Batch-norm statistics (running mean and variance) of frozen stages
        are always kept as pretrained. With True, those of trainable stages
        are kept too (their scale and shift still train): better for very
        small batches.

    augment : bool, default=False
        Light augmentation of training images: a random resized crop (70-100%
        of the area, aspect 3/4 to 4/3) back to the input size and a random
        horizontal flip. Leave it off for images where mirroring changes the
        class (digits, text).

    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        Where the frozen features are kept for reuse, as in
        :class:`PretrainedFeatureExtractor`: ``"memory"`` is the process-wide
        cache shared by every clone, a directory path adds a persistent
        layer with checksummed entries, None turns caching off. Used only
        where nothing before the new layers trains (``trainable_layers=0``,
        ``augment=False``): the kept network's outputs are then keyed by
        content (the image, the whole network's code, settings and tensors,
        ``layer``, ``pooling``, the preprocessing and the numerics), so a
        grid search over ``layer`` x ``hidden_layer_sizes`` x
        ``learning_rate`` runs each image through the network once per cut
        point, ``predict`` included (its new layers then run in float32 on
        the cached features, as in training).

    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, as in sklearn's linear models.

    preprocessing : "auto", str, dict or Preprocessing, default="auto"
        As in :class:`PretrainedFeatureExtractor`.

    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Mixed-precision training (autocast; weights and optimiser state stay
        float32). ``"auto"``: float32 on CPUs and MPS; on CUDA, bfloat16
        where the GPU supports it (Ampere and later), else float16, with a
        gradient scaler.
        ``"bfloat16"`` is opt-in on CPUs with AVX512-BF16, AMX or ARM's
        BF16; on other CPUs (AVX2 only), where bf16 is several times slower,
        it warns (``PrecisionFallbackWarning``) and trains in float32, as
        ``precision_`` says.

    num_workers : int or None, default=None
        Threads reading images given one by one, as in the extractor.

    max_pixels : int or None, default=89_478_485
        Larger image files are refused before decoding, as in the extractor.

    reduced_decoding : bool, default=True
        Big JPEG files are decoded directly at a reduced size (never below
        the resize target), as in the extractor; False decodes every file in
        full.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the new layers' initialisation, the
        shuffling and the augmentation (generators owned by the fit), the
        initial weights with ``weights=None``, and dropout in the new layers
        and in trained stages (torch's global generator, forked for the fit
        and restored after it). Fitting never changes numpy's or torch's
        global random state; an int gives the same model on the same machine
        (CPU), whatever ran before. None: fresh randomness at each fit.

    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, then MPS, else the CPU.

    verbose : bool, default=True
        Show a progress bar for each epoch (loss, validation accuracy).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.

    network_ : torch.nn.Module
        The trained network (``backbone``, the kept part, then ``head``, the
        new layers), in eval mode.

    preprocessing_ : Preprocessing
        The preprocessing applied to every batch.

    n_trainable_layers_ : int
        Number of backbone stages trained.

    cache_key_ : str or None
        Digest of the kept network and the preprocessing: with the numerics,
        the part of every cache key of the frozen features that is not the
        image. None where they are not cached.

    n_trainable_params_ : int
        Number of trained parameters (head included).

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
        What produced the model's outputs at fit (dtype, and for reduced
        precisions the device and kernels); predicting in reduced precision
        where they differ warns that outputs may shift.

    See Also
    --------
    PretrainedFeatureExtractor : Frozen features for any sklearn estimator.
    FineTunedRegressor : The same recipe for continuous targets.

    Notes
    -----
    Training runs in ``train`` mode except for batch-norm layers whose
    statistics are frozen (see ``freeze_batchnorm``); prediction runs in
    eval mode under ``torch.inference_mode``. Pickles hold the trained
    weights as CPU tensors; a classifier trained on CUDA loads on a CPU-only
    machine with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTunedClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (8, 32, 32, 3), np.uint8)
    >>> y = [0, 1] * 4
    >>> clf = FineTunedClassifier(model="resnet18", weights=None, max_epochs=2,
    ...     preprocessing={"resize_size": 32, "crop_size": 32}, verbose=False,
    ...     random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    _target_word = "labels"
    _dask_methods = "predict and predict_proba"

    _parameter_constraints: dict = {
        **_FineTuned._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        *,
        model="resnet50",
        weights="DEFAULT",
        layer=None,
        pooling="avg",
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
        freeze_batchnorm=False,
        augment=False,
        class_weight=None,
        cache="memory",
        preprocessing="auto",
        precision="auto",
        num_workers=None,
        max_pixels=_decode.DEFAULT_MAX_PIXELS,
        reduced_decoding=True,
        random_state=None,
        device="auto",
        verbose=True,
    ):
        super().__init__(
            model=model,
            weights=weights,
            layer=layer,
            pooling=pooling,
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            dropout=dropout,
            trainable_layers=trainable_layers,
            learning_rate=learning_rate,
            backbone_lr_scale=backbone_lr_scale,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            freeze_batchnorm=freeze_batchnorm,
            augment=augment,
            cache=cache,
            preprocessing=preprocessing,
            precision=precision,
            num_workers=num_workers,
            max_pixels=max_pixels,
            reduced_decoding=reduced_decoding,
            random_state=random_state,
            device=device,
            verbose=verbose,
        )
        self.class_weight = class_weight

    # -- fitting ------------------------------------------------------------
    def fit(self, X, y):  # (the base's, documented here)
        """Train the new layers and the trainable stages on ``X``, ``y``.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths, as for :class:`PretrainedFeatureExtractor`.
        y : array-like of shape (n_images,)
            Class labels (any type sklearn accepts for classification).

        Returns
        -------
        self : FineTunedClassifier
            The fitted classifier.
        """
        return super().fit(X, y)

    # -- prediction ---------------------------------------------------------
    def predict_proba(self, X):
        """Class probabilities of each image.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths, or a Dask collection of them (as in
            :meth:`PretrainedFeatureExtractor.transform`).

        Returns
        -------
        proba : ndarray of shape (n_images, n_classes)
            Probabilities, columns in the order of ``classes_``; a lazy
            ``dask.array.Array`` for a Dask collection.
        """
        return self._apply(X, "predict_proba", self._proba)

    def predict(self, X):
        """The most probable class of each image.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths, or a Dask collection of them (as in
            :meth:`PretrainedFeatureExtractor.transform`).

        Returns
        -------
        y_pred : ndarray of shape (n_images,)
            Predicted labels, of the type of ``classes_``; a lazy
            ``dask.array.Array`` for a Dask collection.
        """
        return self._apply(X, "predict", self._predict)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        return tags


class FineTunedRegressor(RegressorMixin, _FineTuned):
    """Fine-tune a pretrained network to predict numbers: keep N layers, add
    new ones, train them.

    The regressor of :class:`FineTunedClassifier`'s recipe, for continuous
    targets (an age, a price, a count, a score; one or several columns):
    the network kept up to ``layer``, new layers (``hidden_layer_sizes``,
    then one output per target column), trained with AdamW on a squared
    error (or Huber) loss, with the same training loop (micro-batches out of
    memory, early stopping on the validation R^2, owned generators). The
    targets are standardised for training (each column to mean 0 and
    variance 1, from the training data) and restored in ``predict``;
    ``score`` is the coefficient of determination R^2.

    A fitted regressor can be the ``model`` of a
    :class:`PretrainedFeatureExtractor`, as a fitted classifier can.

    Read more in the user guide, ``docs/transfer_learning.md``.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet50"
        As in :class:`FineTunedClassifier`: a torchvision or timm model
        name, or a module of your own.

    weights : str, path-like, WeightsEnum or None, default="DEFAULT"
        The initial weights, as in :class:`FineTunedClassifier`.

    layer : str or None, default=None
        Where to cut the network (see :class:`FineTunedClassifier`).

    pooling : {"avg", "max", "avgmax", "cls", "clsavg", "flatten"} or None, \
            default="avg"
        How the cut layer's output becomes a vector.

    hidden_layer_sizes : tuple of int, default=()
        The new hidden layers, as in
        :class:`~sklearn.neural_network.MLPRegressor`.

    activation : {"relu", "gelu", "tanh", "logistic", "identity"}, \
            default="relu"
        The activation of the new hidden layers.

    dropout : float, default=0.0
        Dropout rate on the input of each new linear layer, while training.

    trainable_layers : int or "all", default=0
        How many of the last kept stages train with the new layers.

    learning_rate : float, default=1e-3
        Learning rate of the new layers.

    backbone_lr_scale : float, default=0.1
        The kept stages' learning rate is ``learning_rate *
        backbone_lr_scale``.

    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay.

    max_epochs : int, default=10
        Number of passes over the training data.

    batch_size : int, default=32
        Images per optimisation step (and per forward pass in ``predict``).

    early_stopping : bool, default=False
        Set aside ``validation_fraction`` of the training data and stop when
        its R^2 has not improved by ``tol`` for ``n_iter_no_change`` epochs;
        the weights of the best epoch are kept.

    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.

    n_iter_no_change : int, default=3
        Epochs without improvement before early stopping.

    tol : float, default=1e-4
        Smallest improvement of the validation R^2 that counts.

    freeze_batchnorm : bool, default=False
        As in :class:`FineTunedClassifier`.

    augment : bool, default=False
        As in :class:`FineTunedClassifier`: only where a crop and a mirror
        image keep the target.

    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        As in :class:`FineTunedClassifier`: where the frozen features are
        kept, with ``trainable_layers=0`` and ``augment=False``.

    loss : {"squared_error", "huber"}, default="squared_error"
        The loss on the standardised targets: the squared error, or Huber's
        (quadratic within one standard deviation of the target, linear
        beyond: less swayed by outliers).

    preprocessing : "auto", str, dict or Preprocessing, default="auto"
        As in :class:`PretrainedFeatureExtractor`.

    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        As in :class:`FineTunedClassifier`.

    num_workers : int or None, default=None
        Threads reading images given one by one, as in the extractor.

    max_pixels : int or None, default=89_478_485
        Larger image files are refused before decoding, as in the extractor.

    reduced_decoding : bool, default=True
        As in the extractor.

    random_state : int, RandomState instance or None, default=None
        Seeds everything random in ``fit``, as in
        :class:`FineTunedClassifier`.

    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, then MPS, else the CPU.

    verbose : bool, default=True
        Show a progress bar for each epoch (loss, validation R^2).

    Attributes
    ----------
    n_outputs_ : int
        Number of target columns.

    target_mean_ : ndarray of shape (n_outputs,)
        Mean of each target column on the training data.

    target_scale_ : ndarray of shape (n_outputs,)
        Standard deviation of each target column on the training data (1
        for a constant column).

    network_ : torch.nn.Module
        The trained network (``backbone`` then ``head``), in eval mode; its
        outputs are standardised targets.

    preprocessing_ : Preprocessing
        The preprocessing applied to every batch.

    n_trainable_layers_ : int
        Number of kept stages trained.

    cache_key_ : str or None
        As in :class:`FineTunedClassifier`.

    n_trainable_params_ : int
        Number of trained parameters (new layers included).

    n_iter_ : int
        Number of epochs run.

    loss_curve_ : list of float
        Mean training loss of each epoch (on standardised targets).

    validation_scores_ : list of float or None
        Validation R^2 after each epoch (early stopping only).

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
    FineTunedClassifier : The same recipe for classes.
    PretrainedFeatureExtractor : Frozen features for any sklearn regressor.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTunedRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (8, 32, 32, 3), np.uint8)
    >>> y = X.mean(axis=(1, 2, 3)) / 255
    >>> reg = FineTunedRegressor(model="resnet18", weights=None, max_epochs=2,
    ...     hidden_layer_sizes=(16,), verbose=False, random_state=0,
    ...     preprocessing={"resize_size": 32, "crop_size": 32}).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
    """

    _target_word = "targets"
    _dask_methods = "predict"

    _parameter_constraints: dict = {
        **_FineTuned._parameter_constraints,
        "loss": [StrOptions({"squared_error", "huber"})],
    }

    def __init__(
        self,
        *,
        model="resnet50",
        weights="DEFAULT",
        layer=None,
        pooling="avg",
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
        freeze_batchnorm=False,
        augment=False,
        loss="squared_error",
        cache="memory",
        preprocessing="auto",
        precision="auto",
        num_workers=None,
        max_pixels=_decode.DEFAULT_MAX_PIXELS,
        reduced_decoding=True,
        random_state=None,
        device="auto",
        verbose=True,
    ):
        super().__init__(
            model=model,
            weights=weights,
            layer=layer,
            pooling=pooling,
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            dropout=dropout,
            trainable_layers=trainable_layers,
            learning_rate=learning_rate,
            backbone_lr_scale=backbone_lr_scale,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            freeze_batchnorm=freeze_batchnorm,
            augment=augment,
            cache=cache,
            preprocessing=preprocessing,
            precision=precision,
            num_workers=num_workers,
            max_pixels=max_pixels,
            reduced_decoding=reduced_decoding,
            random_state=random_state,
            device=device,
            verbose=verbose,
        )
        self.loss = loss

    # -- fitting ------------------------------------------------------------
    def fit(self, X, y):  # (the base's, documented here)
        """Train the new layers and the trainable stages on ``X``, ``y``.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths, as for :class:`PretrainedFeatureExtractor`.
        y : array-like of shape (n_images,) or (n_images, n_outputs)
            Target values.

        Returns
        -------
        self : FineTunedRegressor
            The fitted regressor.
        """
        return super().fit(X, y)

    def _encode_targets(self, y):
        if np.ndim(y) > 2:
            raise ValueError(
                f"y must have dim <= 2 (one target per image, or a column per "
                f"output); got an array of shape {np.shape(y)}. Reshape it to "
                "(n_images, n_outputs)."
            )
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        self._y_ndim = y.ndim
        y2 = y.reshape(len(y), -1)
        scale = y2.std(axis=0)
        self.n_outputs_ = y2.shape[1]
        self.target_mean_ = y2.mean(axis=0)
        self.target_scale_ = np.where(scale > 0, scale, 1.0)
        standard = (y2 - self.target_mean_) / self.target_scale_
        return standard.astype(np.float32), None

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _loss(self, targets, train):
        if self.loss == "huber":
            return nn.HuberLoss(reduction="sum", delta=1.0), None
        return nn.MSELoss(reduction="sum"), None

    def _validation_score(self, outputs, targets) -> float:
        return float(r2_score(targets, outputs))

    # -- prediction ---------------------------------------------------------
    def predict(self, X):
        """The predicted value(s) of each image.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths, or a Dask collection of them (as in
            :meth:`PretrainedFeatureExtractor.transform`).

        Returns
        -------
        y_pred : ndarray of shape (n_images,) or (n_images, n_outputs)
            Predictions, of ``y``'s shape at fit, float64; a lazy
            ``dask.array.Array`` for a Dask collection.
        """
        return self._apply(X, "predict", self._predict)

    def _dask_output(self, method):
        return (None if self._y_ndim == 1 else self.n_outputs_), np.dtype(np.float64)

    def _predict(self, images) -> np.ndarray:
        out = self._outputs(images).astype(np.float64)
        out = out * self.target_scale_ + self.target_mean_
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = True
        return tags
