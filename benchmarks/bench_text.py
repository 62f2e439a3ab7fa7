"""Text: PretrainedTextExtractor against SentenceTransformer.encode, one pass
for many layers, and a grid search over layers against one embedding pass.

What is compared, in one process, on the same texts and model
(all-MiniLM-L6-v2 from ``../shared/weights/text``, float32 on the CPU):

1. texts/s of ``PretrainedTextExtractor(layer=None, cache=None)`` against
   ``SentenceTransformer(folder).encode`` (batch 32 both), with the largest
   row difference relative to the row norm (the rows must be equal);
2. the extractor with 7 layers (every hidden state, mean pooling,
   concatenated) against one layer (``layer=-1``): both one forward pass;
3. a ``GridSearchCV`` of extractor + ``StandardScaler`` + a linear
   classifier, 7 layers x 3 regularisation strengths x 5 folds (106 fits
   with the refit) with ``cache_layers`` = the 7 layers and a fresh cache,
   against one embedding pass of the same texts; with
   ``LogisticRegression`` (lbfgs, whose 106 fits can cost as much as the
   pass) and with ``RidgeClassifier`` (closed form, cheap). The
   classifier's own cost (the same search on the 7 layers' precomputed
   features) is measured too and subtracted: what remains is what the
   extractor costs the search; that share is also timed directly (the
   wall time inside the extractor's ``fit`` and ``transform`` calls). So is
   scikit-learn's per-fit machinery alone (cloning, checking each array,
   scoring): the classifier-alone searches with ``StandardScaler`` and a
   ``DummyClassifier``, which does no work.
   Each search runs with the default BLAS threads and with the
   classifier's BLAS limited to one thread (``threadpool_limits``, as
   ``docs/speed.md`` advises for small data and as ``sktransfer.probe``
   does): on a 2-core CPU, idle OpenBLAS threads that spin between the
   classifier's calls slow the whole search, the extractor's calls too.
   The search runs on three sets, because the classifier's 106 fits cost
   more the fewer and shorter the texts are, against one pass: the short
   texts of (1), the same objects' whole descriptions, and the whole
   descriptions of a set five times larger.

The hardware's limit is measured in the same run: a 2048 x 2048 float32
matrix product, against the rate at which the extractor runs the model's
linear layers (their multiply-adds on the padded tokens it ran, per
second).

Each timing is the best of ``--repeat`` runs (the model warmed up first); the
searches on the larger set, the best of ``--repeat-large`` runs. Each search
runs in turn with one embedding pass, as often, and is compared with that
pass: a pass timed apart, on a shared machine, would see other moments.

Data: labelled text sets at hand with no download: the first two
paragraphs of the docstring of every public function and class of ten
scikit-learn subpackages, labelled by subpackage (linear_model, cluster,
metrics, preprocessing, ensemble, decomposition, feature_extraction.text,
model_selection, neighbors, svm); their whole descriptions (all a
docstring says before its first section, such as Parameters); and the
whole descriptions of these and ten scipy subpackages (stats, signal,
linalg, optimize, sparse, special, interpolate, ndimage, integrate, fft;
20 classes). The grid search's chosen layer and the default layer are also
scored on a held-out quarter of the texts.

Read: (1) goal at least 1.2x ST's texts/s at equal rows; (2) goal at most
1.1x; (3) goal at most 1.3x. Run:
``.venv/bin/python benchmarks/bench_text.py [--repeat 3] [--repeat-large 1]``
"""

import argparse
import inspect
import os
import platform
import re
import time
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import sklearn
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sktransfer import EmbeddingCache, PretrainedTextExtractor, TruncationWarning
from sktransfer._engine import counting_images
from sktransfer._identity import _cpuinfo, cpu_model
from sktransfer._text.encode import BATCH_OVERHEAD, batch_ends, token_ids

FOLDER = Path(__file__).resolve().parents[2] / "shared/weights/text/all-MiniLM-L6-v2"
MODULES = [
    f"sklearn.{name}"
    for name in (
        "linear_model",
        "cluster",
        "metrics",
        "preprocessing",
        "ensemble",
        "decomposition",
        "feature_extraction.text",
        "model_selection",
        "neighbors",
        "svm",
    )
]
#: A larger set: these and ten of scipy's subpackages.
MORE_MODULES = MODULES + [
    f"scipy.{name}"
    for name in (
        "stats",
        "signal",
        "linalg",
        "optimize",
        "sparse",
        "special",
        "interpolate",
        "ndimage",
        "integrate",
        "fft",
    )
]


#: A numpydoc section heading ("Parameters", "Notes", ... underlined).
SECTION = re.compile(r"^[A-Z][A-Za-z ]+\n-{3,}$", re.M)


def docstring_texts(whole=False, modules=MODULES):
    """(texts, labels): the first two paragraphs of each docstring, or with
    ``whole`` its whole description (all it says before its first section,
    such as Parameters), labelled by subpackage."""
    import importlib

    texts, labels = [], []
    for label, name in enumerate(modules):
        module = importlib.import_module(name)
        for attr in sorted(getattr(module, "__all__", dir(module))):
            try:
                obj = getattr(module, attr, None)
            except ImportError:  # (experimental estimators)
                continue
            doc = inspect.getdoc(obj) if callable(obj) else None
            if not doc or attr.startswith("_"):
                continue
            if whole:
                section = SECTION.search(doc)
                doc = doc[: section.start()] if section else doc
            paragraphs = doc.split("\n\n")[: None if whole else 2]
            skipped = (
                ("Parameters", "..", "Read more") if whole else ("Parameters", "..")
            )
            kept = [p for p in paragraphs if not p.startswith(skipped)]
            paragraph = " ".join(kept).replace("\n", " ").strip()
            if len(paragraph) > 20 and paragraph not in texts:
                texts.append(paragraph)
                labels.append(label)
    return texts, np.array(labels)


def best_of(repeat, fn):
    """The best wall time of ``repeat`` runs."""
    return interleaved(repeat, fn)[0][0]


def interleaved(repeat, *fns):
    """For each callable, (best wall time, result, best CPU time of this
    process), the callables run in turn ``repeat`` times: on a shared,
    busy machine, the load then falls on each alike, and CPU time (all
    threads) is less sensitive to it than wall time."""
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            cpu, start = time.process_time(), time.perf_counter()
            results[i] = fn()
            walls[i].append(time.perf_counter() - start)
            cpus[i].append(time.process_time() - cpu)
    return [(min(w), r, min(c)) for w, r, c in zip(walls, results, cpus, strict=True)]


def matmul_rate(repeat, size=2048):
    """GFLOP/s of a ``size``-square float32 matrix product (best of runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = best_of(repeat, lambda: [a @ b for _ in range(10)])
    return 10 * 2 * size**3 / seconds / 1e9


def linear_flops(fitted, texts, batch_size=32):
    """Multiply-adds x 2 of the encoder's linear layers on the padded tokens
    the extractor runs for ``texts`` (its batches, as planned)."""
    model = fitted.network_
    lengths = sorted(map(len, token_ids(model, texts, fitted.max_length_)))[::-1]
    starts, tokens = 0, 0
    for end in batch_ends(lengths, batch_size, BATCH_OVERHEAD[0]):
        tokens += lengths[starts] * (end - starts)
        starts = end
    per_token = sum(
        m.in_features * m.out_features
        for name, m in model.encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in name
    )
    return 2 * per_token * tokens, tokens, sum(lengths)


class ExtractorClock:
    """Wall time spent inside ``PretrainedTextExtractor.fit`` and
    ``transform`` while in use: the extractor's own share of a search,
    measured directly rather than as a difference of two noisy totals."""

    def __enter__(self):
        self.seconds = 0.0
        self._saved = {}
        for name in ("fit", "transform"):
            method = self._saved[name] = getattr(PretrainedTextExtractor, name)

            def timed(estimator, *args, _method=method, **kwargs):
                start = time.perf_counter()
                try:
                    return _method(estimator, *args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            setattr(PretrainedTextExtractor, name, timed)
        return self

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(PretrainedTextExtractor, name, method)


def extractor(**params):
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    params.setdefault("batch_size", 32)
    return PretrainedTextExtractor(model=str(FOLDER), device="cpu", **params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--repeat-large",
        type=int,
        default=1,
        help="runs of each grid search on the larger set (each takes 10-70 s)",
    )
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    flags = [
        f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in _cpuinfo()
    ]
    print(f"CPU: {cpu_model()}; flags: {' '.join(flags)}; {os.cpu_count()} cores")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"sklearn {sklearn.__version__}, python {platform.python_version()}"
    )
    texts, labels = docstring_texts()
    lengths = [len(t.split()) for t in texts]
    print(f"{len(texts)} texts, {np.mean(lengths):.0f} words on average")
    warnings.simplefilter("ignore", TruncationWarning)

    # 1. throughput against SentenceTransformer.encode
    st = SentenceTransformer(str(FOLDER), device="cpu")
    st.encode(texts[:32], batch_size=32)
    ours = extractor().fit(texts[:32])
    ours.transform(texts[:32])
    (t_st, st_rows, c_st), (t_ours, rows, c_ours) = interleaved(
        args.repeat,
        lambda: st.encode(texts, batch_size=32),
        lambda: ours.transform(texts),
    )
    error = np.linalg.norm(rows - st_rows, axis=1) / np.linalg.norm(st_rows, axis=1)
    print(f"\n1. texts/s, layer=None, batch 32 (load average {os.getloadavg()[0]:.1f})")
    print(
        f"   SentenceTransformer.encode: {len(texts) / t_st:7.1f} ({t_st:.2f} s; "
        f"CPU {c_st:.2f} s)"
    )
    print(
        f"   PretrainedTextExtractor:    {len(texts) / t_ours:7.1f} ({t_ours:.2f} s; "
        f"CPU {c_ours:.2f} s)"
    )
    print(
        f"   speed-up {t_st / t_ours:.2f}x (CPU time: {c_st / c_ours:.2f}x); "
        f"max row difference {error.max():.1e}"
    )
    flops, padded_tokens, real_tokens = linear_flops(ours, texts)
    peak = matmul_rate(args.repeat)
    print(
        f"   the extractor ran {padded_tokens} tokens ({real_tokens} real); its "
        f"linear layers at {flops / t_ours / 1e9:.0f} GFLOP/s, "
        f"{flops / t_ours / 1e9 / peak:.0%} of a 2048^2 float32 matmul here "
        f"({peak:.0f} GFLOP/s)"
    )

    # 2. seven layers in one pass against one layer
    one = extractor(layer=-1).fit(texts[:8])
    seven = extractor(layer=list(range(7))).fit(texts[:8])
    (t_one, _, c_one), (t_seven, wide, c_seven) = interleaved(
        args.repeat, lambda: one.transform(texts), lambda: seven.transform(texts)
    )
    print(
        f"\n2. 7 layers in one pass: {t_seven:.2f} s (CPU {c_seven:.2f} s; "
        f"{wide.shape[1]} columns)"
    )
    print(
        f"   1 layer:               {t_one:.2f} s (CPU {c_one:.2f} s); ratio "
        f"{t_seven / t_one:.2f}x (CPU time: {c_seven / c_one:.2f}x)"
    )

    # 3. grid search over 7 layers x 3 C x 5 folds against one embedding pass:
    # on these short texts, on whole descriptions (longer texts), and on the
    # whole descriptions of a larger set
    for whole, modules, runs in [
        (False, MODULES, args.repeat),
        (True, MODULES, args.repeat),
        (True, MORE_MODULES, args.repeat_large),
    ]:
        texts, labels = docstring_texts(whole, modules)
        tokens = token_ids(ours.network_, texts, ours.max_length_)
        print(
            f"\n3. {'Whole descriptions' if whole else 'First paragraphs'}, "
            f"{len(modules)} subpackages: {len(texts)} texts, "
            f"{np.mean([len(t) for t in tokens]):.0f} tokens on average (at most "
            f"{ours.max_length_}); each search and its pass the best of {runs}"
        )
        grid_search(texts, labels, runs)


def grid_search(texts, labels, runs):
    """3. A grid search over 7 layers x 3 C x 5 folds against one
    embedding pass of its training texts, each the best of ``runs`` runs,
    run in turn (so both see the same machine), and the held-out accuracy
    of its choice."""
    X_train, X_test, y_train, y_test = train_test_split(
        texts, labels, test_size=0.25, random_state=0, stratify=labels
    )

    def one_pass():
        return extractor(layer=-1).fit_transform(X_train)

    layers = list(range(7))
    features = extractor(layer=layers).fit(X_train).transform(X_train)
    width = features.shape[1] // len(layers)
    searches = {}
    for name, classifier, strengths, blas in [
        ("LogisticRegression", LogisticRegression(max_iter=2000), [0.1, 1, 10], None),
        ("LogisticRegression", LogisticRegression(max_iter=2000), [0.1, 1, 10], 1),
        ("RidgeClassifier", RidgeClassifier(), [0.1, 1.0, 10.0], None),
        ("RidgeClassifier", RidgeClassifier(), [0.1, 1.0, 10.0], 1),
    ]:
        threads = (
            nullcontext
            if blas is None
            else partial(threadpool_limits, limits=blas, user_api="blas")
        )
        step = name.lower()
        strength = f"{step}__{'C' if 'Logistic' in name else 'alpha'}"
        grid = {"pretrainedtextextractor__layer": layers, strength: strengths}

        inside: list[float] = []
        ran: list[int] = []

        def fresh_search(
            classifier=classifier, grid=grid, inside=inside, ran=ran, threads=threads
        ):
            """The search, with a fresh (empty) cache."""
            pipe = make_pipeline(
                extractor(cache=EmbeddingCache(), cache_layers=[*layers, None]),
                StandardScaler(),
                classifier,
            )
            with counting_images() as count, ExtractorClock() as clock, threads():
                search = GridSearchCV(pipe, grid, cv=5).fit(X_train, y_train)
            inside.append(clock.seconds)
            ran.append(count.images)
            return search

        (t_pass, _, c_pass), (t_grid, search, c_grid) = interleaved(
            runs, one_pass, fresh_search
        )
        # the classifier's own share: the same search on precomputed features
        alone = make_pipeline(StandardScaler(), classifier)

        def classifier_only(
            alone=alone, strength=strength, strengths=strengths, threads=threads
        ):
            with threads():
                for k in layers:
                    columns = features[:, k * width : (k + 1) * width]
                    search = GridSearchCV(alone, {strength: strengths}, cv=5)
                    search.fit(columns, y_train)

        ((t_clf, _, c_clf),) = interleaved(runs, classifier_only)
        if blas is None:
            searches[name] = search
        print(
            f"\n3. GridSearchCV 7 layers x 3 {strength.split('__')[1]} x 5 folds, "
            f"{name}, BLAS threads: {blas or 'default'}: {t_grid:.2f} s "
            f"(CPU {c_grid:.2f} s), texts run "
            f"{max(ran)} per search (of {len(set(X_train))})"
        )
        print(
            f"   one embedding pass: {t_pass:.2f} s (CPU {c_pass:.2f} s); ratio "
            f"{t_grid / t_pass:.2f}x (CPU {c_grid / c_pass:.2f}x)"
        )
        print(
            f"   the classifier alone (same search, precomputed features): "
            f"{t_clf:.2f} s (CPU {c_clf:.2f} s) = {t_clf / t_pass:.2f} passes; "
            f"search minus classifier: {(t_grid - t_clf) / t_pass:.2f}x one pass "
            f"(CPU {(c_grid - c_clf) / c_pass:.2f}x)"
        )
        print(
            f"   inside the extractor's fit and transform (timed directly): "
            f"{min(inside):.2f} s = {min(inside) / t_pass:.2f}x one pass"
        )

    # scikit-learn's per-fit machinery alone (clone, checks, scoring): the
    # fits of the classifier-alone searches with a classifier that does no
    # work (three values of a parameter it does not use), one BLAS thread
    def machinery():
        with threadpool_limits(limits=1, user_api="blas"):
            for k in layers:
                columns = features[:, k * width : (k + 1) * width]
                idle = make_pipeline(StandardScaler(), DummyClassifier())
                grid = {"dummyclassifier__random_state": [0, 1, 2]}
                GridSearchCV(idle, grid, cv=5).fit(columns, y_train)

    (t_pass, _, _), (t_idle, _, c_idle) = interleaved(runs, one_pass, machinery)
    print(
        f"\n3. scikit-learn's machinery alone (the classifier-alone searches "
        f"with StandardScaler + DummyClassifier, one BLAS thread): "
        f"{t_idle:.2f} s (CPU {c_idle:.2f} s) = {t_idle / t_pass:.2f} passes"
    )
    default = make_pipeline(
        extractor(), StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)
    )
    default.fit(X_train, y_train)
    print(
        f"\nHeld-out accuracy ({len(X_test)} texts): default embedding "
        f"(layer=None, LogisticRegression C=1) {default.score(X_test, y_test):.3f}"
    )
    for name, search in searches.items():
        print(
            f"   {name} search: chose {search.best_params_}, CV accuracy "
            f"{search.best_score_:.3f}, held-out {search.score(X_test, y_test):.3f}"
        )


if __name__ == "__main__":
    main()
