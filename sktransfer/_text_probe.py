"""Which pretrained language model, which layer and which pooling, for these
texts? And do they beat tf-idf?

:func:`probe_texts` answers by measurement, as :func:`sktransfer.probe`
does for images: each language model runs once over the texts, every
hidden state pooled every way in that one pass (the embedding cache's
``cache_layers``); word vectors, when given, are one more row; a tf-idf +
logistic regression baseline is always a row. A linear probe
(``StandardScaler`` + ``LogisticRegression``) is scored on each row by
stratified cross-validation, on the same folds for every row.

Its choice must not hurt: with a few hundred labels, cross-validation noise
easily ranks a poor layer first. So the winner is the *default* row (the
first language model's own sentence embedding) unless another row beats it
on the same folds by more than their noise: a one-sided paired t-test of
the fold differences, with Nadeau and Bengio's correction for the overlap
of the training sets of k-fold cross-validation, at ``ALPHA`` divided by
the number of rows compared (Bonferroni).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import time
import warnings

import numpy as np
from scipy import stats
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sktransfer._common import require
from sktransfer._images.decode import EXTENSIONS
from sktransfer._probe import (
    DEFAULT_MODELS,
    MAX_ITER,
    ProbeReport,
    _cv_scores,
    check_classes,
    linear_probe,
    rank,
)
from sktransfer._probe import probe as probe_images
from sktransfer._sources.word_vectors import is_keyed_vectors
from sktransfer._text.inputs import as_texts
from sktransfer._text_extractor import PretrainedTextExtractor
from sktransfer._version import __version__
from sktransfer._word_vectors import PretrainedWordVectors
from sktransfer.exceptions import (
    ProbeUsageError,
    ProbeWarning,
    TruncationWarning,
    WeightsUnavailableError,
    warn,
)

__all__ = ["ALPHA", "DEFAULT_TEXT_MODELS", "TextProbeResult", "probe", "probe_texts"]

#: The language models probed when none are named.
DEFAULT_TEXT_MODELS = ("sentence-transformers/all-MiniLM-L6-v2",)
#: The poolings of every hidden state.
POOLINGS = ("mean", "cls", "max")
#: The family-wise false-switch rate of the tie rule.
ALPHA = 0.05
#: The baseline row's name.
TFIDF = "tf-idf"


def is_texts(X) -> bool:
    """Whether ``X`` holds texts rather than images: a list, tuple, 1-D
    array or Series of ``str`` whose first values are neither existing files
    nor names with an image extension (those are image paths)."""
    if isinstance(X, (str, bytes)) or getattr(X, "ndim", 1) != 1:
        return False
    values = getattr(X, "values", X)  # (a Series)
    try:
        head = list(values[:10])
    except (TypeError, KeyError, IndexError):
        return False
    if not head or not all(isinstance(v, str) for v in head):
        return False
    return not any(v.lower().endswith(EXTENSIONS) or os.path.isfile(v) for v in head)


def _kind_of(spec) -> str:
    """``"word vectors"`` for a vectors file or gensim KeyedVectors, else
    ``"language model"`` (a model folder or hub id)."""
    if is_keyed_vectors(spec):
        return "word vectors"
    if isinstance(spec, (str, os.PathLike)):
        return "word vectors" if os.path.isfile(spec) else "language model"
    raise ProbeUsageError(
        f"A text model must be a hub id, a model folder, a word-vectors file or "
        f"a gensim KeyedVectors. Got {type(spec).__name__}: {spec!r:.60}."
    )


def _name(spec) -> str:
    return type(spec).__name__ if is_keyed_vectors(spec) else os.fspath(spec)


def _row(model, kind, layer, pooling, scores, n_features, depth, speed, default):
    return {
        "model": model,
        "kind": kind,
        "layer": layer,
        "pooling": pooling,
        "method": "tf-idf + logistic regression"
        if kind == "baseline"
        else "linear probe",
        "n_features": n_features,
        "depth": depth,
        "default": default,
        "cv_accuracy": float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "cv_scores": [float(s) for s in scores],
        "texts_per_s": speed,
    }


def beats(a, b, alpha: float) -> tuple[bool, float]:
    """Whether fold scores ``a`` beat ``b`` (the same folds) by more than
    their noise, and the p-value: a one-sided paired t-test of the fold
    differences, the variance corrected for k-fold's overlapping training
    sets (Nadeau and Bengio 2003: ``1/k + 1/(k-1)`` instead of ``1/k``)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    k = len(d)
    mean = d.mean()
    if mean <= 0:
        return False, 1.0
    var = d.var(ddof=1)
    if var == 0:  # the same gain on every fold
        return True, 0.0
    t = mean / math.sqrt(var * (1 / k + 1 / (k - 1)))
    p = float(stats.t.sf(t, k - 1))
    return p < alpha, p


def choose(rows: list[dict], alpha: float = ALPHA) -> tuple[dict, dict]:
    """The winner among ranked ``rows`` and why.

    The default row (``default=True``) wins unless rows beat it by more than
    fold noise (:func:`beats` at ``alpha / (len(rows) - 1)``); then the best
    of those by CV accuracy wins.
    """
    reference = next(row for row in rows if row["default"])
    others = [row for row in rows if row is not reference]
    level = alpha / max(len(others), 1)
    better = []
    for row in others:
        significant, p = beats(row["cv_scores"], reference["cv_scores"], level)
        row["p_vs_default"] = p
        if significant:
            better.append(row)
    reference["p_vs_default"] = None
    winner = max(better, key=lambda r: r["cv_accuracy"]) if better else reference
    top = rows[0]
    return winner, {
        "default": reference,
        "top": top,
        "kept_default": winner is reference and top is not reference,
        "level": level,
    }


def _layer_label(row) -> str:
    if row["kind"] == "baseline":
        return "tf-idf + logistic regression"
    if row["kind"] == "word vectors":
        return f"word vectors, {row['pooling']}"
    if row["layer"] is None:
        return "default embedding"
    return f"layer {row['layer']}, {row['pooling']}"


def _short(model: str) -> str:
    return model if len(model) <= 30 else "..." + model[-27:]


@dataclasses.dataclass
class TextProbeResult(ProbeReport):
    """What :func:`probe_texts` measured.

    Attributes
    ----------
    rows : list of dict
        One per (model, layer, pooling), per word vectors and the tf-idf
        baseline, best CV accuracy first: ``rank``, ``model``, ``kind``
        (``"language model"``, ``"word vectors"`` or ``"baseline"``),
        ``layer`` (a hidden state, 0 the embedding layer's output; None: the
        model's own sentence embedding), ``pooling``, ``method``,
        ``n_features`` (None for tf-idf: its vocabulary differs by fold),
        ``depth``, ``default`` (the row the tie rule keeps), ``cv_accuracy``,
        ``cv_std``, ``cv_scores``, ``texts_per_s`` (of the model's pass),
        ``close_to_best``, ``p_vs_default`` (the tie rule's p-value against
        the default row) and ``winner``.
    skipped : list of dict
        The models left out, with the reason.
    runs : list of dict
        Per model: the texts embedded and the seconds.
    classes : dict
        The texts per class.
    n_texts : int
        The texts given.
    cv : int
        The number of folds.
    random_state : int
        The seed of the folds.
    settings : dict
        The extractors' settings: max_length, batch size, precision, device.
    decision : dict
        The tie rule: ``kept_default`` (True when the best-scoring row did
        not beat the default by more than fold noise, so the default won),
        ``level`` (the per-comparison significance level), ``alpha``.
    classifier_seconds : float
        The time of all the cross-validations.
    """

    rows: list
    skipped: list
    runs: list
    classes: dict
    n_texts: int
    cv: int
    random_state: int
    settings: dict
    decision: dict
    classifier_seconds: float

    @property
    def best(self) -> dict:
        """The winning row (by the tie rule: not always the top of the
        ranking)."""
        return next(row for row in self.rows if row["winner"])

    def table(self) -> str:
        """The ranking as text, with the winner and why."""
        header = (
            f"{'rank':>4}  {'model':<31}{'layer':<30}{'features':>8}  "
            f"{'CV accuracy':<16}{'texts/s':>9}"
        )
        lines = [header, "-" * len(header)]
        for row in self.rows:
            speed = row["texts_per_s"]
            mark = " <- winner" if row["winner"] else ""
            if row["default"]:
                mark += " (default)"
            lines.append(
                f"{row['rank']:>4}  {_short(row['model']):<31}"
                f"{_layer_label(row):<30}"
                f"{row['n_features'] if row['n_features'] is not None else '-':>8}  "
                f"{row['cv_accuracy']:.3f} +- {row['cv_std']:.3f}  "
                f"{'-' if speed is None else f'{speed:.1f}':>9}{mark}"
            )
        best, top = self.best, self.rows[0]
        default = next(row for row in self.rows if row["default"])
        n = sum(self.classes.values())
        lines.append("")
        if self.decision["kept_default"]:
            lines.append(
                f"The top row ({_short(top['model'])}, {_layer_label(top)}: "
                f"{top['cv_accuracy']:.3f}) does not beat the default "
                f"({default['cv_accuracy']:.3f}) by more than the noise of these "
                f"{self.cv} folds (paired t-test, p={top['p_vs_default']:.3f} >= "
                f"{self.decision['level']:.4f}): the folds cannot tell them apart, "
                "so the default is kept. More labels, or more folds (--cv 10), "
                "could tell them apart."
            )
        elif best is not default:
            lines.append(
                f"The winner beats the default ({default['cv_accuracy']:.3f}) on "
                f"the same folds by more than their noise (paired t-test, "
                f"p={best['p_vs_default']:.2g} < {self.decision['level']:.4f})."
            )
        if best["kind"] == "baseline":
            lines.append(
                "The tf-idf + logistic regression baseline wins: no pretrained "
                "model beats it on these labels."
            )
        elif top["kind"] == "baseline":
            lines.append(
                "The tf-idf + logistic regression baseline scored highest, but "
                "not clearly above the default."
            )
        lines.append(
            f"winner: {best['model']}, {_layer_label(best)}: CV accuracy "
            f"{best['cv_accuracy']:.3f} +- {best['cv_std']:.3f} ({self.cv} "
            f"stratified folds, {n} texts, {len(self.classes)} classes)"
        )
        return "\n".join(lines)

    def _best_parameters(self) -> tuple[str, dict]:
        best = self.best
        if best["kind"] == "baseline":
            return "tfidf", {}
        if best["kind"] == "word vectors":
            return "vectors", {"vectors": best["model"], "pooling": best["pooling"]}
        params = {"model": best["model"], "layer": best["layer"]}
        if best["layer"] is not None:
            params["pooling"] = best["pooling"]
        defaults = PretrainedTextExtractor().get_params()
        for key, value in self.settings.items():
            if value != defaults[key]:
                params[key] = value
        return "text", params

    def best_pipeline(self):
        """The winning pipeline, not fitted: the extractor (or
        ``TfidfVectorizer``) and the classifier the probe scored."""
        kind, params = self._best_parameters()
        if kind == "tfidf":
            return make_pipeline(
                TfidfVectorizer(sublinear_tf=True),
                LogisticRegression(max_iter=MAX_ITER),
            )
        first = (
            PretrainedWordVectors(**params)
            if kind == "vectors"
            else PretrainedTextExtractor(**params)
        )
        return make_pipeline(
            first, StandardScaler(), LogisticRegression(max_iter=MAX_ITER)
        )

    def pipeline_code(self, data=None) -> str:
        """Python that builds the winning pipeline and fits it.

        ``data``: Python that sets ``X`` (the texts) and ``y``; by default a
        line for the user to complete.
        """
        kind, params = self._best_parameters()
        args = "".join(f"\n        {k}={v!r}," for k, v in params.items())
        imports = [
            "from sklearn.linear_model import LogisticRegression",
            "from sklearn.pipeline import make_pipeline",
        ]
        if kind == "tfidf":
            imports.insert(
                0, "from sklearn.feature_extraction.text import TfidfVectorizer"
            )
            body = (
                "pipeline = make_pipeline(\n"
                "    TfidfVectorizer(sublinear_tf=True),\n"
                f"    LogisticRegression(max_iter={MAX_ITER}),\n)"
            )
        else:
            name = (
                "PretrainedWordVectors"
                if kind == "vectors"
                else "PretrainedTextExtractor"
            )
            imports += [
                "from sklearn.preprocessing import StandardScaler\n",
                f"from sktransfer import {name}",
            ]
            body = (
                "pipeline = make_pipeline(\n"
                f"    {name}({args}\n    ),\n"
                "    StandardScaler(),\n"
                f"    LogisticRegression(max_iter={MAX_ITER}),\n)"
            )
        data = data or "X, y = ...  # the texts and their labels"
        return "\n".join(imports) + f"\n\n{data}\n\n{body}\npipeline.fit(X, y)\n"

    def plot(self, ax=None):
        """CV accuracy against the depth of the layer, one line per model
        and pooling; word vectors and tf-idf as horizontal lines.

        Returns the matplotlib axes.
        """
        if ax is None:
            plt = require("matplotlib.pyplot", "report", "The probe's plot")
            _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        lines = {}
        for row in self.rows:
            if row["kind"] == "language model" and row["layer"] is not None:
                lines.setdefault((row["model"], row["pooling"]), []).append(row)
        for (model, pooling), rows in lines.items():
            rows = sorted(rows, key=lambda r: r["depth"])
            depth = np.array([r["depth"] for r in rows])
            mean = np.array([r["cv_accuracy"] for r in rows])
            std = np.array([r["cv_std"] for r in rows])
            line = ax.plot(depth, mean, marker="o", label=f"{_short(model)}, {pooling}")
            ax.fill_between(
                depth, mean - std, mean + std, color=line[0].get_color(), alpha=0.1
            )
        for row in self.rows:
            if row["kind"] != "language model":
                ax.axhline(row["cv_accuracy"], linestyle="--", label=_layer_label(row))
            elif row["layer"] is None:
                ax.scatter(
                    [1.0],
                    [row["cv_accuracy"]],
                    marker="s",
                    label=f"{_short(row['model'])}, default embedding",
                )
        self._mark_winner(ax)
        ax.set_xlabel("depth of the layer (0 = embedding layer, 1 = last)")
        ax.set_ylabel(f"linear probe, {self.cv}-fold CV accuracy")
        ax.set_title("Which language model, layer and pooling?")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return ax

    def _report_text(self, data) -> str:
        counts, skipped = self._markdown_lists()
        runs = "\n".join(
            f"| {r['model']} | {r['texts']} | {r['seconds']:.1f} |" for r in self.runs
        )
        return f"""# Which language model, layer and pooling?

A linear probe (`StandardScaler` + `LogisticRegression`) on each layer and
pooling of each model, and a tf-idf + logistic regression baseline, scored by
{self.cv}-fold stratified cross-validation (shuffled,
`random_state={self.random_state}`), the same folds for every row.
The winner is the default row (the first language model's own sentence
embedding) unless a row beats it on the same folds by more than their noise
(a one-sided paired t-test with Nadeau and Bengio's correction, at
{self.decision["alpha"]} over the rows compared). sktransfer {__version__}.

![CV accuracy against depth](probe.png)

```text
{self.table()}
```

## The data

{sum(self.classes.values())} texts in {len(self.classes)} classes.

| class | texts |
| --- | --- |
{counts}

## The models

Each language model ran once over the texts, every layer and pooling taken
from that one pass.

| model | texts | seconds |
| --- | --- | --- |
{runs}
{skipped}

## The winning pipeline

```python
{self.pipeline_code(data)}```
"""


def probe_texts(
    X,
    y,
    *,
    models=DEFAULT_TEXT_MODELS,
    word_vectors=None,
    layers="all",
    poolings=POOLINGS,
    cv=5,
    max_length=None,
    batch_size=32,
    precision="auto",
    device="auto",
    cache="memory",
    n_jobs=None,
    random_state=0,
    alpha=ALPHA,
    verbose=True,
    log=None,
) -> TextProbeResult:
    """Rank language models x layers x poolings, word vectors and a tf-idf
    baseline for these texts, by a cross-validated linear probe.

    ``sktransfer.probe(texts, y, models=[...])`` calls this function when
    its ``X`` holds texts. Each language model runs once over the texts
    (all hidden states, each pooling, in that one pass); word vectors and
    the tf-idf + logistic regression baseline are rows of the same table,
    scored on the same stratified folds. Read more in ``docs/text.md``.

    The winner is the default row, the first language model's own sentence
    embedding (``layer=None``), unless a row beats it on the same folds by
    more than their noise: a one-sided paired t-test of the fold
    differences (Nadeau and Bengio's corrected variance), at ``alpha``
    divided by the number of rows compared. With a few hundred labels,
    cross-validation easily ranks a poor layer first; this rule keeps the
    default then, and the table says so.

    Parameters
    ----------
    X : list, array or pandas Series of str
        The texts (a missing text is an error naming its row).
    y : array-like of shape (n_texts,)
        The class of each text.
    models : list of str or path-like, default=DEFAULT_TEXT_MODELS
        Language models (hub ids or model folders, as
        :class:`~sktransfer.PretrainedTextExtractor` takes them) and word
        vectors (a vectors file or a gensim ``KeyedVectors``, as
        :class:`~sktransfer.PretrainedWordVectors` takes them). A model whose
        weights cannot be had is skipped, and said so.
    word_vectors : list of str, path-like or KeyedVectors, or None
        More word vectors, each one row (mean pooling).
    layers : "all" or list of int, default="all"
        The hidden states probed (besides each model's default embedding):
        every one (0, the embedding layer's output, to the last), or these
        (negative from the end).
    poolings : tuple of {"mean", "cls", "max"}, default=("mean", "cls", "max")
        The poolings of each hidden state.
    cv : int, default=5
        Folds of the stratified cross-validation (shuffled, seeded by
        ``random_state``).
    max_length, batch_size, precision, device
        As for :class:`~sktransfer.PretrainedTextExtractor`.
    cache : "memory", str, path-like, EmbeddingCache or None, default="memory"
        The embedding cache (a directory makes a second probe of the same
        texts skip the models it has run). None: a private one in memory,
        for this call (the one-pass computation needs one).
    n_jobs : int or None, default=None
        Parallel jobs of the cross-validations.
    random_state : int, default=0
        Seeds the folds.
    alpha : float, default=0.05
        The family-wise rate at which the tie rule leaves the default for a
        row that is not really better.
    verbose : bool, default=True
        Progress bars (on stderr).
    log : callable or None, default=None
        Called with each note; None issues them as warnings.

    Returns
    -------
    result : TextProbeResult
        The ranked rows, the winner, the skipped models.
    """
    log = log or (lambda message: warn(message, ProbeWarning))
    if not isinstance(cv, int) or isinstance(cv, bool) or cv < 2:
        raise ProbeUsageError(f"cv must be an integer of at least 2. Got {cv!r}.")
    if not isinstance(random_state, int):
        raise ProbeUsageError(
            f"random_state must be an integer (it seeds the folds that every row "
            f"shares). Got {random_state!r}."
        )
    if not 0 < alpha < 1:
        raise ProbeUsageError(f"alpha must be in (0, 1). Got {alpha!r}.")
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    specs = [*(models or []), *(word_vectors or [])]
    kinds = [_kind_of(spec) for spec in specs]
    if word_vectors:
        bad = [s for s in word_vectors if _kind_of(s) != "word vectors"]
        if bad:
            raise ProbeUsageError(
                f"word_vectors must be vectors files or KeyedVectors; {bad[0]!r} "
                "is not a file."
            )
    poolings = tuple(poolings)
    unknown = set(poolings) - set(POOLINGS)
    if not poolings or unknown:
        raise ProbeUsageError(
            f"poolings must be a non-empty list of {list(POOLINGS)}. Got "
            f"{list(poolings)!r}."
        )
    if not (layers == "all" or isinstance(layers, (list, tuple)) and layers):
        raise ProbeUsageError(
            f"layers must be 'all' or a non-empty list of ints. Got {layers!r}."
        )
    texts = as_texts(X).texts
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(texts):
        raise ValueError(
            f"X has {len(texts)} texts but y has shape {y.shape}: one label per text."
        )
    counts = check_classes(y, cv)
    folds = list(
        StratifiedKFold(cv, shuffle=True, random_state=random_state).split(
            np.zeros(len(y)), y
        )
    )
    if cache is None:
        from sktransfer._cache import EmbeddingCache

        cache = EmbeddingCache()
    settings = dict(
        max_length=max_length, batch_size=batch_size, precision=precision,
        device=device,
    )  # fmt: skip
    rows, runs, skipped = [], [], []
    classifier_seconds = 0.0
    first_lm = True
    for spec, kind in zip(specs, kinds, strict=True):
        name = _name(spec)
        try:
            t0 = time.perf_counter()
            if kind == "language model":
                blocks = _language_model(
                    spec, texts, layers, poolings, settings, cache, verbose
                )
            else:
                blocks = _word_vectors(spec, texts)
            seconds = time.perf_counter() - t0
        except WeightsUnavailableError as exc:
            skipped.append({"model": name, "reason": str(exc)})
            log(f"{name}: skipped, its weights cannot be had here. {exc}")
            continue
        runs.append(
            {"model": name, "kind": kind, "texts": len(texts), "seconds": seconds}
        )
        speed = len(texts) / seconds if seconds > 0 else None
        t1 = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            for layer, pooling, depth, columns in blocks:
                scores, _ = _cv_scores(linear_probe(), columns, y, folds, n_jobs)
                default = first_lm and kind == "language model" and layer is None
                rows.append(
                    _row(name, kind, layer, pooling, scores, columns.shape[1],
                         depth, speed, default)
                )  # fmt: skip
        classifier_seconds += time.perf_counter() - t1
        first_lm = first_lm and kind != "language model"
    t1 = time.perf_counter()
    baseline = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=MAX_ITER)
    )
    scores, _ = _cv_scores(baseline, np.asarray(texts, dtype=object), y, folds, n_jobs)
    has_default = any(row["default"] for row in rows)
    if not has_default and rows:  # no language model ran: the first row
        rows[0]["default"] = True
    rows.append(
        _row(TFIDF, "baseline", None, None, scores, None, 0.0, None,
             default=not rows)
    )  # fmt: skip
    classifier_seconds += time.perf_counter() - t1
    ranked = rank(rows)
    winner, why = choose(ranked, alpha)
    for row in ranked:
        row["winner"] = row is winner
    return TextProbeResult(
        rows=ranked,
        skipped=skipped,
        runs=runs,
        classes={str(c): k for c, k in counts.items()},
        n_texts=len(texts),
        cv=cv,
        random_state=random_state,
        settings=settings,
        decision={"kept_default": why["kept_default"], "level": why["level"],
                  "alpha": alpha},
        classifier_seconds=classifier_seconds,
    )  # fmt: skip


def _language_model(spec, texts, layers, poolings, settings, cache, verbose):
    """``(layer, pooling, depth, columns)`` of the default embedding and each
    hidden state x pooling, all from one pass over the texts."""
    extractor = PretrainedTextExtractor(
        model=spec, layer=None, cache=cache, cache_layers="all", verbose=verbose,
        **settings,
    )  # fmt: skip
    extractor.fit(texts)
    n_hidden = extractor.n_hidden_states_
    wanted = range(n_hidden) if layers == "all" else layers
    chosen = sorted(
        {int(k) % n_hidden for k in wanted if -n_hidden <= int(k) < n_hidden}
    )
    outside = [k for k in wanted if not -n_hidden <= int(k) < n_hidden]
    if outside:
        raise ProbeUsageError(
            f"{spec}: layers {outside} are out of range: it has {n_hidden} hidden "
            f"states (0 to {n_hidden - 1})."
        )
    blocks = []
    with warnings.catch_warnings():
        # (said once, by the first transform)
        default = extractor.transform(texts)
        warnings.simplefilter("ignore", TruncationWarning)
        blocks.append((None, None, 1.0, default))
        for pooling in poolings:
            extractor.set_params(layer=chosen, pooling=pooling, verbose=False)
            extractor.fit(texts)
            columns = extractor.transform(texts)
            width = extractor.n_features_per_layer_[0]
            for i, layer in enumerate(chosen):
                blocks.append(
                    (layer, pooling, layer / (n_hidden - 1),
                     columns[:, i * width : (i + 1) * width])
                )  # fmt: skip
    return blocks


def _word_vectors(spec, texts):
    """The mean-pooled word vectors of the texts, one block."""
    vectors = PretrainedWordVectors(vectors=spec, pooling="mean")
    columns = vectors.fit_transform(texts)
    return [(None, "mean", 1.0, columns)]


@functools.wraps(probe_images)
def probe(X, y, **params):
    # ``sktransfer.probe``: the image probe, or the text probe for texts
    # (its docstring is the image probe's, which says so under ``X``).
    if not is_texts(X):
        return probe_images(X, y, **params)
    bound = inspect.signature(probe_images).bind(X, y, **params)
    bound.apply_defaults()
    args = bound.arguments
    image_only = [
        name
        for name, default in (("weights", "DEFAULT"), ("finetune", False),
                              ("preprocessing", "auto"))
        if args[name] != default
    ]  # fmt: skip
    if image_only:
        raise ProbeUsageError(
            f"X holds texts: {image_only} apply to images only. See "
            "sktransfer.probe_texts for the text probe's parameters."
        )
    return probe_texts(
        X, y,
        models=DEFAULT_TEXT_MODELS if args["models"] is DEFAULT_MODELS
        else args["models"],
        layers="all" if args["layers"] == "stages" else args["layers"],
        batch_size=32 if args["batch_size"] == 64 else args["batch_size"],
        **{k: args[k] for k in ("cv", "precision", "device", "cache", "n_jobs",
                                "random_state", "verbose", "log")},
    )  # fmt: skip
