"""PretrainedWordVectors and the word-vector files behind it.

Most tests write their own small vectors files (GloVe text, word2vec text and
binary, fastText .vec, gzipped too); the real GloVe vectors in
``../shared/weights/text/glove`` are used where present.
"""

import gzip
import os
import pickle
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sktransfer import (
    MissingTextsWarning,
    OutOfVocabularyWarning,
    PretrainedWordVectors,
    TextInputError,
)
from sktransfer._text import word_pooling
from sktransfer._text import word_vectors as _wv

GLOVE = Path(__file__).resolve().parents[1] / ".." / "shared/weights/text/glove"
WORDS = ["the", "good", "bad", "film", "movie", "great", "awful", "plot", "u.s.", "'s"]
DIM = 6


@pytest.fixture(autouse=True)
def vectors_cache(tmp_path, monkeypatch):
    """Conversions and names in a folder of the test's own; no table kept
    from another test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SKTRANSFER_WORD_VECTORS", str(folder))
    _wv.clear()
    yield folder
    _wv.clear()


def table(seed=0, words=WORDS, dim=DIM):
    rng = np.random.default_rng(seed)
    return list(words), rng.normal(size=(len(words), dim)).astype(np.float32)


def text_lines(words, matrix) -> bytes:
    lines = [
        w + " " + " ".join(repr(float(x)) for x in row)
        for w, row in zip(words, matrix, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def write(path: Path, kind: str, words, matrix, gz=False) -> Path:
    """A vectors file of ``kind``: glove, word2vec, vec or binary."""
    header = f"{len(words)} {matrix.shape[1]}\n".encode()
    if kind == "glove":
        data = text_lines(words, matrix)
    elif kind in ("word2vec", "vec"):
        data = header + text_lines(words, matrix)
    else:
        data = header + b"".join(
            w.encode() + b" " + row.astype("<f4").tobytes() + b"\n"
            for w, row in zip(words, matrix, strict=True)
        )
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def glove_file(tmp_path):
    folder = tmp_path / "vectors"
    folder.mkdir()
    return write(folder / "tiny.txt", "glove", *table())


def mean_of(matrix, words, tokens):
    rows = [matrix[words.index(t)] for t in tokens if t in words]
    return np.mean(rows, axis=0) if rows else np.zeros(matrix.shape[1])


# -- formats -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("kind", ["glove", "word2vec", "vec", "binary"])
def test_every_format_gives_the_file_vectors(tmp_path, kind, gz):
    """GloVe, word2vec text, fastText .vec and word2vec binary, gzipped or
    not (recognised by content): the same matrix and the same rows."""
    words, matrix = table()
    name = {"glove": "v.txt", "word2vec": "v.w2v", "vec": "v.vec", "binary": "v.data"}
    path = write(tmp_path / (name[kind] + (".gz" if gz else "")), kind, words, matrix)
    loaded = _wv.load_file(path)
    assert_array_equal(np.asarray(loaded.matrix), matrix)
    assert loaded.index == {w: i for i, w in enumerate(words)}
    est = PretrainedWordVectors(vectors=path).fit(["the good film"])
    rows = est.transform(["The good film", "a bad plot"])
    assert_allclose(rows[0], mean_of(matrix, words, ["the", "good", "film"]), rtol=1e-6)
    assert_allclose(rows[1], mean_of(matrix, words, ["bad", "plot"]), rtol=1e-6)


def test_gensim_reads_the_binary_file_the_test_writes(tmp_path):
    """The word2vec binary writer of these tests is the real format: gensim
    reads the same vectors from it."""
    gensim = pytest.importorskip("gensim")
    words, matrix = table()
    path = write(tmp_path / "v.bin", "binary", words, matrix)
    kv = gensim.models.KeyedVectors.load_word2vec_format(path, binary=True)
    assert list(kv.index_to_key) == words
    assert_array_equal(kv.vectors, matrix)


def test_keyed_vectors_object_gives_the_rows_of_its_file(tmp_path):
    """A gensim KeyedVectors as 'vectors' gives the rows of the same file;
    clones share the object instead of copying its matrix."""
    gensim = pytest.importorskip("gensim")
    words, matrix = table()
    path = write(tmp_path / "v.txt", "glove", words, matrix)
    kv = gensim.models.KeyedVectors(DIM)
    kv.add_vectors(words, matrix)
    texts = ["the good film", "a bad movie", "great plot"]
    from_kv = PretrainedWordVectors(vectors=kv, pooling="meanmax").fit(texts)
    from_file = PretrainedWordVectors(vectors=path, pooling="meanmax").fit(texts)
    assert_array_equal(from_kv.transform(texts), from_file.transform(texts))
    assert clone(from_kv).vectors is kv
    with pytest.raises(TypeError, match="save_word2vec_format"):
        import sktransfer

        pytest.importorskip("skops")
        sktransfer.save(from_kv, tmp_path / "m.skops")


def test_a_word_with_spaces_and_cp1252_bytes_and_duplicates(tmp_path):
    """A word holding a space (GloVe 840B has some, after its first line)
    keeps it; a word in cp1252 is decoded as such; a repeated word keeps
    its first row."""
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    lines = [
        b"x 0 1 2",
        b"a b 3 4 5",
        "caf\u00e9".encode("cp1252") + b" 6 7 8",
        b"x 9 10 11",
    ]
    path = tmp_path / "v.txt"
    path.write_bytes(b"\n".join(lines))  # (and no final newline)
    loaded = _wv.load_file(path)
    assert loaded.index == {"x": 0, "a b": 1, "caf\u00e9": 2}
    assert_array_equal(np.asarray(loaded.matrix), matrix)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"a 1 2 3\nb 1 2\nc 1 2 3\n", "Line 2 .* 3 numbers"),
        (b"a 1 2 3\nb 1 2 x\n", "Line 2"),
        (b"3 2\na 1 2\nb 1 2\n", "announces 3 words .* holds 2"),
        (b"", "holds no vectors|Line 1"),
    ],
    ids=["short line", "not a number", "header count", "empty"],
)
def test_a_bad_file_is_an_error_naming_the_line(tmp_path, data, match):
    """A damaged text file: a ValueError naming the line, and nothing left
    converted."""
    path = tmp_path / "v.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match):
        PretrainedWordVectors(vectors=path).fit(["a"])
    assert not any((tmp_path / _wv.BESIDE).glob("[0-9a-f]*"))


def test_a_truncated_binary_file_is_an_error(tmp_path):
    """A word2vec binary file cut short: an error saying it is truncated."""
    words, matrix = table()
    path = write(tmp_path / "v.bin", "binary", words, matrix)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        _wv.load_file(path)


def test_fasttext_models_and_pickles_are_refused(tmp_path):
    """A fastText .bin model or a pickle: an error saying what to pass."""
    model = tmp_path / "cc.en.300.bin"
    model.write_bytes((793712314).to_bytes(4, "little") + b"\x00" * 20)
    with pytest.raises(ValueError, match="load_facebook_vectors"):
        PretrainedWordVectors(vectors=model).fit(["a"])
    saved = tmp_path / "vectors.kv"
    saved.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="does not open"):
        PretrainedWordVectors(vectors=saved).fit(["a"])


# -- the memory-mapped conversion ---------------------------------------------------


def test_the_second_load_reads_no_text_and_hashes_nothing(glove_file, monkeypatch):
    """Once converted, a load (in a new process: no table in memory, no
    remembered digest) maps the matrix: the text is neither parsed nor
    hashed."""
    from sktransfer import _identity

    first = PretrainedWordVectors(vectors=glove_file).fit(["the film"])
    rows = first.transform(["the good film"])
    _wv.clear()
    _identity.clear()

    def refused(*args, **kwargs):
        raise AssertionError("the vectors file was read")

    monkeypatch.setattr(_wv, "_rows", refused)
    monkeypatch.setattr(_wv, "file_digest", refused)
    second = PretrainedWordVectors(vectors=glove_file).fit(["the film"])
    assert isinstance(second._table.matrix, np.memmap)
    assert_array_equal(second.transform(["the good film"]), rows)
    # and a changed file is read again (its stamp is new)
    words, matrix = table(seed=1)
    write(glove_file, "glove", words, matrix)
    with pytest.raises(AssertionError, match="was read"):
        _wv.clear() or PretrainedWordVectors(vectors=glove_file).fit(["the"])


def test_conversion_goes_beside_the_file_or_to_the_cache_folder(
    glove_file, vectors_cache
):
    """Beside the file by default; in the cache folder when the file's folder
    is read-only (no write bit: respected even when running as root)."""
    PretrainedWordVectors(vectors=glove_file).fit(["the"])
    digest = _wv.file_identity(glove_file)
    assert (glove_file.parent / _wv.BESIDE / digest / "vectors.f32").is_file()
    assert not vectors_cache.exists()

    other = glove_file.parent.parent / "readonly"
    other.mkdir()
    path = write(other / "v.txt", "glove", *table(seed=2))
    mode = other.stat().st_mode
    other.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        _wv.clear()
        est = PretrainedWordVectors(vectors=path).fit(["the"])
        assert not (other / _wv.BESIDE).exists()
        assert (vectors_cache / est.vectors_digest_ / "vectors.f32").is_file()
    finally:
        other.chmod(mode)


def test_a_damaged_conversion_is_converted_again(glove_file):
    """A conversion whose files are damaged: a CacheWarning, and the file is
    converted again (the rows stay right)."""
    from sktransfer import CacheWarning

    est = PretrainedWordVectors(vectors=glove_file).fit(["the"])
    rows = est.transform(["good film"])
    folder = glove_file.parent / _wv.BESIDE / est.vectors_digest_
    (folder / "words.txt").write_text("only\n")
    _wv.clear()
    with pytest.warns(CacheWarning, match="damaged"):
        again = PretrainedWordVectors(vectors=glove_file).fit(["the"])
    assert_array_equal(again.transform(["good film"]), rows)


def test_a_file_changed_after_fit_is_refused(glove_file):
    """A fitted estimator (unpickled in a new process) whose file changed:
    a ValueError saying to fit again, never rows of other vectors."""
    est = PretrainedWordVectors(vectors=glove_file).fit(["the"])
    restored = pickle.loads(pickle.dumps(est))
    write(glove_file, "glove", *table(seed=3))
    _wv.clear()
    with pytest.raises(ValueError, match="changed. Fit it again"):
        restored.transform(["good film"])


def test_a_name_is_resolved_in_the_local_folder(vectors_cache):
    """A name without extension finds its file in $SKTRANSFER_WORD_VECTORS;
    an unknown name says where it looked and what is there."""
    vectors_cache.mkdir()
    words, matrix = table()
    write(vectors_cache / "tiny.50d.txt.gz", "glove", words, matrix, gz=True)
    est = PretrainedWordVectors(vectors="tiny.50d").fit(["the"])
    assert_allclose(est.transform(["good"])[0], matrix[1])
    with pytest.raises(FileNotFoundError, match="Did you mean 'tiny.50d'"):
        PretrainedWordVectors(vectors="tiny.5d").fit(["the"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PretrainedWordVectors(vectors=str(vectors_cache / "none.txt")).fit(["the"])


# -- tokens and pooling ---------------------------------------------------------------


def test_the_default_tokenizer():
    """Words, hyphenated words, numbers, abbreviations, n't and 's apart,
    punctuation marks each a token; typographic apostrophes as ASCII."""
    text = "the u.s. film didn\u2019t cost 1,000 dollars -- it's well-known!"
    assert word_pooling.default_tokenizer(text) == [
        "the", "u.s.", "film", "did", "n't", "cost", "1,000", "dollars", "-", "-",
        "it", "'s", "well-known", "!",
    ]  # fmt: skip


def test_lowercase_and_a_tokenizer_of_ones_own(glove_file):
    """lowercase=False keeps 'Good' unknown; a tokenizer callable is used
    after lowercasing; one that returns no list of str is a TypeError."""
    words, matrix = table()
    cased = PretrainedWordVectors(vectors=glove_file, lowercase=False).fit(["x"])
    assert_array_equal(cased.oov_counts(["Good film"]), [[2, 1]])
    split = PretrainedWordVectors(vectors=glove_file, tokenizer=str.split)
    split.fit(["x"])
    assert_array_equal(split.oov_counts(["GOOD film!"]), [[2, 1]])  # "film!"
    assert_allclose(split.transform(["GOOD film!"])[0], matrix[1])
    with pytest.raises(TypeError, match="must return a list of str"):
        PretrainedWordVectors(vectors=glove_file, tokenizer=len).fit(["the film"])


@pytest.mark.parametrize("pooling", ["mean", "max", "meanmax"])
def test_pooling_against_a_hand_computation(glove_file, pooling):
    """mean, max and meanmax of each text's known words, by hand."""
    words, matrix = table()
    texts = ["The good film.", "bad bad plot", "great", "the movie, the plot"]
    est = PretrainedWordVectors(vectors=glove_file, pooling=pooling).fit(texts)
    expected = []
    for text in texts:
        rows = matrix[[words.index(t) for t in re.findall(r"\w+", text.lower())]]
        mean, top = rows.mean(axis=0), rows.max(axis=0)
        expected.append(
            {"mean": mean, "max": top, "meanmax": np.r_[mean, top]}[pooling]
        )
    out = est.transform(texts)
    assert out.dtype == np.float32 and out.shape == (4, est.n_features_out_)
    assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_sif_against_a_hand_computation(glove_file):
    """SIF: weights a / (a + p(w)) from fit's texts (p over all their tokens,
    unknown ones included), a weighted mean, minus the projection on the
    first singular vector of the fitted rows (Arora et al. 2017)."""
    words, matrix = table()
    fit_texts = ["the good film", "the bad film", "the the plot zzz", "great movie"]
    a = 0.01
    est = PretrainedWordVectors(vectors=glove_file, pooling="sif", sif_a=a)
    est.fit(fit_texts)
    tokens = [t.split() for t in fit_texts]
    flat = [w for ts in tokens for w in ts]
    p = {w: flat.count(w) / len(flat) for w in set(flat)}
    weight = {w: a / (a + p[w]) for w in p}

    def embed(text):
        known = [w for w in text.split() if w in words]
        if not known:
            return np.zeros(DIM)
        return sum(weight.get(w, 1.0) * matrix[words.index(w)] for w in known) / len(
            known
        )

    fitted = np.array([embed(t) for t in fit_texts])
    u = np.linalg.svd(fitted)[2][0]
    new = ["good plot", "awful awful movie", "the film"]  # awful: unseen, weight 1
    expected = np.array([embed(t) for t in new])
    expected -= np.outer(expected @ u, u)
    assert_allclose(est.transform(new), expected, rtol=1e-4, atol=1e-5)
    assert_allclose(np.abs(est.sif_component_), np.abs(u), rtol=1e-4, atol=1e-6)
    assert est.sif_ids_.tolist() == sorted(words.index(w) for w in p if w in words)


# -- out of vocabulary ---------------------------------------------------------------


def test_oov_rate_per_row_counts_and_the_zero_row_warning(glove_file):
    """oov_rate_ over fit's tokens, oov_counts per text, and a text with no
    known word (an empty one too): a zero row and one warning with the count."""
    est = PretrainedWordVectors(vectors=glove_file).fit(["the good zzz", "yyy film"])
    assert est.oov_rate_ == 2 / 5
    texts = ["the good film", "nothing known here", "", "zzz the"]
    assert_array_equal(est.oov_counts(texts), [[3, 0], [3, 3], [0, 0], [2, 1]])
    with pytest.warns(OutOfVocabularyWarning, match="^2 of 4 texts") as record:
        rows = est.transform(texts)
    assert len(record) == 1
    assert_array_equal(rows[[1, 2]], 0)
    assert not np.isnan(rows).any() and np.abs(rows[[0, 3]]).min(axis=1).all()


def test_bad_input(glove_file):
    """None: a TextInputError naming its row (or a NaN row with
    on_error='nan'); a non-string: a TypeError naming its row; a single
    string: a TypeError; no text: a ValueError."""
    est = PretrainedWordVectors(vectors=glove_file).fit(["the film"])
    with pytest.raises(TextInputError, match="Row 1 has no text"):
        est.transform(["the", None])
    with pytest.raises(TypeError, match="Row 2 is not a text: got int"):
        est.transform(["the", "film", 3])
    with pytest.raises(TypeError, match="single str"):
        est.transform("the film")
    with pytest.raises(ValueError, match="0 texts"):
        est.transform([])
    nan = PretrainedWordVectors(vectors=glove_file, on_error="nan").fit(["the", None])
    assert nan.errors_ == []
    with pytest.warns(MissingTextsWarning, match=r"1 of 3 texts are missing.*rows 1\)"):
        rows = nan.transform(["the film", float("nan"), "good"])
    assert np.isnan(rows[1]).all() and not np.isnan(rows[[0, 2]]).any()
    assert [e.index for e in nan.errors_] == [1]
    assert isinstance(nan.errors_[0], TextInputError)
    nan.transform(["the film"])
    assert nan.errors_ == []  # (about the last call)
    assert_array_equal(nan.oov_counts(["the", None]), [[1, 0], [0, 0]])


def test_parameters_are_checked_in_fit(glove_file):
    """Bad parameters: clear errors from fit, never from __init__."""
    with pytest.raises(InvalidParameterError, match="'pooling'"):
        PretrainedWordVectors(vectors=glove_file, pooling="median").fit(["a"])
    with pytest.raises(InvalidParameterError, match="'sif_a'"):
        PretrainedWordVectors(vectors=glove_file, sif_a=0).fit(["a"])
    with pytest.raises(ValueError, match="'vectors' parameter is required"):
        PretrainedWordVectors().fit(["a"])
    with pytest.raises(TypeError, match="No model source of word_vectors"):
        PretrainedWordVectors(vectors=3).fit(["a"])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        PretrainedWordVectors(vectors=glove_file.parent).fit(["a"])


def test_a_failed_refit_leaves_the_fitted_estimator_as_it_was(glove_file, tmp_path):
    """fit is all or nothing: a refit on a bad file keeps the fitted state."""
    est = PretrainedWordVectors(vectors=glove_file).fit(["the"])
    rows = est.transform(["good film"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a 1 2\nb 1\n")
    est.set_params(vectors=bad)
    with pytest.raises(ValueError, match="Line 2"):
        est.fit(["the"])
    assert est.vectors_digest_ == _wv.file_identity(glove_file)
    est.set_params(vectors=glove_file)
    assert_array_equal(est.transform(["good film"]), rows)


# -- clones, pickles, sharing, sklearn -------------------------------------------------


def test_clone_is_cheap_and_pickles_are_small(tmp_path):
    """clone loads nothing; a pickle holds the path and the digest, not the
    matrix (10,000 x 50 floats: 2 MB), SIF state included, and transforms
    the same after loading."""
    words = [f"w{i}" for i in range(10_000)]
    path = write(tmp_path / "big.txt", "glove", *table(words=words, dim=50))
    texts = ["w1 w2 w3", "w4 w5 w9999", "w1 w1 w7"]
    for pooling in ("mean", "sif"):
        est = PretrainedWordVectors(vectors=path, pooling=pooling).fit(texts)
        copy = clone(est)
        assert "_table" not in vars(copy) and not hasattr(copy, "vectors_digest_")
        data = pickle.dumps(est)
        assert len(data) < 3_000, len(data)
        _wv.clear()
        assert_array_equal(pickle.loads(data).transform(texts), est.transform(texts))


def test_feature_names_and_set_output(glove_file):
    """get_feature_names_out names <pooling>_<i>; set_output gives a
    DataFrame with those columns."""
    pd = pytest.importorskip("pandas")
    est = PretrainedWordVectors(vectors=glove_file, pooling="meanmax").fit(["the"])
    names = est.get_feature_names_out()
    assert names.tolist()[:2] == ["mean_0", "mean_1"] and names[DIM] == "max_0"
    assert len(names) == est.n_features_out_ == 2 * DIM
    frame = est.set_output(transform="pandas").transform(pd.Series(["the", "film"]))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == names.tolist()


def test_save_and_load_keep_the_path_and_digest(glove_file, tmp_path):
    """sktransfer.save / load: a pipeline with SIF vectors comes back and
    predicts the same; the file holds no matrix."""
    pytest.importorskip("skops")
    import sktransfer

    texts = ["good film", "great movie", "bad plot", "awful film"] * 3
    y = [1, 1, 0, 0] * 3
    pipe = make_pipeline(
        PretrainedWordVectors(vectors=glove_file, pooling="sif"), LogisticRegression()
    ).fit(texts, y)
    sktransfer.save(pipe, tmp_path / "model")
    again = sktransfer.load(tmp_path / "model")
    assert_array_equal(again.predict_proba(texts), pipe.predict_proba(texts))
    assert again[0].vectors == str(glove_file)
    # the missing texts of the last transform come back too
    extractor = clone(pipe[0]).set_params(on_error="nan").fit(texts)
    with pytest.warns(MissingTextsWarning):
        extractor.transform(["good film", None])
    sktransfer.save(extractor, tmp_path / "extractor")
    (error,) = sktransfer.load(tmp_path / "extractor").errors_
    assert isinstance(error, TextInputError) and error.index == 1


def test_a_grid_search_over_pooling(glove_file):
    """In a pipeline and a grid search (clones fitted, the table shared)."""
    texts = ["good film", "great movie", "bad plot", "awful film"] * 4
    y = [1, 1, 0, 0] * 4
    pipe = make_pipeline(
        PretrainedWordVectors(vectors=glove_file), LogisticRegression()
    )
    search = GridSearchCV(
        pipe, {"pretrainedwordvectors__pooling": ["mean", "max", "sif"]}, cv=2
    ).fit(texts, y)
    assert search.best_score_ == 1.0


# -- the embedding cache -------------------------------------------------------------


def _rows_and_counts(est, texts, cache):
    """The rows of ``texts`` and the lookups they cost ``cache``."""
    hits, misses = cache.hits, cache.misses
    rows = est.transform(texts)
    return rows, cache.hits - hits, cache.misses - misses


def test_cache_hits_serve_the_computed_rows(glove_file):
    """A second transform is served from the cache (a hit per text and
    vector, no pooling), with the same rows as without a cache; missing texts
    stay NaN and an all-unknown text still warns."""
    from sktransfer import EmbeddingCache

    texts = ["the good film", "bad plot", None, "zzz yyy", "the good film"]
    plain = PretrainedWordVectors(vectors=glove_file, on_error="nan").fit(texts)
    with pytest.warns(OutOfVocabularyWarning), pytest.warns(MissingTextsWarning):
        expected = plain.transform(texts)
    cache = EmbeddingCache()
    est = clone(plain).set_params(cache=cache).fit(texts)
    with (
        pytest.warns(OutOfVocabularyWarning, match="^1 of 5"),
        pytest.warns(MissingTextsWarning, match=r"^1 of 5 .*\(rows 2\)"),
    ):
        first, hits, misses = _rows_and_counts(est, texts, cache)
    assert [e.index for e in est.errors_] == [2]
    assert (hits, misses) == (0, 4)  # (None is not looked up)
    assert len(cache) == 2 * 3  # a row and its counts for 3 distinct texts
    est._pooled = None  # a hit pools nothing
    with (
        pytest.warns(OutOfVocabularyWarning, match="^1 of 5"),
        pytest.warns(MissingTextsWarning),
    ):
        second, hits, misses = _rows_and_counts(est, texts, cache)
    assert (hits, misses) == (8, 0)
    assert_array_equal(first, expected)
    assert_array_equal(second, expected)


def test_every_part_of_the_cache_key_is_a_miss(glove_file, tmp_path, monkeypatch):
    """Other vectors (by content), lowercase, pooling, the default
    tokenizer's pattern, and for SIF other weights (sif_a, other texts) or
    only another component (texts with the same word counts) each miss, and
    give the rows of an uncached estimator."""
    from sktransfer import EmbeddingCache
    from sktransfer import _word_vectors as module

    cache = EmbeddingCache()
    texts = ["The good film", "bad plot the", "great movie"]
    other = write(tmp_path / "other.txt", "glove", *table(seed=1))

    def check(params, fit_texts, expected):
        est = PretrainedWordVectors(**params, cache=cache).fit(fit_texts)
        rows, hits, misses = _rows_and_counts(est, texts, cache)
        assert (hits > 0, misses) == expected, params
        plain = clone(est).set_params(cache=None).fit(fit_texts)
        assert_array_equal(rows, plain.transform(texts))
        return est

    mean = {"vectors": glove_file}
    check(mean, texts, (False, 3))
    check(mean, texts, (True, 0))  # (the same: hits)
    check({"vectors": other}, texts, (False, 3))
    check({**mean, "lowercase": False}, texts, (False, 3))
    check({**mean, "pooling": "max"}, texts, (False, 3))
    sif = {**mean, "pooling": "sif"}
    counts = ["the good", "film bad"]
    same_counts = ["the film", "good bad"]  # the same p(w), another component
    est = check(sif, counts, (False, 3))
    weights, component = est.sif_weights_, est.sif_component_
    check(sif, counts, (True, 0))
    est = check(sif, same_counts, (False, 3))
    assert_array_equal(est.sif_weights_, weights)
    assert not np.allclose(est.sif_component_, component)
    check({**sif, "sif_a": 0.5}, counts, (False, 3))
    check(sif, ["the the film", "good"], (False, 3))
    monkeypatch.setattr(module, "TOKEN_PATTERN", module.TOKEN_PATTERN + "|x")
    check(mean, texts, (False, 3))


def test_a_custom_tokenizer_turns_the_cache_off(glove_file):
    """A tokenizer callable: the cache is neither read nor written (its code
    and what it reads cannot be identified), and the rows are right."""
    from sktransfer import EmbeddingCache

    cache = EmbeddingCache()
    est = PretrainedWordVectors(vectors=glove_file, tokenizer=str.split, cache=cache)
    rows = est.fit(["good film"]).transform(["good film", "bad"])
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)
    words, matrix = table()
    assert_allclose(rows, [(matrix[1] + matrix[3]) / 2, matrix[2]], rtol=1e-6)


def test_a_directory_cache_serves_another_session(glove_file, tmp_path):
    """cache=<folder>: rows written there are read back once the memory
    layer is gone (another process, a later session), with the same values;
    a bare word is refused in fit."""
    from sktransfer._cache import clear_memory, directory_cache

    folder = tmp_path / "rows"
    texts = ["the good film", "awful plot"]
    est = PretrainedWordVectors(vectors=glove_file, cache=str(folder)).fit(texts)
    first = est.transform(texts)
    assert any(folder.rglob("*.emb"))
    clear_memory()
    store = directory_cache(folder)
    again = pickle.loads(pickle.dumps(est))
    second, hits, misses = _rows_and_counts(again, texts, store)
    assert (hits, misses) == (4, 0)
    assert_array_equal(second, first)
    with pytest.raises(ValueError, match="bare word"):
        PretrainedWordVectors(vectors=glove_file, cache="disk").fit(texts)


def test_clones_share_the_cache_and_pickles_stay_small(tmp_path):
    """clone keeps the very cache object (a grid search's candidates share
    it: the second candidate with the same rows only hits), and a fitted SIF
    estimator with a cache pickles small."""
    from sktransfer import EmbeddingCache

    words = [f"w{i}" for i in range(10_000)]
    path = write(tmp_path / "big.txt", "glove", *table(words=words, dim=50))
    cache = EmbeddingCache(directory=tmp_path / "rows")
    texts = [f"w{i} w{i + 1} w{3 * i}" for i in range(8)]
    y = [0, 1] * 4
    est = PretrainedWordVectors(vectors=path, pooling="sif", cache=cache)
    assert clone(est).cache is cache
    pipe = make_pipeline(est, LogisticRegression())
    GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(texts, y)
    # The first candidate of each fold misses on its 8 texts (SIF fitted on
    # that fold's 4), the second only hits (a row and its counts a text);
    # the refit on all 8 texts misses again.
    assert (cache.misses, cache.hits) == (8 + 8 + 8, 2 * 8 * 2)
    fitted = est.fit(texts)
    fitted.transform(texts)
    assert len(pickle.dumps(fitted)) < 3_000


# -- real GloVe ------------------------------------------------------------------------


@pytest.mark.skipif(not GLOVE.is_dir(), reason="no ../shared/weights/text/glove")
@pytest.mark.parametrize(
    "name", ["glove.6B.50d.top2446.txt", "glove.6B.100d.top2604.txt"]
)
def test_real_glove_vectors(name, vectors_cache):
    """The real GloVe files: every line read (cp1252 punctuation, no final
    newline), their first vector exact, the default tokenizer finding
    their clitics; the read-only folder is left untouched."""
    path = GLOVE / name
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    est = PretrainedWordVectors(vectors=path).fit(["the film wasn't bad, it's great"])
    assert est.vocabulary_size_ == len(lines)
    assert est.oov_rate_ == 0.0
    first = np.array(lines[0].split()[1:], dtype=np.float32)
    assert_array_equal(np.asarray(est._table.matrix[0]), first)
    assert est.n_features_out_ == len(first)
    if not os.access(GLOVE, os.W_OK) or not GLOVE.stat().st_mode & 0o222:
        assert not (GLOVE / _wv.BESIDE).exists()
