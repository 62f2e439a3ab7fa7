"""Which pretrained model, and which of its layers, for these images?

:func:`probe` answers by measurement: for each model, every image goes
through the network once, with all the cut points tapped in that one pass;
then a linear probe (``StandardScaler`` + ``LogisticRegression``) is scored
on each cut point by stratified cross-validation, on the same folds for
every row. ``sktransfer probe`` is this function from the shell.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing
from threadpoolctl import threadpool_limits

from sktransfer._common import progress, progress_label, require
from sktransfer._engine import counting_images
from sktransfer._extractor import PretrainedFeatureExtractor
from sktransfer._finetune import FineTunedClassifier, kept_stages
from sktransfer._sources import check_model, weights_at_hand
from sktransfer._sources.checkpoints import (
    ArchitectureMismatchError,
    checkpoint_for,
    weights_folders,
)
from sktransfer._sources.timm import HUB_PREFIX
from sktransfer._sources.torchvision import model_names
from sktransfer._version import __version__
from sktransfer.exceptions import (
    ProbeUsageError,
    ProbeWarning,
    UnreadableImagesWarning,
    WeightsUnavailableError,
    warn,
)

__all__ = ["DEFAULT_MODELS", "ProbeResult", "ProbeUsageError", "probe"]

#: Strong torchvision backbones for frozen features, from large to small.
DEFAULT_MODELS = ("convnext_tiny", "resnet50", "efficientnet_b0", "mobilenet_v2")
#: The linear probe's iteration limit (a probe that stops there is reported).
MAX_ITER = 1000
#: The most arithmetic all the linear probes of a probe may take: about half
#: an hour on one CPU core. Each iteration of a probe's fit costs about
#: ``4 * n_train * n_features * n_classes`` operations; past the budget the
#: iterations are bounded (and said so), below :data:`MIN_ITER` the dataset
#: is refused as beyond what a linear probe can rank here.
PROBE_BUDGET = 3e13
#: The fewest iterations that still rank cut points (below: refused).
MIN_ITER = 20
#: Class names that are the splits of a dataset, not its classes.
SPLIT_NAMES = frozenset(
    {"train", "training", "val", "valid", "validation", "test", "testing", "dev"}
)


def linear_probe(max_iter: int = MAX_ITER) -> Pipeline:
    """The classifier scored on every cut point: ``StandardScaler`` +
    ``LogisticRegression`` stopping at ``max_iter`` iterations."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))


def fit_with_weights_at_hand(extractor, X, note, folders=()):
    """Fit ``extractor``; for DEFAULT weights, with the checkpoint named after
    its model in ``folders`` where there is one (after ``note(its Path)``);
    where its DEFAULT weights cannot be had (not in the torch cache, no
    network) but older published weights of its model are in the cache, fit
    it with those instead, after ``note(their name)``.

    DEFAULT names the newest weights; an older set in the cache is still the
    model's published weights. Any other failure to load weights is raised.
    """
    if extractor.weights == "DEFAULT" and folders and isinstance(extractor.model, str):
        path = checkpoint_for(extractor.model, folders, model_names())
        if path is not None:
            note(path)
            return extractor.set_params(weights=str(path)).fit(X)
    try:
        return extractor.fit(X)
    except WeightsUnavailableError:
        at_hand = weights_at_hand(extractor.model)
        if extractor.weights != "DEFAULT" or not at_hand:
            raise
        note(at_hand[0])
        return extractor.set_params(weights=at_hand[0]).fit(X)


def parse_model(spec) -> tuple[str, object]:
    """``"name"`` or ``"name:weights"`` (or a pair) -> ``(name, weights)``;
    weights None when not given. ``"none"`` means random weights."""
    if isinstance(spec, tuple):
        name, weights = spec
    else:
        spec = str(spec)
        scheme = HUB_PREFIX if spec.startswith(HUB_PREFIX) else ""
        name, _, weights = spec[len(scheme) :].partition(":")
        name, weights = scheme + name, weights or None
    try:
        check_model(name)
    except ValueError as exc:
        raise ProbeUsageError(str(exc)) from None
    return name, weights


def _weights_value(weights):
    """The ``weights`` parameter for a specification: ``"none"`` is random."""
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    return weights


def check_split_names(classes, log) -> None:
    """``log`` a note when the class names are a dataset's splits (``train``,
    ``val``...): the folder given is likely the dataset's root, above the
    class folders."""
    splits = sorted(str(c) for c in classes if str(c).lower() in SPLIT_NAMES)
    if splits:
        log(
            f"the class(es) {', '.join(map(repr, splits))} look like a dataset's "
            "splits, not its classes: the probe ranks models on telling the "
            "splits apart. If so, give the folder of one split (its subfolders "
            "are the classes), e.g. DATASET/train/."
        )


def check_classes(y, cv: int) -> dict:
    """The class counts; every class needs at least one image per fold."""
    counts = dict(sorted(Counter(y.tolist()).items(), key=lambda kv: str(kv[0])))
    if len(counts) < 2:
        raise ValueError(
            f"A probe needs at least 2 classes; the labels have {len(counts)}."
        )
    small = {c: k for c, k in counts.items() if k < cv}
    if small:
        listed = ", ".join(f"{c!r} ({k})" for c, k in small.items())
        raise ValueError(
            f"Some classes have fewer images than the {cv} cross-validation "
            f"folds, so a fold would lack them: {listed}. Add images to them, "
            f"remove them, or use fewer folds (at most {min(small.values())})."
        )
    return counts


@dataclasses.dataclass
class ModelRun:
    """One model's pass over the images."""

    model: str
    weights: object  # the weights actually loaded (``weights_``)
    layers: list  # cut points, shallow to deep; None is the final embedding
    widths: list
    embeddings: np.ndarray  # all cut points' columns, side by side
    network_images: int  # images the network ran on (0: the cache answered)
    seconds: float  # fit + transform, decoding included
    errors: list  # ImageReadError of each image that could not be read

    def columns(self, layer) -> np.ndarray:
        i = self.layers.index(layer)
        start = int(sum(self.widths[:i]))
        return self.embeddings[:, start : start + self.widths[i]]


def _embed(model, weights, X, layers, settings, log, folders=()) -> ModelRun:
    """All cut points of one model, in one pass over the images."""
    first: dict
    if layers == "stages":
        first = {"layer": None, "cache_layers": "stages"}
    else:
        first = {"layer": layers, "cache_layers": None}  # checked by fit
    extractor = PretrainedFeatureExtractor(
        model=model, weights=_weights_value(weights), on_error="nan", **settings
    ).set_params(**first)
    start = time.perf_counter()
    with counting_images() as count, progress_label(model):
        fit_with_weights_at_hand(
            extractor,
            X,
            lambda at_hand: log(
                f"{model}: using the checkpoint {str(at_hand)!r}, named after it, "
                "in the weights folder."
                if isinstance(at_hand, Path)
                else f"{model}: the DEFAULT weights are not in the torch cache and "
                f"cannot be downloaded; using {at_hand}, the weights at hand."
            ),
            folders,
        )
        if layers == "stages":  # every cut point as output columns
            extractor.set_params(layer=extractor.computed_layers_, cache_layers=None)
            extractor.fit(X)
        with warnings.catch_warnings():  # probe() says it once, for all models
            warnings.simplefilter("ignore", UnreadableImagesWarning)
            embeddings = extractor.transform(X)
    run = ModelRun(
        model=model,
        weights=extractor.weights_,
        layers=list(extractor.layers_),
        widths=list(extractor.n_features_per_layer_),
        embeddings=embeddings,
        network_images=count.images,
        seconds=time.perf_counter() - start,
        errors=list(extractor.errors_),
    )
    if layers == "stages" and len(run.layers) > 1:
        # The last stage, pooled, is often the final embedding itself (a
        # ResNet's layer4): one row for both, the final embedding.
        last = run.layers[-2]
        if np.array_equal(run.columns(last), run.columns(None), equal_nan=True):
            keep = np.ones(embeddings.shape[1], dtype=bool)
            start = int(sum(run.widths[:-2]))
            keep[start : start + run.widths[-2]] = False
            run.embeddings = embeddings[:, keep]
            del run.widths[-2], run.layers[-2]
    return run


def _cv_scores(estimator, X, y, folds, n_jobs) -> tuple[np.ndarray, int]:
    """Accuracy on each fold, and how many of the fits stopped at the
    iteration limit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = cross_validate(estimator, X, y, cv=folds, n_jobs=n_jobs)
    stopped = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:  # pass the others on
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result["test_score"], stopped


@dataclasses.dataclass(frozen=True)
class ProbeRow:
    """One scored cut point of one model (or one fine-tuning), not ranked.

    :meth:`to_dict` gives it as :attr:`ProbeResult.rows` holds it.
    """

    model: str
    weights: str | None  # the weights loaded, by name or path; None: random
    layer: str | None  # None: the final embedding
    method: str  # "linear probe" or "fine-tuned"
    trainable_layers: int | None  # (fine-tuned rows)
    n_features: int | None
    depth: float  # the cut point's position, 1.0 the final embedding
    cv_accuracy: float
    cv_std: float
    cv_scores: tuple[float, ...]
    images_per_s: float | None  # of the model's pass; None: the cache answered
    max_epochs: int | None = None  # (fine-tuned rows)
    hidden_layer_sizes: tuple[int, ...] | None = None  # (fine-tuned rows)

    @classmethod
    def scored(cls, run: ModelRun, scores, timed=True, **fields) -> ProbeRow:
        """The row of ``run`` with these fold ``scores``; ``timed``: the run's
        images/s apply to it."""
        return cls(
            model=run.model,
            weights=None if run.weights is None else str(run.weights),
            cv_accuracy=float(np.mean(scores)),
            cv_std=float(np.std(scores)),
            cv_scores=tuple(float(s) for s in scores),
            images_per_s=(
                run.network_images / run.seconds
                if timed and run.network_images
                else None
            ),
            **fields,
        )

    def to_dict(self) -> dict:
        """The row as a dict, keys in the order of the JSON ranking
        (``hidden_layer_sizes`` and ``max_epochs`` in fine-tuned rows only)."""
        row: dict[str, object] = {
            "model": self.model,
            "weights": self.weights,
            "layer": self.layer,
            "method": self.method,
            "trainable_layers": self.trainable_layers,
            "n_features": self.n_features,
            "depth": self.depth,
        }
        if self.method == "fine-tuned":
            row["hidden_layer_sizes"] = self.hidden_layer_sizes
            row["max_epochs"] = self.max_epochs
        return {
            **row,
            "cv_accuracy": self.cv_accuracy,
            "cv_std": self.cv_std,
            "cv_scores": list(self.cv_scores),
            "images_per_s": self.images_per_s,
        }


def probe(
    X,
    y,
    *,
    models=DEFAULT_MODELS,
    weights="DEFAULT",
    weights_dir=None,
    layers="stages",
    cv=5,
    finetune=False,
    finetune_epochs=5,
    preprocessing="auto",
    batch_size=64,
    precision="auto",
    device="auto",
    cache="memory",
    n_jobs=None,
    random_state=0,
    verbose=True,
    log=None,
) -> ProbeResult:
    """Score a linear probe on every cut point of several pretrained models.

    For each model, every image goes through the network once, all cut
    points tapped in that pass (and kept in the embedding cache); then
    ``StandardScaler`` + ``LogisticRegression`` is scored on each cut point
    by stratified ``cv``-fold cross-validation, on the same folds for every
    row. Read more in the user guide, ``docs/choosing.md``.

    Parameters
    ----------
    X : array-like of images or paths, or of texts
        Anything :class:`~sktransfer.PretrainedFeatureExtractor` takes.
        Images that cannot be read are left out of every row, and said so.
        Given texts (a list, array or Series of ``str`` that are not image
        paths), ``sktransfer.probe`` calls :func:`~sktransfer.probe_texts`
        instead (language models x layers x poolings and a tf-idf baseline;
        ``models`` then names language models or word-vectors files,
        ``layers`` hidden states), which returns a
        :class:`~sktransfer.TextProbeResult`.
    y : array-like of shape (n_images,)
        The class of each image.
    models : list of str or (str, weights) pairs, default=DEFAULT_MODELS
        torchvision or timm model names (``"timm/<architecture>.<tag>"``),
        each optionally with its own weights as ``"name:weights"``. A model
        whose weights cannot be had (offline, not in the torch or hub cache)
        is skipped, and said so; for ``"DEFAULT"``, older published weights
        in the cache are used instead, and said so.
    weights : str, path-like or None, default="DEFAULT"
        The weights of the models that do not name their own (``"none"`` or
        None: random weights, seeded by ``random_state``). A checkpoint file
        applies to the models whose architecture it fits; the others are
        skipped, and said so.
    weights_dir : str, path-like, list or None, default=None
        Folders of checkpoints at hand, each named after its model
        (``mobilenet_v2_imagenet.pth``, ``resnet50.safetensors``): a model
        with DEFAULT weights uses the checkpoint named after it, offline.
        None: the folders of the environment variable ``SKTRANSFER_WEIGHTS``
        (separated by ``os.pathsep``), if set.
    layers : "stages", list or dict, default="stages"
        The cut points: every stage boundary of each model plus its final
        embedding (None); the same list for every model; or a dict from
        model name to either (models it does not name: "stages").
    cv : int, default=5
        Folds of the stratified cross-validation (shuffled, seeded by
        ``random_state``; the same folds for every row).
    finetune : bool, default=False
        Also score the whole recipe with
        :class:`~sktransfer.FineTunedClassifier` on the best model, on the
        same folds: at each cut point, the kept layers frozen under a linear
        head and under one hidden layer (``FINETUNE_HEADS``; their rows come
        from the embedding cache, one pass per image and cut point), then,
        at the best of these, its last one and two kept stages trainable.
    finetune_epochs : int, default=5
        ``max_epochs`` of those fine-tunings.
    preprocessing, batch_size, precision, device
        As for :class:`~sktransfer.PretrainedFeatureExtractor`.
    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        The embedding cache: a directory makes a second probe of the same
        images (another ``cv``, more models) skip the networks it has run.
    n_jobs : int or None, default=None
        Parallel jobs of the cross-validations. The linear probes' iterations
        are bounded so that they all take about ``PROBE_BUDGET`` operations
        (half an hour on one core) at most, and said so; a dataset that
        would leave fewer than ``MIN_ITER`` iterations (many classes, many
        images and wide cut points at once) is refused.
    random_state : int, default=0
        Seeds the folds and random weights.
    verbose : bool, default=True
        Progress bars (on stderr).
    log : callable or None, default=None
        Called with each note (models skipped, weights substituted); None
        issues them as warnings.

    Returns
    -------
    result : ProbeResult
        The ranked rows, the skipped models and what was measured.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import probe
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    >>> y = np.repeat([0, 1], 6)
    >>> result = probe(X, y, models=["resnet18"], weights=None, cv=3,
    ...                preprocessing={"resize_size": 32, "crop_size": 32},
    ...                verbose=False)
    >>> sorted({row["layer"] for row in result.rows}, key=str)  # None: final
    [None, 'layer1', 'layer2', 'layer3']
    >>> result.runs[0]["network_images"]  # once each, for all the cut points
    12

    (``layer4``, pooled, is the final embedding itself: one row for both.)
    """
    log = log or (lambda message: warn(message, ProbeWarning))
    if not isinstance(cv, int) or cv < 2:
        raise ProbeUsageError(f"cv must be an integer of at least 2. Got {cv!r}.")
    if not isinstance(random_state, int):
        raise ProbeUsageError(
            f"random_state must be an integer (it seeds the folds that every row "
            f"shares). Got {random_state!r}."
        )
    candidates = [parse_model(spec) for spec in models]
    if not candidates:
        raise ProbeUsageError("Name at least one model.")
    names = [name for name, _ in candidates]
    if not isinstance(layers, dict):
        layers = dict.fromkeys(names, layers)
    unknown = set(layers) - set(names)
    if unknown:
        raise ProbeUsageError(
            f"layers names models that are not probed: {sorted(unknown)}; the "
            f"models are {names}."
        )
    for value in layers.values():
        if not (value == "stages" or isinstance(value, (list, tuple)) and value):
            raise ProbeUsageError(
                f"The cut points of a model must be 'stages' or a non-empty "
                f"list. Got {value!r}."
            )
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(
            f"X has {len(X)} images but y has shape {y.shape}: one label per image."
        )
    check_split_names(np.unique(y), log)
    check_classes(y, cv)
    try:
        folders = weights_folders(weights_dir)
    except FileNotFoundError as exc:
        raise ProbeUsageError(str(exc)) from None
    settings = dict(
        preprocessing=preprocessing,
        batch_size=batch_size,
        precision=precision,
        device=device,
        cache=cache,
        random_state=random_state,
        verbose=verbose,
    )
    runs, skipped = [], []
    for name, own in candidates:
        spec = weights if own is None else own
        try:
            cuts = layers.get(name, "stages")
            runs.append(_embed(name, spec, X, cuts, settings, log, folders))
        except WeightsUnavailableError as exc:
            skipped.append({"model": name, "reason": str(exc)})
            log(f"{name}: skipped, its weights cannot be had here. {exc}")
        except ArchitectureMismatchError as exc:
            if own is not None or len(candidates) == 1:
                raise
            # one checkpoint for every model: it is for the one it fits
            skipped.append({"model": name, "reason": str(exc)})
            log(f"{name}: skipped, the checkpoint given does not fit it. {exc}")
    if not runs:
        if all("does not match the architecture" in s["reason"] for s in skipped):
            raise ArchitectureMismatchError(
                f"The checkpoint {str(weights)!r} fits none of the models "
                f"{names}. Name the model it was saved from, with the "
                "checkpoint: --models MODEL:FILE (models=['MODEL:FILE'])."
            )
        example = f"{names[-1]}:/path/to/{names[-1]}.pth"
        raise WeightsUnavailableError(
            "No model could be probed: the weights of every one are unavailable "
            "here (see above). With a checkpoint at hand, name its model with "
            f"it: --models {example} (models=[{example!r}]); or pass "
            "--weights-dir DIR (weights_dir=DIR, or set SKTRANSFER_WEIGHTS=DIR) "
            "for a folder of checkpoints named after their model "
            f"({names[-1]}_imagenet.pth); or run once online to fill the torch "
            "cache."
        )
    errors = {e.index: e for run in runs for e in run.errors}
    unreadable = np.zeros(len(y), dtype=bool)
    unreadable[list(errors)] = True
    kept = np.flatnonzero(~unreadable)
    if errors:
        first = errors[min(errors)]
        log(
            f"{len(errors)} of {len(y)} images could not be read and are left out "
            f"of every row (rows {sorted(errors)[:10]}"
            f"{', ...' if len(errors) > 10 else ''}). The first: {first}"
        )
    y_kept = y[kept]
    counts = check_classes(y_kept, cv)
    folds = list(
        StratifiedKFold(cv, shuffle=True, random_state=random_state).split(
            np.zeros(len(y_kept)), y_kept
        )
    )
    # One BLAS thread: on these small matrices, BLAS threads cost more than
    # they give; one thread runs the probes several times faster (measured
    # in benchmarks/RESULTS.md, the probe's section).
    start = time.perf_counter()
    max_iter = _bounded_iterations(runs, folds, len(counts), log)
    with threadpool_limits(limits=1, user_api="blas"):
        rows = _linear_probe_rows(
            runs, kept, y_kept, folds, n_jobs, log, max_iter, verbose
        )
    classifier_seconds = time.perf_counter() - start
    if finetune:
        rows += _finetune_rows(
            rows, runs, X, kept, y_kept, folds, settings, finetune_epochs, n_jobs
        )
    return ProbeResult(
        rows=rank([row.to_dict() for row in rows]),
        skipped=skipped,
        runs=[
            {
                "model": run.model,
                "weights": None if run.weights is None else str(run.weights),
                "network_images": run.network_images,
                "seconds": run.seconds,
            }
            for run in runs
        ],
        classes={str(c): k for c, k in counts.items()},
        n_images=len(y),
        unreadable=np.flatnonzero(unreadable).tolist(),
        cv=cv,
        random_state=random_state,
        settings={k: v for k, v in settings.items() if k not in ("verbose", "cache")},
        classifier_seconds=classifier_seconds,
    )


def _bounded_iterations(runs, folds, n_classes, log) -> int:
    """The linear probes' iteration limit: :data:`MAX_ITER`, or fewer where
    all the probes would cost more than :data:`PROBE_BUDGET` operations (and
    said so); a :class:`ProbeUsageError` below :data:`MIN_ITER`."""
    n_train = sum(len(train) for train, _ in folds)  # (all the folds' fits)
    per_iteration = 4 * n_train * n_classes * sum(sum(run.widths) for run in runs)
    max_iter = min(MAX_ITER, int(PROBE_BUDGET // max(per_iteration, 1)))
    if max_iter >= MAX_ITER:
        return MAX_ITER
    cut_points = sum(len(run.layers) for run in runs)
    size = (
        f"{n_classes} classes, {len(folds[0][0])} training images per fold and "
        f"{cut_points} cut points of {sum(sum(r.widths) for r in runs)} features "
        f"in all: each iteration of all the linear probes costs about "
        f"{per_iteration:.1e} operations, {PROBE_BUDGET:.0e} allow "
        f"{max_iter} iterations"
    )
    if max_iter < MIN_ITER:
        raise ProbeUsageError(
            f"This dataset is beyond what a linear probe can rank here: {size}, "
            f"fewer than the {MIN_ITER} a ranking needs. Probe fewer cut points "
            "(--layers None: the final embeddings) or models, fewer classes "
            "(merge or sample them), or fewer images per class."
        )
    log(
        f"The linear probes are bounded to {max_iter} iterations (of "
        f"{MAX_ITER}) to keep them to about half an hour on one core: {size}. "
        "Fits that stop there are counted below."
    )
    return max_iter


def _linear_probe_rows(
    runs, kept, y, folds, n_jobs, log, max_iter=MAX_ITER, verbose=False
) -> list[ProbeRow]:
    """A linear probe on every cut point of every model, on ``folds``, with
    a progress bar of the cut points."""
    rows, stopped = [], 0
    total = sum(len(run.layers) for run in runs)
    with progress(
        total=total, desc="Linear probes", unit="cut point", verbose=verbose
    ) as bar:
        for run in runs:
            pairs = zip(run.layers, run.widths, strict=True)
            for depth, (layer, width) in enumerate(pairs, start=1):
                bar.set_postfix_str(f"{run.model} {layer or 'final'}", refresh=False)
                scores, n_stopped = _cv_scores(
                    linear_probe(max_iter), run.columns(layer)[kept], y, folds, n_jobs
                )
                bar.update()
                stopped += n_stopped
                rows.append(
                    ProbeRow.scored(
                        run,
                        scores,
                        layer=layer,
                        method="linear probe",
                        trainable_layers=None,
                        n_features=int(width),
                        depth=depth / len(run.layers),
                    )
                )
    if stopped:
        log(
            f"{stopped} of {len(rows) * len(folds)} linear probes stopped at "
            f"max_iter={max_iter} before converging; their scores may be "
            "slightly low."
        )
    return rows


#: The new layers that ``probe(finetune=True)`` tries on each cut point: a
#: linear head, and one hidden layer.
FINETUNE_HEADS: tuple[tuple[int, ...], ...] = ((), (256,))
#: The kept stages it then trains, at the best frozen (cut point, head).
FINETUNE_TRAINABLE = (1, 2)


def _finetune_rows(
    rows, runs, X, kept, y, folds, settings, epochs, n_jobs
) -> list[ProbeRow]:
    """The recipe on the best frozen model, on the same folds: at each of
    its cut points, the kept layers frozen under each head of
    ``FINETUNE_HEADS`` (their rows from the embedding cache: one pass per
    image and cut point); then, at the best of those, the last kept stages
    trainable (``FINETUNE_TRAINABLE``, as far as the cut keeps them)."""
    best = max(rows, key=lambda row: row.cv_accuracy)
    run = next(r for r in runs if r.model == best.model)
    depths = {row.layer: row.depth for row in rows if row.model == run.model}
    X_kept = _safe_indexing(X, kept)

    def scored(layer, head, trainable):
        classifier = FineTunedClassifier(
            model=run.model,
            weights=run.weights,
            layer=layer,
            hidden_layer_sizes=head,
            trainable_layers=trainable,
            max_epochs=epochs,
            preprocessing=settings["preprocessing"],
            precision=settings["precision"],
            device=settings["device"],
            cache=settings["cache"],
            random_state=settings["random_state"],
            verbose=False,
        )
        scores, _ = _cv_scores(classifier, X_kept, y, folds, n_jobs)
        width = run.widths[run.layers.index(layer)]
        return ProbeRow.scored(
            run,
            scores,
            timed=False,
            layer=layer,
            method="fine-tuned",
            trainable_layers=trainable,
            hidden_layer_sizes=head,
            n_features=int(width),
            depth=depths[layer],
            max_epochs=epochs,
        )

    frozen = [scored(layer, head, 0) for layer in run.layers for head in FINETUNE_HEADS]
    top = max(frozen, key=lambda row: row.cv_accuracy)
    stages = kept_stages(run.model, run.weights, top.layer, settings["random_state"])
    trained = [
        scored(top.layer, top.hidden_layer_sizes, trainable)
        for trainable in FINETUNE_TRAINABLE
        if trainable <= stages
    ]
    return frozen + trained


def rank(rows: list[dict]) -> list[dict]:
    """The rows (as :meth:`ProbeRow.to_dict` gives them) best first, with
    their ``rank``; those within one standard deviation of the best marked
    ``close_to_best``."""
    ranked = sorted(rows, key=lambda row: (-row["cv_accuracy"], row["cv_std"]))
    if ranked:
        best = ranked[0]
        floor = best["cv_accuracy"] - best["cv_std"]
        for i, row in enumerate(ranked, start=1):
            row["rank"] = i
            row["close_to_best"] = row["cv_accuracy"] >= floor
    return ranked


def _speed(row) -> str:
    if row["method"] == "fine-tuned":
        return "-"
    speed = row["images_per_s"]
    return "cached" if speed is None else f"{speed:.1f}"


def _layer_label(row) -> str:
    layer = "final embedding" if row["layer"] is None else str(row["layer"])
    if row["method"] != "fine-tuned":
        return layer
    hidden = row["hidden_layer_sizes"]
    head = f"+ hidden {','.join(map(str, hidden))}" if hidden else "+ linear"
    return f"fine-tuned {layer} {head}, {row['trainable_layers']} trainable"


class ProbeReport(abc.ABC):
    """What the image and text probes' results share: the JSON of the
    ranking, the winner's mark on the plot and the report's three files.
    A subclass has ``rows``, ``skipped`` and ``classes``."""

    rows: list
    skipped: list
    classes: dict

    @property
    @abc.abstractmethod
    def best(self) -> dict:
        """The winning row."""

    @abc.abstractmethod
    def plot(self, ax=None):
        """The plot of the ranking; returns the matplotlib axes."""

    @abc.abstractmethod
    def _report_text(self, data) -> str:
        """The Markdown of ``report.md``."""

    def to_json(self) -> str:
        """The ranking as a JSON list of objects, best CV accuracy first."""
        return json.dumps(self.rows, indent=2)

    def write_report(self, folder, data=None) -> Path:
        """Write ``probe.png`` (the plot), ``probe.json`` and ``report.md``
        (the table, the plot, the class counts and the Python that rebuilds
        the winning pipeline) into ``folder``; return the report's path.

        ``data``: as for ``pipeline_code``.
        """
        plt = require("matplotlib.pyplot", "report", "The probe's report")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ax = self.plot()
        ax.figure.savefig(folder / "probe.png", dpi=120)
        plt.close(ax.figure)
        (folder / "probe.json").write_text(self.to_json() + "\n")
        path = folder / "report.md"
        path.write_text(self._report_text(data))
        return path

    def _mark_winner(self, ax) -> None:
        best = self.best
        ax.scatter(
            [best["depth"]],
            [best["cv_accuracy"]],
            s=160,
            facecolors="none",
            edgecolors="black",
            label="winner",
        )

    def _markdown_lists(self) -> tuple[str, str]:
        """The class counts as table rows, and the skipped models as list
        items, each on a line of its own."""
        counts = "\n".join(f"| {c} | {k} |" for c, k in self.classes.items())
        skipped = "".join(
            f"\n- **{s['model']}** skipped: {s['reason']}" for s in self.skipped
        )
        return counts, skipped


@dataclasses.dataclass
class ProbeResult(ProbeReport):
    """What :func:`probe` measured.

    Attributes
    ----------
    rows : list of dict
        One per (model, cut point) (and fine-tuning), best first: ``rank``,
        ``model``, ``weights``, ``layer`` (None: the final embedding),
        ``method``, ``trainable_layers``, ``n_features``, ``cv_accuracy``,
        ``cv_std``, ``cv_scores``, ``images_per_s`` (of the model's pass over
        the images, decoding included; None when the cache answered),
        ``depth`` (the cut point's position, 1.0 the final embedding) and
        ``close_to_best`` (within one standard deviation of the best).
    skipped : list of dict
        The models left out, with the reason.
    runs : list of dict
        Per model: the weights loaded, the images sent through its network
        (each image once, whatever the number of cut points) and the seconds.
    classes : dict
        The images per class (readable images only).
    n_images : int
        The images given, readable or not.
    unreadable : list of int
        The rows of the images that could not be read (left out).
    cv : int
        The number of folds.
    random_state : int
        The seed of the folds (and of random weights).
    settings : dict
        The extractor's settings: preprocessing, batch size, precision,
        device, random state.
    classifier_seconds : float
        The time of all the linear probes' cross-validations.
    """

    rows: list
    skipped: list
    runs: list
    classes: dict
    n_images: int
    unreadable: list
    cv: int
    random_state: int
    settings: dict
    classifier_seconds: float

    @property
    def best(self) -> dict:
        """The winning row."""
        return self.rows[0]

    def table(self) -> str:
        """The ranking as text, with the winner and the statistical caveat."""
        width = max([34, *(len(_layer_label(row)) + 2 for row in self.rows)])
        header = (
            f"{'rank':>4}  {'model':<18}{'layer':<{width}}{'features':>8}  "
            f"{'CV accuracy':<16}{'images/s':>9}"
        )
        lines = [header, "-" * len(header)]
        for row in self.rows:
            lines.append(
                f"{row['rank']:>4}  {row['model']:<18}{_layer_label(row):<{width}}"
                f"{row['n_features'] if row['n_features'] is not None else '-':>8}  "
                f"{row['cv_accuracy']:.3f} +- {row['cv_std']:.3f}  "
                f"{_speed(row):>9}"
                f"{' *' if row['close_to_best'] else ''}"
            )
        best = self.best
        close = [row for row in self.rows if row["close_to_best"]]
        lines.append("")
        if len(close) > 1:
            smallest = min(close, key=lambda row: row["n_features"] or np.inf)
            lines.append(
                f"* {len(close)} rows are within one standard deviation of the "
                f"best ({best['cv_accuracy']:.3f} - {best['cv_std']:.3f}): these "
                "folds cannot tell them apart; prefer the cheapest (the fewest "
                f"features: {smallest['model']}, {_layer_label(smallest)}, "
                f"{smallest['n_features']})."
            )
        lines.append(
            f"winner: {best['model']} ({best['weights']}), {_layer_label(best)}: "
            f"CV accuracy {best['cv_accuracy']:.3f} +- {best['cv_std']:.3f} "
            f"({self.cv} stratified folds, {sum(self.classes.values())} images, "
            f"{len(self.classes)} classes)"
        )
        return "\n".join(lines)

    def best_pipeline(self):
        """The winning pipeline, not fitted."""
        return _build(*self._best_parameters())

    def _best_parameters(self) -> tuple[str, dict]:
        """``("extract", parameters)`` of the extractor of the winning
        pipeline, or ``("finetune", parameters)`` of the classifier."""
        best = self.best
        # The weights loaded, by name or path: the same ones next time.
        params = {"model": best["model"], "weights": best["weights"]}
        defaults = PretrainedFeatureExtractor().get_params()
        for key in ("preprocessing", "batch_size", "precision", "device"):
            if self.settings[key] != defaults[key]:
                params[key] = self.settings[key]
        if best["weights"] is None:
            params["random_state"] = self.random_state
        if best["method"] == "fine-tuned":
            if best["layer"] is not None:
                params["layer"] = best["layer"]
            if best["hidden_layer_sizes"]:
                params["hidden_layer_sizes"] = tuple(best["hidden_layer_sizes"])
            params["trainable_layers"] = best["trainable_layers"]
            params["max_epochs"] = best["max_epochs"]
            params["random_state"] = self.random_state
            params.pop("batch_size", None)
            return "finetune", params
        params["layer"] = best["layer"]
        return "extract", params

    def pipeline_code(self, data=None) -> str:
        """Python that builds the winning pipeline and fits it.

        ``data``: Python that sets ``X`` and ``y`` (and imports what it
        needs); by default a line for the user to complete.
        """
        kind, params = self._best_parameters()
        indent = " " * (4 if kind == "finetune" else 8)
        args = "".join(f"\n{indent}{k}={v!r}," for k, v in params.items())
        if kind == "finetune":
            body = f"pipeline = FineTunedClassifier({args}\n)"
            imports = "from sktransfer import FineTunedClassifier"
        else:
            body = (
                "pipeline = make_pipeline(\n"
                f"    PretrainedFeatureExtractor({args}\n    ),\n"
                "    StandardScaler(),\n"
                f"    LogisticRegression(max_iter={MAX_ITER}),\n)"
            )
            imports = (
                "from sklearn.linear_model import LogisticRegression\n"
                "from sklearn.pipeline import make_pipeline\n"
                "from sklearn.preprocessing import StandardScaler\n\n"
                "from sktransfer import PretrainedFeatureExtractor"
            )
        data = data or "X, y = ...  # the images and their labels"
        return f"{imports}\n\n{data}\n\n{body}\npipeline.fit(X, y)\n"

    def plot(self, ax=None):
        """CV accuracy against the depth of the cut point, one line per model.

        Returns the matplotlib axes.
        """
        if ax is None:
            plt = require("matplotlib.pyplot", "report", "The probe's plot")
            _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        models = list(dict.fromkeys(row["model"] for row in self.rows))
        for model in models:
            points = sorted(
                (row["depth"], row["cv_accuracy"], row["cv_std"], _layer_label(row))
                for row in self.rows
                if row["model"] == model and row["method"] == "linear probe"
            )
            columns = list(zip(*points, strict=True))
            depth, mean, std = (np.asarray(v) for v in columns[:3])
            names = list(columns[3])
            random = any(r["weights"] is None for r in self.rows if r["model"] == model)
            label = f"{model} (random weights)" if random else model
            line = ax.plot(depth, mean, marker="o", label=label)[0]
            ax.fill_between(
                depth, mean - std, mean + std, color=line.get_color(), alpha=0.15
            )
            if len(models) == 1:  # the layers on the axis
                ax.set_xticks(depth, names, rotation=60, ha="right", fontsize=7)
            else:  # each point named, in its model's colour
                for x, y, name in zip(depth, mean, names, strict=True):
                    ax.annotate(
                        name,
                        (x, y),
                        xytext=(2, 4),
                        textcoords="offset points",
                        rotation=45,
                        fontsize=6,
                        color=line.get_color(),
                    )
        self._plot_finetuned(ax)
        self._mark_winner(ax)
        ax.set_xlabel(
            "cut point, by depth (1 = the final embedding)"
            if len(models) == 1
            else "depth of the cut point (1 = the final embedding; each point named)"
        )
        ax.set_ylabel(f"{self.cv}-fold CV accuracy")
        ax.set_title("Which model, and which layer?")
        ax.grid(alpha=0.3)
        ax.legend()
        return ax

    def _plot_finetuned(self, ax) -> None:
        """The fine-tuned rows (``probe(finetune=True)``): a dashed line per
        head over the frozen cut points, a point per trained variant."""
        tuned = [row for row in self.rows if row["method"] == "fine-tuned"]
        heads = dict.fromkeys(tuple(row["hidden_layer_sizes"] or ()) for row in tuned)
        for head in heads:
            rows = [r for r in tuned if tuple(r["hidden_layer_sizes"] or ()) == head]
            name = f"hidden {','.join(map(str, head))}" if head else "linear"
            frozen = sorted(
                (r["depth"], r["cv_accuracy"])
                for r in rows
                if r["trainable_layers"] == 0
            )
            if frozen:
                ax.plot(
                    *zip(*frozen, strict=True),
                    linestyle="--",
                    marker="s",
                    label=f"fine-tuned, {name} head, kept layers frozen",
                )
            for row in rows:
                if row["trainable_layers"]:
                    ax.scatter(
                        [row["depth"]],
                        [row["cv_accuracy"]],
                        marker="^",
                        s=60,
                        zorder=3,
                        label=f"fine-tuned, {name} head, "
                        f"{row['trainable_layers']} kept stage(s) trainable",
                    )

    def _report_text(self, data) -> str:
        counts, skipped = self._markdown_lists()
        runs = "\n".join(
            f"| {r['model']} | {r['weights']} | {r['network_images']} | "
            f"{r['seconds']:.1f} |"
            for r in self.runs
        )
        unreadable = (
            f"\n{len(self.unreadable)} unreadable images were left out "
            f"(rows {self.unreadable[:20]}).\n"
            if self.unreadable
            else ""
        )
        return f"""# Which model, and which layer?

A linear probe (`StandardScaler` + `LogisticRegression`) on each cut point of
each model, scored by {self.cv}-fold stratified cross-validation (shuffled,
`random_state={self.random_state}`), the same folds for every row.
sktransfer {__version__}, torch {torch.__version__}.

![CV accuracy against depth](probe.png)

```text
{self.table()}
```

## The data

{sum(self.classes.values())} images in {len(self.classes)} classes.
{unreadable}
| class | images |
| --- | --- |
{counts}

## The networks

Each image went once through each model's network, all cut points tapped in
that one pass (0: the embedding cache answered).

| model | weights | images through the network | seconds |
| --- | --- | --- | --- |
{runs}
{skipped}

## The winning pipeline

```python
{self.pipeline_code(data)}```
"""


def _build(kind: str, params: dict):
    if kind == "finetune":
        return FineTunedClassifier(**params)
    return make_pipeline(
        PretrainedFeatureExtractor(**params),
        StandardScaler(),
        LogisticRegression(max_iter=MAX_ITER),
    )
