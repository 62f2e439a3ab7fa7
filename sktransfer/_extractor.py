"""PretrainedFeatureExtractor: a frozen pretrained backbone as a transformer."""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Integral

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer import _cache, _dask, _device, _engine, _network
from sktransfer._base import (
    IMAGE_CONSTRAINTS,
    ImageEstimator,
    compute_precision,
    precision_numerics,
)
from sktransfer._cache import EmbeddingCache
from sktransfer._common import report_errors
from sktransfer._identity import digest, module_digest
from sktransfer._images import decode as _decode
from sktransfer._runtime import int8 as _int8
from sktransfer._runtime import layers as _layers
from sktransfer._sources import published_weights_file
from sktransfer.exceptions import (
    ImageReadError,
    TamperedModelError,
    UnreadableImagesWarning,
)

__all__ = ["PretrainedFeatureExtractor"]


class PretrainedFeatureExtractor(TransformerMixin, ImageEstimator):
    """Embed images with a frozen pretrained network, cut at any layer.

    Images go through the backbone's own preprocessing (resize, centre crop,
    normalisation, applied to whole batches on the device), then through the
    network up to ``layer``, whose output is pooled to one vector per image.
    ``fit`` loads the network and checks the parameters, so the extractor can
    sit first in a :class:`~sklearn.pipeline.Pipeline`; it learns nothing,
    except with ``precision="int8"``, where it calibrates the quantized
    network on the images it is given.

    Read more in the user guide, ``docs/transfer_learning.md``.

    Parameters
    ----------
    model : str, torch.nn.Module or FineTunedClassifier, default="resnet50"
        A torchvision classification model name (see
        :func:`sktransfer.list_models`); a timm model,
        ``"timm/<architecture>[.<tag>]"`` such as
        ``"timm/vit_small_patch14_dinov2.lvd142m"`` (see
        ``list_models("timm/<glob>")``), or ``"hf-hub:<org>/<repo>"`` for a
        timm model on the Hugging Face hub (these need
        ``pip install -e '.[timm]'``; see ``docs/backbones.md``); a
        module of your own (copied, never
        modified); or a fitted :class:`FineTunedClassifier`, whose trained
        backbone is then used frozen, with its preprocessing ("develop a
        source model, then reuse it"). Clones share the module or classifier
        rather than copy it: it is only read.

    weights : str, path-like, WeightsEnum or None, default="DEFAULT"
        ``"DEFAULT"``: the best published weights of the model (downloaded to
        the torch hub cache on first use); a weights name such as
        ``"IMAGENET1K_V1"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``; a path to
        a local ``state_dict`` checkpoint (loaded with ``weights_only=True``);
        or ``None`` for random initialisation. For a timm model,
        ``"DEFAULT"`` is the weights its tag names (timm's default tag if it
        names none), through the Hugging Face hub cache; a tag such as
        ``"fb_in22k"`` names other weights of the architecture; a path may
        also be a ``.safetensors`` file. For a module of your own,
        ``"DEFAULT"`` keeps its weights. Never silently replaced: if weights
        cannot be had, ``fit`` raises
        :class:`~sktransfer.exceptions.WeightsUnavailableError`.

    layer : str, list of str or None, default=None
        Where to cut the network. ``None`` is the model's standard embedding:
        for a torchvision model, the pooled features its classification head
        (the final ``nn.Linear``) reads; for a module of your own, its output
        (it is never altered). A string names a
        node of the traced graph or a module (``"layer3"``, ``"features.6"``,
        ``"encoder.layers.encoder_layer_6"``); see
        :func:`sktransfer.list_layers`. A list concatenates the pooled outputs
        of several layers (``None`` may be one of them).

    pooling : {"avg", "max", "avgmax", "cls", "clsavg", "flatten"} or None, \
            default="avg"
        How a layer's output becomes a vector: average or maximum over the
        spatial positions of a feature map (or over the patch tokens of a
        transformer block, its class and register tokens left out), both
        concatenated (``"avgmax"``), the class token of a transformer block
        (``"cls"``), the class token and the average of the patch tokens
        concatenated (``"clsavg"``, the features of the DINOv2 linear
        probe), or no pooling (``"flatten"`` or ``None``). Outputs that are
        already vectors are used as they are.

    preprocessing : "auto", str, dict or Preprocessing, default="auto"
        ``"auto"``: the preprocessing published with the weights (for
        ``weights=None`` or a checkpoint, that of the model's default
        weights; for a timm model, that of its tag's ``pretrained_cfg``; for
        a module of your own, torchvision's ImageNet defaults).
        A weights name (``"IMAGENET1K_V1"``) takes that entry's preprocessing.
        A dict overrides some fields of the automatic choice, e.g.
        ``{"resize_size": 128, "crop_size": 112}``; keys are those of
        :class:`sktransfer.Preprocessing`.

    batch_size : int, default=64
        Number of images per forward pass.

    num_workers : int or None, default=None
        Threads that read, decode and resize images given one by one (paths,
        PIL images, arrays of different sizes) while the network runs. 0 does
        it in the calling thread; None uses one thread per CPU, at most 8.
        Arrays of equal-sized images need no workers: they are resized batch
        by batch on the device.

    max_pixels : int or None, default=89_478_485
        Image files and PIL images with more pixels than this are refused
        before they are decoded (decompression bombs); the default is
        Pillow's own limit. None removes sktransfer's check (Pillow's own
        ``Image.MAX_IMAGE_PIXELS`` then still applies).

    reduced_decoding : bool, default=True
        JPEG files that the resize will shrink by 2x or more are decoded
        directly at 1/2, 1/4 or 1/8 of their size (libjpeg's DCT-domain
        scaling, Pillow's ``Image.draft``), never below the resize target:
        a 12-megapixel photo then decodes several times faster, and its row
        moves by far less than bfloat16 moves it. ``max_pixels`` still
        applies to the full size. False decodes every file in full (for
        bit-for-bit comparisons with a full decode). CPU only: on CUDA,
        JPEGs are decoded in full by nvJPEG. Rows of both kinds are cached
        under different keys.

    on_error : {"raise", "nan"}, default="raise"
        What an image that cannot be read (missing file, not an image,
        truncated, too large...) does: ``"raise"`` raises
        :class:`~sktransfer.exceptions.ImageReadError` naming its row and
        path; ``"nan"`` gives it a row of NaN, warns, and records it in
        ``errors_``, so that a long unattended job keeps going and every
        other row stays in place. Bad arguments (a wrong element type, an
        array of the wrong shape) always raise.

    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        Where pooled vectors are kept for reuse, keyed by content: the bytes
        or pixels of the image, what the network computes (code, settings,
        weights), the preprocessing, the pooling, the numerics (dtype, and
        for reduced precisions the device and kernels) and the layer.
        ``"memory"`` is the process-wide LRU (1 GiB, see
        :func:`sktransfer.default_cache`), shared by every clone, so a grid
        search or cross-validation embeds each image once; a directory path
        (``~`` expanded; path-like accepted) adds a persistent on-disk layer
        shared across processes (``GridSearchCV(n_jobs>1)``) and sessions,
        whose entries are checksummed: a damaged one is recomputed; an
        :class:`~sktransfer.EmbeddingCache` sets your own bound; ``None``
        turns caching off. Any other bare word (``"None"``, ``"Memory"``) is
        refused as a likely typo. See ``docs/reliability.md``.

    cache_layers : list, "stages" or None, default=None
        Further cut points to compute in the same forward pass and store in
        the cache, so that a later request for one of them (another candidate
        of a grid search over ``layer``) costs no pass through the network.
        ``"stages"``: every stage boundary of the model plus ``None``. Set it
        to the ``layer`` values of your grid: the whole search then runs each
        image through the network once. Ignored when ``cache=None``.

    precision : {"auto", "float32", "bfloat16", "float16", "int8"}, \
            default="auto"
        Compute precision of the network (autocast; inputs, pooling and
        outputs stay float32). ``"auto"``: float32 on CPUs and MPS, whose
        rows agree across machines; bfloat16 on CUDA GPUs that support it
        (else float16). ``"bfloat16"`` is the CPU's opt-in speed mode (on
        CPUs with AVX512-BF16 or AMX, or ARM's BF16; on others, where bf16
        is several times slower than float32, it warns with a
        ``PrecisionFallbackWarning`` and runs float32, as ``precision_``
        says): it moves rows by a few percent of
        their norm, differently on different CPUs, and did not change
        downstream accuracy in our measurements (see ``docs/speed.md``).
        float32 on CUDA runs without TF32. ``"int8"`` (CPU only; needs
        ``pip install -e '.[int8]'``): static post-training
        quantization through ONNX Runtime, calibrated in ``fit`` on the
        images it is given (see ``calibration_size``); about 1.8x the speed
        of bfloat16 for ResNet-50 on CPUs with AVX512-VNNI or AMX. Rows move
        by about 2-13% of their norm depending on the model (depthwise
        convolutions, as in MobileNets, the most). Where the CPU has no int8
        dot-product instructions, the network cannot be exported, or the
        calibration images cannot set the ranges (all of one flat colour, or
        spanning a sliver of the pixel scale: dark or blank images), ``fit``
        warns and the network runs in bfloat16 (float32 where the CPU has no
        bf16 kernels either); ``precision_`` says what runs. Where int8 runs
        the network slower than that (EfficientNets), ``fit`` warns.

    calibration_size : int, default=256
        With ``precision="int8"``: how many of the images given to ``fit``
        calibrate the quantization (the range of every activation): all of
        them up to this number, else a sample drawn with ``random_state``
        (``None``: evenly spaced rows, so that fits on the same images
        agree). Ignored otherwise.

    compile : bool, default=False
        Compile the network with ``torch.compile`` on first use, for long
        jobs on a GPU, after a compilation of seconds to minutes. On the CPU
        the default engine already fuses what compilation would
        (convolutions with their activations and residual adds); see
        ``docs/speed.md``.

    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation of ``weights=None`` (through a
        private generator: torch's global RNG is untouched). Pass an int so
        that clones, e.g. the candidates of a grid search, share one network
        and its cache entries.

    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, then MPS, else the CPU.

    verbose : bool, default=True
        Show a progress bar during ``transform``.

    Attributes
    ----------
    weights_ : str or None
        The weights actually loaded, e.g. ``"ResNet50_Weights.IMAGENET1K_V2"``
        or ``"timm/convnext_tiny.fb_in22k"``, a checkpoint path, or ``None``
        (random).

    layers_ : list of str or None
        The cut points, in output order.

    preprocessing_ : Preprocessing
        The preprocessing applied to every batch.

    device_ : torch.device
        The device the network runs on.

    network_ : torch.nn.Module
        The truncated network, in eval mode. Not pickled: rebuilt on first use
        after unpickling.

    n_features_per_layer_ : list of int
        Output width of each layer in ``layers_``.

    n_features_out_ : int
        Number of output features (their sum).

    precision_ : str
        The compute precision used, e.g. ``"float32"``; ``"int8"`` for a
        quantized network.

    quantization_ : dict or None
        With ``precision_ == "int8"``, the quantized network: ``"model"``,
        the ONNX model (bytes, int8 QDQ format) that ``transform`` runs with
        ONNX Runtime; ``"digest"``, its digest (part of ``cache_key_``);
        ``"calibration_images"``, how many images calibrated it;
        ``"float_ops"``, the convolutions and matrix products left in
        float32; and what pools its outputs (``"keys"``, ``"nhwc"``,
        ``"prefix"``). Pickles and shared files carry it, so a loaded
        extractor gives the same rows without calibrating again. None
        otherwise.

    numerics_ : str
        What produced the rows at fit, as far as it changes their digits:
        ``"float32"`` on any CPU; for reduced precisions also the device,
        kernel family and torch version, e.g.
        ``"bfloat16-cpu-avx512bf16-torch2.14.1"``. Transforming in reduced
        precision where the numerics differ warns that rows may shift.

    computed_layers_ : list of str or None
        Every layer the network computes, in its output order: ``layers_``
        and the ``cache_layers`` tapped alongside them for the cache.

    computed_widths_ : list of int
        Output width of each layer in ``computed_layers_``.

    taps_ : list of str or None
        The layers of ``computed_layers_`` that are only stored in the cache.

    cache_key_ : str
        Digest of what the network computes (code, settings, weights), the
        preprocessing and the pooling: with the numerics of the machine that
        runs it, the part of every cache key that is not the image or the
        layer.

    errors_ : list of ImageReadError
        The images of the last ``transform`` that could not be read, whose
        rows are NaN (``on_error="nan"``); each error has ``index`` (the row)
        and ``path``. Empty after ``fit``.

    See Also
    --------
    sktransfer.list_layers : The cut points of a model.
    sktransfer.list_models : The model names accepted by ``model``.

    Notes
    -----
    Input, one of:

    - a numpy array ``(n, H, W, 3)`` (channels last) or ``(n, H, W)``
      (grayscale), or a torch tensor ``(n, 3, H, W)`` (channels first) or
      ``(n, H, W)``; uint8 (0..255), uint16 (0..65535) or float in [0, 1];
    - a list, tuple, 1-D object array or pandas Series whose elements are
      paths (str or ``os.PathLike``), the bytes of image files, PIL images,
      or arrays/tensors of one image each, in any mix and of any sizes.

    Files are decoded by fixed rules (JPEG, PNG, WebP, BMP, TIFF and GIF
    only; EXIF orientation applied; transparency composited on white;
    16-bit images scaled, never clipped; first frame of animations): see the
    user guide, ``docs/images_and_files.md``.
    Output: a float32 array ``(n, n_features_out_)``, one row per image, in
    input order. Inference always runs in eval mode under
    ``torch.inference_mode``, so an image's row does not depend on the other
    images of its batch, up to float32 rounding: CPU kernels are chosen by
    batch size, so a row computed in a batch of 1 (``fit``'s probe image)
    and in a batch of 64 can differ by about 1e-6 of its values.

    Pickles of an extractor that uses published weights store their name, not
    the tensors; other weights (random, checkpoint, own module) are stored as
    CPU tensors. To share a fitted extractor (or a pipeline holding one)
    without pickle, use :func:`sktransfer.save` and :func:`sktransfer.load`.

    ``fit`` sets every fitted attribute; ``transform`` sets one, ``errors_``:
    it reports on the images of the call that just ran (their rows are NaN),
    so it must describe the last call, not the fit. Besides, ``transform``
    keeps private, result-neutral state: the network rebuilt after
    unpickling, and the compiled network with ``compile=True``. Out of
    memory, the smaller batch size is used for the rest of that call only.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> X = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8)
    >>> extractor = PretrainedFeatureExtractor(
    ...     model="resnet18", weights=None, layer="layer3", verbose=False,
    ...     preprocessing={"resize_size": 64, "crop_size": 64})
    >>> extractor.fit_transform(X).shape
    (4, 256)
    >>> extractor.get_feature_names_out()[:2]
    array(['layer3_0', 'layer3_1'], dtype=object)
    """

    _parameter_constraints: dict = {
        **IMAGE_CONSTRAINTS,
        "model": [str, nn.Module, HasMethods(["_sktransfer_backbone"])],
        "layer": [str, list, tuple, None],
        "pooling": [StrOptions(set(_layers.POOLINGS)), None],
        "on_error": [StrOptions({"raise", "nan"})],
        "cache": [str, os.PathLike, EmbeddingCache, None],
        "cache_layers": [StrOptions({"stages"}), list, tuple, None],
        "compile": ["boolean"],
        "precision": [StrOptions({"auto", "float32", "bfloat16", "float16", "int8"})],
        "calibration_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        model="resnet50",
        weights="DEFAULT",
        layer=None,
        pooling="avg",
        preprocessing="auto",
        batch_size=64,
        num_workers=None,
        max_pixels=_decode.DEFAULT_MAX_PIXELS,
        reduced_decoding=True,
        on_error="raise",
        cache="memory",
        cache_layers=None,
        precision="auto",
        calibration_size=256,
        compile=False,
        random_state=None,
        device="auto",
        verbose=True,
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.reduced_decoding = reduced_decoding
        self.on_error = on_error
        self.cache = cache
        self.cache_layers = cache_layers
        self.precision = precision
        self.calibration_size = calibration_size
        self.compile = compile
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _input_options(self) -> dict:
        return {**super()._input_options(), "on_error": self.on_error}

    def fit(self, X, y=None):  # (the base's, documented here)
        """Load the network, check the parameters and the images (and
        calibrate the quantization, for ``precision="int8"``).

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths (see Notes of the class). Only checked: nothing
            is learned, and one image is run through the network; except
            with ``precision="int8"``, which calibrates the quantization on
            (a sample of) them.
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedFeatureExtractor
            The fitted extractor.
        """
        return super().fit(X, y)

    def _fit(self, X, y):
        store = _cache.resolve(self.cache)  # (checks the parameter, before the data)
        int8 = self.precision == "int8"
        if _dask.is_dask(X):  # the images fit runs, computed
            X = _dask.first_images(X, self.calibration_size if int8 else 1)
        images = self._inputs(X)
        if int8:
            device, precision = _int8.resolve_device(self.device)
        else:
            device = _device.resolve_device(self.device)
            precision = _device.dtype_name(compute_precision(self.precision, device))
        int8 = precision == "int8"
        seed = None
        if self.weights is None and self.random_state is not None:
            seed = int(self._random_state().randint(2**31 - 1))
        built = _network.build(
            self.model,
            self.weights,
            seed,
            device,
            self.layer,
            self.cache_layers if store is not None else None,
            self.pooling,
            self._model_label(),
        )
        prep = self._preprocessing_for(built.backbone, images, device)
        pooling_key = self._pooling_key(built.backbone.module)
        cache_key = digest(built.identity, repr(prep), pooling_key)
        net, quantization = built.net, None
        if int8:
            quantization, net = self._quantize(built, prep, images, device)
            if quantization is None:  # could not be quantized (warned)
                precision = _int8.fallback_precision()
            else:
                cache_key = digest(cache_key, "int8", quantization["digest"])
        dtype = _device.PRECISIONS.get(precision, torch.float32)
        config = digest(cache_key, precision_numerics(device, precision))
        computed = built.computed

        def cached(row):  # the probe image's vectors, if all are cached
            if store is None:
                return None
            return _cache.vectors_of(
                store, config, computed, images.decoded_digest(row)
            )

        # (int8 widths are the float network's, whose rows are not int8's)
        widths, row, probe = _network.output_widths(
            built, prep, images, device, dtype, None if int8 else cached
        )
        self.weights_ = built.backbone.weights
        self.layers_ = built.layers
        self.computed_layers_ = computed
        self.computed_widths_ = widths
        self.taps_ = [name for name in computed if name not in built.layers]
        self.preprocessing_ = prep
        self.device_ = device
        self.precision_ = precision
        self.numerics_ = precision_numerics(device, precision)
        self.quantization_ = quantization
        self.errors_: list[ImageReadError] = []
        self.network_ = net
        self.n_features_per_layer_ = [widths[computed.index(n)] for n in built.layers]
        self.n_features_out_ = int(sum(self.n_features_per_layer_))
        self.cache_key_ = cache_key
        self._drop_pickled_state()  # (from an earlier unpickling)
        vars(self).pop("_key_unchecked", None)
        if store is not None and probe is not None and quantization is None:
            # The probe's work is kept (under the digest of the bytes it
            # decoded), unless it ran the float network of an int8 one.
            _cache.store_vectors(
                store, config, computed, images.decoded_digest(row), probe
            )
        return self

    def _pooling_key(self, module, prefix=None) -> str:
        """The pooling's part of the cache key. Token rows pool after their
        prefix tokens: a key of their own (rows cached before this rule
        pooled the class token too)."""
        pooling = str(self.pooling)
        if module is not None:
            prefix = _layers.prefix_tokens(module)
        if prefix:
            pooling += f"|after {prefix} prefix tokens"
        return pooling

    def _quantize(self, built, prep, images, device):
        """Calibrate and quantize the network on (a sample of) the images:
        ``(quantization_, network)``, or ``(None, float network)``."""
        rows = _int8.calibration_rows(
            len(images), self.calibration_size, self.random_state
        )
        inputs = [
            _engine.device_input(prep, batch, device, images.resizes)
            for _, batch in _engine.batches(images, prep, self.batch_size, device, rows)
        ]
        return _int8.calibrate(built.net, inputs, built.key, self.pooling, std=prep.std)

    def transform(self, X):
        r"""Embed each image as one row.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width[, channels]) or list
            Images or paths (see Notes of the class), or a Dask collection:
            a ``dask.array.Array`` of images chunked along the first axis,
            or a ``dask.dataframe`` Series or ``dask.bag`` of paths (needs
            ``sktransfer[dask]``; see ``docs/scale.md``).

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features_out\_), dtype float32
            One row per image, in input order; NaN for images that could not
            be read when ``on_error="nan"``. For a Dask collection, a lazy
            ``dask.array.Array``: one block of rows per input partition,
            with known chunk sizes, computed when you compute it (the
            rows of unreadable images are NaN there too, but ``errors_``
            is not set).
        """
        return self._apply(X, "transform", self._transform)

    def _dask_output(self, method):
        return self.n_features_out_, np.dtype(np.float32)

    def _transform(self, images) -> np.ndarray:
        self._check_numerics()
        store = _cache.resolve(self.cache)
        if store is not None:
            self._check_identity()
        if store is None:
            out = self._select(self._compute(images))
        else:
            config = digest(
                self.cache_key_, precision_numerics(self.device_, self.precision_)
            )
            out = _cache.cached_rows(
                store,
                config,
                images,
                self.layers_,
                self.n_features_per_layer_,
                dict(zip(self.computed_layers_, self.computed_widths_, strict=True)),
                lambda indices: self._compute(images, indices),
            )
        report_errors(
            self,
            images.errors,
            len(images),
            "images could not be read",
            UnreadableImagesWarning,
            show_first=True,
        )
        return out

    def _select(self, computed: np.ndarray) -> np.ndarray:
        """The requested layers' columns, in ``layers_`` order."""
        n = len(self.layers_)
        if self.computed_layers_[:n] == self.layers_:
            return computed[:, : self.n_features_out_]  # a prefix: no copy
        bounds = _cache.column_bounds(self.computed_layers_, self.computed_widths_)
        return np.hstack([computed[:, slice(*bounds[name])] for name in self.layers_])

    def _compute(self, images, indices=None) -> np.ndarray:
        """Run the network: the columns of ``computed_layers_``, in order."""
        out, _ = _engine.extract(
            self._runnable_network(),
            self.preprocessing_,
            images,
            n_features=sum(self.computed_widths_),
            batch_size=self.batch_size,
            device=self.device_,
            dtype=self._dtype(),
            indices=indices,
            verbose=self.verbose,
        )
        return out

    def _runnable_network(self) -> Callable:
        net = self._network()
        if not self.compile or self.precision_ == "int8":
            return net
        compiled = getattr(self, "_compiled", None)
        if compiled is None or compiled[0] is not net:
            compiled = (net, torch.compile(net))
            self._compiled = compiled
        return compiled[1]

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``<layer>_<index>``.

        ``<layer>`` is the layer name, or ``embedding`` for ``layer=None``.

        Parameters
        ----------
        input_features : None
            Ignored; images have no input feature names.

        Returns
        -------
        feature_names_out : ndarray of str objects
            The output feature names.
        """
        check_is_fitted(self)
        names = []
        for layer, width in zip(self.layers_, self.n_features_per_layer_, strict=True):
            label = "embedding" if layer is None else layer
            names.extend(f"{label}_{i}" for i in range(width))
        return np.asarray(names, dtype=object)

    # -- persistence --------------------------------------------------------
    def __setstate__(self, state):
        super().__setstate__(state)
        if "cache_key_" in vars(self):
            # Unpickled or loaded: cache_key_ is recomputed from what the state
            # holds before a cache serves or stores a row (_check_identity).
            self._key_unchecked = True
            quantization = vars(self).get("quantization_")
            if quantization is not None:  # (its digest also keys a memo)
                self.quantization_ = {
                    **quantization,
                    "digest": digest(quantization["model"]),
                }

    def _check_identity(self) -> None:
        """Recompute ``cache_key_`` of an unpickled or loaded extractor from
        what it holds: its network's tensors as loaded (or the quantized
        model's bytes), its preprocessing and pooling, and the widths its
        network really gives; never trust the key a file claims (a forged
        one would store rows under another model's key). Raises
        :class:`~sktransfer.exceptions.TamperedModelError` where the state
        contradicts itself."""
        if not vars(self).get("_key_unchecked"):
            return
        name = type(self).__name__
        quantization = self.quantization_
        if (self.precision_ == "int8") != (quantization is not None) or not set(
            self.layers_
        ) <= set(self.computed_layers_):
            raise TamperedModelError(
                f"This {name}'s state contradicts itself (precision_="
                f"{self.precision_!r} with{'out' if quantization is None else ''} "
                f"a quantized network, layers_={self.layers_!r}, computed_layers_="
                f"{self.computed_layers_!r}): the file was changed. Do not use it."
            )
        net = self._network()
        if quantization is None:
            module = net.backbone
            assert isinstance(module, nn.Module)  # (a FeatureNet's)
            pooling = self._pooling_key(module)
            key = digest(module_digest(module), repr(self.preprocessing_), pooling)
        else:  # (the float network is not in the state: the int8 model is)
            key = digest(
                "loaded int8",
                repr(self.preprocessing_),
                self._pooling_key(None, quantization["prefix"]),
                quantization["digest"],
                repr(quantization["keys"]),
                repr(bool(quantization["nhwc"])),
                repr(list(self.computed_layers_)),
            )
        prep = self.preprocessing_
        side = prep.crop_size or prep.resize_size or 224
        probe = torch.zeros((1, 3, side, side), dtype=torch.uint8)
        feats = _engine.run_batch(
            net, prep, probe, self.device_, self._dtype(), split=True
        )
        widths = [int(f.shape[1]) for f in feats]
        claimed = dict(zip(self.computed_layers_, self.computed_widths_, strict=True))
        per_layer = [claimed[layer] for layer in self.layers_]
        if widths != list(self.computed_widths_) or per_layer != list(
            self.n_features_per_layer_
        ):
            if self.pooling not in (None, "flatten") or per_layer != list(
                self.n_features_per_layer_
            ):
                raise TamperedModelError(
                    f"This {name}'s network gives outputs of widths {widths} for "
                    f"{self.computed_layers_}, but its state records "
                    f"{self.computed_widths_} (and {self.n_features_per_layer_} "
                    f"for {self.layers_}): the file was changed. Do not use it."
                )
            # Unpooled widths depend on the image size: the recorded split
            # becomes part of the key.
            key = digest(key, repr(list(self.computed_widths_)))
        self.cache_key_ = key
        del self._key_unchecked

    def _published_weights_file(self):
        return published_weights_file(self.model, getattr(self, "weights_", None))

    def _rebuild_network(self) -> nn.Module:
        if getattr(self, "quantization_", None) is not None:
            return _int8.fitted_network(
                self.quantization_, self.computed_layers_, self.pooling
            )
        if (
            self._pickled_network_state() is None
            and self._published_weights_file() is None
        ):
            raise TamperedModelError(
                f"This {type(self).__name__} holds no network tensors and names no "
                f"published weights (weights_={self.weights_!r}): sktransfer writes "
                "the tensors of every other network into its pickles and files, so "
                "this one was changed. A path it names is not read."
            )
        return _network.rebuild(
            self.model,
            self.weights_,
            self._pickled_network_state(),
            self.computed_layers_,
            self.pooling,
            self.device_,
        )

    def _tensors_to_pickle(self, net):
        if getattr(self, "quantization_", None) is not None:
            return None  # the quantized model is the state
        if self._published_weights_file() is not None:
            return None  # rebuilt from the published weights' name
        return net.backbone.state_dict()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = []
        return tags
