"""Word vectors: texts per second, and what loading a large vectors file costs.

What is measured, on one machine, one core busy (numpy single-threaded):

1. Throughput: ``PretrainedWordVectors(pooling="mean").transform`` against a
   Python loop over gensim's ``KeyedVectors.get_mean_vector`` (the way its
   users pool since gensim dropped its sklearn wrappers), on the same
   vectors and the same tokens (gensim does not tokenize: the loop
   tokenizes with sktransfer's default tokenizer, and a second figure gives
   the loop on pre-tokenized texts, gensim's own share).
   ``pre_normalize=False`` so that both compute the plain mean; the rows are
   checked equal. Goal: at least 3x the loop.
2. Loading a GloVe-format text file of ``--words`` x ``--dim`` (written
   here: the real GloVe 100d vectors of ``../shared/weights/text/glove`` for
   its first words, random ones in GloVe's number format for the rest): the
   first load (hash, parse, convert to the memory-mapped matrix), the second
   (a new process: map the matrix and read the words), and gensim's
   ``load_word2vec_format(no_header=True)`` for scale; each in a fresh
   subprocess, with its peak resident memory over the interpreter's after
   imports (sampled every 2 ms), against the file's size.

Texts: ``--texts`` synthetic sentences of 5 to 40 tokens drawn from the real
GloVe words by a Zipf law, with punctuation, capitals and a few unknown
words (no download).

Run: ``.venv/bin/python benchmarks/bench_word_vectors.py [--words 400000
--dim 100 --texts 20000]``; prints the CPU model, then a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GLOVE = ROOT.parent / "shared/weights/text/glove/glove.6B.100d.top2604.txt"


def cpu_model() -> str:
    """The CPU's model name and the vector instructions it has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines()
         if line.startswith("flags")),
        [],
    )  # fmt: skip
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return f"{name} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def write_vectors(path: Path, n_words: int, dim: int) -> list[str]:
    """A GloVe text file: real words and vectors first, then random ones."""
    rng = np.random.default_rng(0)
    words, real = [], []
    if GLOVE.is_file() and dim == 100:
        for line in GLOVE.read_bytes().split(b"\n"):
            if line.strip():
                word = line.split(b" ", 1)[0].decode("utf-8", "replace")
                if word not in words:
                    words.append(word)
                    real.append(line.rstrip())
    else:
        words = [f"word{i}" for i in range(2000)]
        real = []
    with open(path, "wb") as f:
        f.write(b"\n".join(real) + (b"\n" if real else b""))
        start = len(real)
        for chunk in range(start, n_words, 20_000):
            stop = min(chunk + 20_000, n_words)
            values = rng.normal(0, 0.4, (stop - chunk, dim)).round(5)
            body = "\n".join(
                f"w{i} " + " ".join(map(str, row))
                for i, row in zip(range(chunk, stop), values.tolist(), strict=True)
            )
            f.write(body.encode() + b"\n")
    return words[: max(len(real), 1)] if real else words


def make_texts(vocabulary: list[str], n: int) -> list[str]:
    rng = np.random.default_rng(1)
    alpha = [w for w in vocabulary if w.isalpha()]
    ranks = np.arange(1, len(alpha) + 1)
    p = 1.0 / ranks
    p /= p.sum()
    texts = []
    for _ in range(n):
        length = int(rng.integers(5, 41))
        tokens = list(rng.choice(alpha, size=length, p=p))
        if rng.random() < 0.3:
            tokens[0] = tokens[0].capitalize()
        if rng.random() < 0.2:
            tokens.append("qwxzt")  # unknown
        texts.append(" ".join(tokens) + rng.choice([".", "!", "?", ", really."]))
    return texts


LOAD = """
import os, threading, time
import numpy as np
import sktransfer
from sktransfer import PretrainedWordVectors
{gensim_import}
page = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page


peak, done = [rss()], threading.Event()


def sample():
    while not done.wait(0.002):
        peak.append(rss())


base = rss()
sampler = threading.Thread(target=sample)
sampler.start()
t = time.perf_counter()
{load}
seconds = time.perf_counter() - t
done.set()
sampler.join()
print(seconds, (max(peak + [rss()]) - base) / 2**20)
"""


def run_load(load: str, gensim_import: str = "") -> tuple[float, float]:
    code = LOAD.format(load=load, gensim_import=gensim_import)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds, mib = out.stdout.split()
    return float(seconds), float(mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--skip-gensim-load", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sktransfer import PretrainedWordVectors
    from sktransfer._text.word_pooling import default_tokenizer

    print(f"CPU: {cpu_model()}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["SKTRANSFER_WORD_VECTORS"] = str(folder / "cache")
        path = folder / "vectors" / "big.txt"
        path.parent.mkdir()
        t = time.perf_counter()
        vocabulary = write_vectors(path, args.words, args.dim)
        size = path.stat().st_size / 2**20
        print(
            f"wrote {args.words} x {args.dim} ({size:.0f} MiB) in "
            f"{time.perf_counter() - t:.1f} s"
        )
        fit = f"PretrainedWordVectors(vectors={str(path)!r}).fit(['the'])"
        first, first_mib = run_load(fit)
        second, second_mib = run_load(fit)
        print(
            f"first load  {first:7.2f} s, peak +{first_mib:6.0f} MiB (file {size:.0f})"
        )
        print(f"second load {second:7.2f} s, peak +{second_mib:6.0f} MiB")
        if not args.skip_gensim_load:
            gensim_load, gensim_mib = run_load(
                f"KeyedVectors.load_word2vec_format({str(path)!r}, no_header=True)",
                "from gensim.models import KeyedVectors",
            )
            print(f"gensim load {gensim_load:7.2f} s, peak +{gensim_mib:6.0f} MiB")

        texts = make_texts(vocabulary, args.texts)
        est = PretrainedWordVectors(vectors=path).fit(texts[:100])
        est.transform(texts[:100])  # warm
        t = time.perf_counter()
        ours = est.transform(texts)
        ours_s = time.perf_counter() - t

        from gensim.models import KeyedVectors

        table = est._vectors()
        words = [""] * len(table)
        for word, row in table.index.items():
            words[row] = word
        kv = KeyedVectors(table.dim, count=len(words))
        kv.add_vectors(words, np.asarray(table.matrix))
        t = time.perf_counter()
        theirs = np.array(
            [
                kv.get_mean_vector(default_tokenizer(text.lower()), pre_normalize=False)
                for text in texts
            ]
        )
        loop_s = time.perf_counter() - t
        tokens = [default_tokenizer(text.lower()) for text in texts]
        t = time.perf_counter()
        for toks in tokens:
            kv.get_mean_vector(toks, pre_normalize=False)
        pretok_s = time.perf_counter() - t
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
        n = len(texts)
        n_tokens = sum(map(len, tokens))
        print(f"{n} texts, {n_tokens / n:.1f} tokens each; rows equal")
        print(f"sktransfer transform        {n / ours_s:9.0f} texts/s")
        print(f"gensim loop (+tokenize)     {n / loop_s:9.0f} texts/s")
        print(f"gensim loop (pre-tokenized) {n / pretok_s:9.0f} texts/s")
        print(
            f"speed-up: {loop_s / ours_s:.1f}x "
            f"(vs pre-tokenized {pretok_s / ours_s:.1f}x)"
        )


if __name__ == "__main__":
    main()
