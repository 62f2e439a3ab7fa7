"""Word vectors with and without the embedding cache: is ``cache=`` worth it?

What is compared, on one machine: ``PretrainedWordVectors`` on the real GloVe
100d vectors of ``../shared/weights/text/glove`` (2,604 words), for
``pooling="mean"`` and ``"sif"``, with ``cache=None`` (the default) and
``cache=EmbeddingCache()``:

1. texts/s of ``fit``, of a first ``transform`` (with a cache: all misses,
   each row digested and stored) and of a second one (with a cache: all hits);
2. the wall time of a ``GridSearchCV`` over a ``LogisticRegression``'s ``C``
   (4 values, 3 folds) after the vectors, the search a cache is for: every
   candidate of a fold transforms the same texts with the same fitted state.

Texts: ``--texts`` sentences of 20 words drawn uniformly from the vocabulary
(no download), labelled at random (the accuracy is not the point). The
rows with and without the cache are checked equal.

Run: ``.venv/bin/python benchmarks/bench_word_vectors_cache.py [--texts
20000]``; prints the CPU model, then a table. Read it as: a hit costs a
digest and a lookup per text, a miss that plus the pooling and a store, so
the cache pays only where the same texts are transformed again with the
same fitted state.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import EmbeddingCache, PretrainedWordVectors

GLOVE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared/weights/text/glove/glove.6B.100d.top2604.txt"
)


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    args = parser.parse_args()
    words = [line.split(" ", 1)[0] for line in GLOVE.open(encoding="utf-8")]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 20)) for _ in range(args.texts)]
    y = rng.integers(0, 2, len(texts))
    print(f"CPU: {cpu()}; {len(texts)} texts of 20 words, GloVe 100d")
    print("pooling  cache   fit/s   1st transform/s  2nd transform/s  search s")
    for pooling in ("mean", "sif"):
        reference = None
        for cache in (None, EmbeddingCache()):
            est = PretrainedWordVectors(vectors=GLOVE, pooling=pooling, cache=cache)
            start = time.perf_counter()
            est.fit(texts)
            fit = time.perf_counter() - start
            start = time.perf_counter()
            first = est.transform(texts)
            one = time.perf_counter() - start
            start = time.perf_counter()
            second = est.transform(texts)
            two = time.perf_counter() - start
            assert np.array_equal(first, second)
            if reference is None:
                reference = first
            assert np.array_equal(first, reference)
            if cache is not None:
                cache.clear()
            pipe = make_pipeline(est, LogisticRegression(max_iter=200))
            grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
            start = time.perf_counter()
            GridSearchCV(pipe, grid, cv=3).fit(texts, y)
            search = time.perf_counter() - start
            label = "none" if cache is None else "memory"
            n = len(texts)
            print(
                f"{pooling:8} {label:6} {n / fit:8,.0f} {n / one:16,.0f} "
                f"{n / two:16,.0f} {search:9.1f}"
            )


if __name__ == "__main__":
    main()
