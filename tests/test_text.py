"""PretrainedTextExtractor: rows that equal a hand computation, one pass for
every layer, a cache that never serves a stale row, long texts never cut
silently, offline failure at once."""

from __future__ import annotations

import pickle
import shutil
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import (
    EmbeddingCache,
    LayerError,
    MissingTextsWarning,
    PrecisionFallbackWarning,
    PretrainedTextExtractor,
    TextInputError,
    TruncationWarning,
    WeightsUnavailableError,
)
from sktransfer._engine import counting_images

from .conftest import assert_same_rows, make_tiny_text_model

transformers = pytest.importorskip("transformers")

TEXTS = [
    "the cat sat on the mat",
    "a good movie",
    "",
    "i hated the ending , but loved the actors",
    "the cat sat on the mat",
    "it was really not very good",
]


def make(folder, **params):
    params.setdefault("verbose", False)
    params.setdefault("cache", None)
    return PretrainedTextExtractor(model=str(folder), **params)


def hand_pooled(folder, texts, layer, pooling, max_length=None):
    """Each text alone through transformers (no padding), hidden state
    ``layer`` pooled by hand."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).float().eval()
    rows = []
    for text in texts:
        ids = tokenizer(
            [text], return_tensors="pt", truncation=True, max_length=max_length
        )
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states[layer][0]
        if pooling == "mean":
            rows.append(hidden.mean(0))
        elif pooling == "max":
            rows.append(hidden.max(0).values)
        else:
            rows.append(hidden[0])
    return torch.stack(rows).numpy()


def overlapping_windows(folder, text, max_length):
    """The token ids of each window of ``text`` with long_text='chunk'
    (consecutive windows share a quarter of ``max_length``)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenizer(
        [text],
        truncation=True,
        max_length=max_length,
        stride=max_length // 4,
        return_overflowing_tokens=True,
    )["input_ids"]


# -- rows ------------------------------------------------------------------------


def test_default_rows_equal_sentence_transformers_encode(minilm):
    """layer=None on a sentence-transformers folder: its own pooling and
    normalisation, rows equal to SentenceTransformer.encode."""
    st = pytest.importorskip("sentence_transformers")
    texts = [*TEXTS, "A Longer Sentence, with Capitals and punctuation!" * 3]
    extractor = make(minilm)
    rows = extractor.fit_transform(texts)
    expected = st.SentenceTransformer(str(minilm), device="cpu").encode(texts)
    assert rows.shape == (len(texts), 384) and rows.dtype == np.float32
    assert extractor.sentence_pooling_ == "mean+normalize"
    assert extractor.max_length_ == 256  # sentence_bert_config.json's
    assert_same_rows(rows, expected, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("layer", [0, 2, -1])
def test_layer_k_equals_the_hand_pooled_hidden_state(tiny_text_model, layer, pooling):
    """layer=k: hidden state k pooled over the text's tokens, as computed by
    hand one text at a time (padding excluded)."""
    rows = make(tiny_text_model, layer=layer, pooling=pooling).fit_transform(TEXTS)
    expected = hand_pooled(tiny_text_model, TEXTS, layer, pooling)
    assert_same_rows(rows, expected, rtol=1e-5)


def test_plain_encoder_default_is_the_mean_of_its_last_layer(tiny_text_model):
    """layer=None on a plain transformers folder: the mean of the last
    hidden state, with the same cache entries as layer=-1."""
    extractor = make(tiny_text_model)
    rows = extractor.fit_transform(TEXTS)
    assert extractor.sentence_pooling_ is None
    assert_same_rows(rows, hand_pooled(tiny_text_model, TEXTS, -1, "mean"))
    assert extractor.computed_layers_ == ["4|mean"]


def test_layer_list_concatenates_with_feature_names(tiny_text_model):
    """A list of layers concatenates their pooled vectors, in order; the
    feature names say which layer and pooling each column is."""
    extractor = make(tiny_text_model, layer=[1, -1], pooling="cls")
    rows = extractor.fit_transform(TEXTS)
    assert rows.shape == (len(TEXTS), 64)
    assert extractor.layers_ == [1, 4]
    assert_same_rows(rows[:, :32], hand_pooled(tiny_text_model, TEXTS, 1, "cls"))
    assert_same_rows(rows[:, 32:], hand_pooled(tiny_text_model, TEXTS, 4, "cls"))
    names = extractor.get_feature_names_out()
    assert names[0] == "layer1_cls_0" and names[-1] == "layer4_cls_31"
    assert len(names) == 64


def test_set_output_pandas(tiny_text_model):
    """set_output(transform='pandas') gives a DataFrame with the names,
    indexed like a Series input."""
    X = pd.Series(TEXTS, index=range(10, 10 + len(TEXTS)))
    extractor = make(tiny_text_model, layer=2).set_output(transform="pandas")
    out = extractor.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(extractor.get_feature_names_out())
    assert list(out.index) == list(X.index)


# -- one pass --------------------------------------------------------------------


def test_grid_search_over_layers_runs_each_text_once(tiny_text_model):
    """A GridSearchCV over 4 layers x 2 poolings x 2 C, with cache_layers,
    runs the network once per distinct text in all."""
    rng = np.random.default_rng(0)
    words = np.array(["good", "bad", "movie", "film", "great", "awful", "plot"])
    X = [" ".join(rng.choice(words, 5)) for _ in range(40)]
    y = np.array([("good" in t or "great" in t) for t in X], dtype=int)
    cache = EmbeddingCache()
    pipe = make_pipeline(
        make(tiny_text_model, cache=cache, cache_layers=[1, 2, 3, 4]),
        LogisticRegression(),
    )
    grid = {
        "pretrainedtextextractor__layer": [1, 2, 3, 4],
        "pretrainedtextextractor__pooling": ["mean", "max"],
        "logisticregression__C": [0.1, 1.0],
    }
    with counting_images() as count:
        GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert count.images == len(set(X))


def test_identical_texts_are_embedded_once(tiny_text_model):
    """Duplicates run once and get identical rows (no cache involved)."""
    texts = ["the cat", "the dog", "the cat", "the cat", "the dog"]
    extractor = make(tiny_text_model).fit(texts)
    with counting_images() as count:
        rows = extractor.transform(texts)
    assert count.images == 2
    np.testing.assert_array_equal(rows[0], rows[2])
    np.testing.assert_array_equal(rows[1], rows[4])


# -- the cache -------------------------------------------------------------------


def _runs(extractor, texts):
    with counting_images() as count:
        rows = extractor.fit(texts).transform(texts)
    return count.images, rows


def test_cache_hit_equals_recomputation(tiny_text_model, tmp_path):
    """A second transform (another extractor on the same cache folder) runs
    nothing and gives the rows a recomputation gives."""
    first = make(tiny_text_model, layer=2, cache=tmp_path / "c")
    runs, rows = _runs(first, TEXTS)
    assert runs == 5  # (distinct texts)
    again, cached = _runs(make(tiny_text_model, layer=2, cache=tmp_path / "c"), TEXTS)
    assert again == 0
    np.testing.assert_array_equal(cached, rows)
    assert_same_rows(rows, make(tiny_text_model, layer=2).fit_transform(TEXTS))


def test_a_changed_tokenizer_file_is_a_cache_miss(tiny_text_model, tmp_path):
    """Changing a tokenizer file of the model folder changes every key."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_text_model, folder)
    cache = EmbeddingCache()
    assert _runs(make(folder, cache=cache), TEXTS)[0] == 5
    assert _runs(make(folder, cache=cache), TEXTS)[0] == 0
    vocab = (folder / "vocab.txt").read_text().splitlines()
    cat, dog = vocab.index("cat"), vocab.index("dog")
    vocab[cat], vocab[dog] = "dog", "cat"
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer.json").unlink()  # (rebuilt from vocab.txt)
    runs, rows = _runs(make(folder, cache=cache), TEXTS)
    assert runs == 5
    before = make(tiny_text_model).fit_transform(TEXTS)
    assert not np.allclose(rows[0], before[0])  # "cat" is now "dog"


def test_model_identity_covers_nested_files_skips_exports(tiny_text_model, tmp_path):
    """The model's identity covers every file it loads, in subfolders too
    (a sentence-transformers ``1_Pooling/config.json``), and none of the
    README, the ONNX/OpenVINO exports, a broken link or a linked folder."""
    from sktransfer._sources.transformers import TransformersSource

    folder = tmp_path / "model"
    shutil.copytree(tiny_text_model, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    source = TransformersSource()
    before = source.identity(folder)
    (folder / "README.md").write_text("a model card")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"an export")
    (folder / "openvino").mkdir()
    (folder / "openvino" / "config.json").write_text("{}")
    (folder / "gone.json").symlink_to(folder / "missing.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.json").write_text("{}")
    (folder / "linked").symlink_to(elsewhere)  # a folder link is not entered,
    (folder / "1_Pooling" / "up").symlink_to(folder)  # nor a loop
    assert source.identity(folder) == before
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "cls"}')
    assert source.identity(folder) != before


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 6},
        {"long_text": "chunk", "max_length": 6},
        {"layer": 3},
        {"pooling": "max"},
        {"precision": "bfloat16"},
    ],
)
def test_what_changes_a_row_is_a_cache_miss(tiny_text_model, change, request):
    """max_length, the long-text policy, layer, pooling and numerics are in
    the key: each change runs the network again."""
    if "precision" in change:  # (a CPU without bf16 would run float32)
        request.getfixturevalue("bf16_cpu")
    cache = EmbeddingCache()
    base = {"layer": 2, "max_length": 8}
    texts = ["the cat sat on the mat and the dog sat on the cat", "a good film"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (TruncationWarning, PrecisionFallbackWarning))
        assert _runs(make(tiny_text_model, cache=cache, **base), texts)[0] > 0
        assert _runs(make(tiny_text_model, cache=cache, **base), texts)[0] == 0
        runs, _ = _runs(make(tiny_text_model, cache=cache, **{**base, **change}), texts)
    assert runs > 0


# -- long texts ------------------------------------------------------------------


def test_truncation_warns_once_with_the_count(tiny_text_model):
    """Texts longer than max_length are cut, and one warning counts them."""
    texts = ["the cat sat on the mat " * 3, "a good movie", "the dog " * 10]
    extractor = make(tiny_text_model, layer=1, max_length=8)
    with pytest.warns(TruncationWarning, match="2 of 3 texts are longer") as record:
        rows = extractor.fit_transform(texts)
    assert len([w for w in record if w.category is TruncationWarning]) == 1
    assert_same_rows(rows, hand_pooled(tiny_text_model, texts, 1, "mean", 8))


def test_chunk_pools_overlapping_windows_into_one_row(tiny_text_model):
    """long_text='chunk': no warning; a long text is the mean over the
    tokens of its overlapping windows; a short one is unchanged."""
    long_text = " ".join(["the cat sat on the mat", "i loved it"] * 4)
    texts = [long_text, "a good movie"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        rows = make(
            tiny_text_model, layer=2, max_length=10, long_text="chunk"
        ).fit_transform(texts)
    model = transformers.AutoModel.from_pretrained(tiny_text_model).eval()
    windows = overlapping_windows(tiny_text_model, long_text, max_length=10)
    assert len(windows) > 2
    total, count = 0, 0
    for ids in windows:
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True)
        total = total + hidden.hidden_states[2][0].sum(0)
        count += len(ids)
    assert_same_rows(rows[0], (total / count).numpy())
    assert_same_rows(rows[1], hand_pooled(tiny_text_model, ["a good movie"], 2, "mean"))


def test_max_length_above_the_model_is_refused(tiny_text_model):
    """max_length beyond the model's positions: a ValueError naming its limit."""
    with pytest.raises(ValueError, match="more than this model takes \\(64 tokens\\)"):
        make(tiny_text_model, max_length=65).fit(TEXTS)


# -- bad input and parameters ----------------------------------------------------


def test_missing_text_follows_on_error(tiny_text_model):
    """None raises naming the row, or gives a NaN row recorded in errors_."""
    X = ["the cat", None, "a dog"]
    extractor = make(tiny_text_model, layer=1)
    with pytest.raises(TextInputError, match="Row 1 has no text"):
        extractor.fit(X)
    extractor.set_params(on_error="nan").fit(X)
    with pytest.warns(MissingTextsWarning, match="1 of 3 texts are missing"):
        rows = extractor.transform(X)
    assert np.isnan(rows[1]).all() and not np.isnan(rows[[0, 2]]).any()
    assert [e.index for e in extractor.errors_] == [1]
    assert_same_rows(rows[[0, 2]], extractor.transform(["the cat", "a dog"]))
    assert extractor.errors_ == []


def test_non_string_is_a_type_error_naming_the_row(tiny_text_model):
    """A number among texts: a TypeError naming its row and type."""
    with pytest.raises(TypeError, match="Row 2 is not a text: got int"):
        make(tiny_text_model).fit(["a", "b", 3])


def test_empty_string_is_a_valid_text(tiny_text_model):
    """'' is embedded (its special tokens), not refused."""
    rows = make(tiny_text_model, layer=1).fit_transform(["", "a"])
    assert np.isfinite(rows).all()
    assert_same_rows(rows[:1], hand_pooled(tiny_text_model, [""], 1, "mean"))


@pytest.mark.parametrize("layer", [5, -6, "layer3", 1.0, True, [1, 9]])
def test_bad_layer_raises_layer_error(tiny_text_model, layer):
    """A layer out of range or of a wrong type: a LayerError giving the range."""
    with pytest.raises((LayerError, ValueError), match="layer"):
        make(tiny_text_model, layer=layer).fit(TEXTS)


# -- precision, offline, pickles -------------------------------------------------


def test_bf16_is_refused_on_a_cpu_without_bf16(tiny_text_model, monkeypatch):
    """A CPU without bf16 instructions: a warning, and float32 runs."""
    from sktransfer import _text_extractor

    monkeypatch.setattr(_text_extractor, "cpu_kernels", lambda: "generic")
    extractor = make(tiny_text_model, precision="bfloat16", device="cpu")
    with pytest.warns(PrecisionFallbackWarning, match="no bf16 instructions"):
        extractor.fit(TEXTS)
    assert extractor.precision_ == "float32"


def test_bf16_runs_where_the_cpu_has_it(tiny_text_model, monkeypatch):
    """Where it runs, bfloat16 stays close to float32 (a few percent)."""
    from sktransfer import _text_extractor

    monkeypatch.setattr(_text_extractor, "cpu_kernels", lambda: "avx512bf16")
    extractor = make(tiny_text_model, precision="bfloat16", device="cpu", layer=2)
    rows = extractor.fit_transform(TEXTS)
    assert extractor.precision_ == "bfloat16"
    assert_same_rows(rows, make(tiny_text_model, layer=2).fit_transform(TEXTS), 0.05)


def test_offline_miss_fails_fast_naming_the_cache_folder(tmp_path, monkeypatch):
    """A hub id missing from the cache, offline: WeightsUnavailableError
    within seconds, naming the cache folder and the local-folder fix."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    extractor = PretrainedTextExtractor(model="someone/not-cached", verbose=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        extractor.fit(TEXTS)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert str(tmp_path / "hub") in message and "model='path/to/folder'" in message


def test_hub_id_resolves_from_the_local_cache_offline(
    tiny_text_model, tmp_path, monkeypatch
):
    """A hub id whose snapshot is in the hub cache loads offline and gives
    the rows of the same folder passed as a path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-bert"
    shutil.copytree(tiny_text_model, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    rows = make("someone/tiny-bert", layer=1).fit_transform(TEXTS)
    np.testing.assert_array_equal(
        rows, make(tiny_text_model, layer=1).fit_transform(TEXTS)
    )


def test_missing_local_folder_says_so(tmp_path):
    """A path that is no folder: FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make(tmp_path / "nowhere").fit(TEXTS)


def test_pickle_is_light_and_checks_the_files(tiny_text_model, tmp_path):
    """A pickle holds the folder and the digest, not the tensors; unpickled
    it gives the same rows, and refuses a folder whose files changed."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_text_model, folder)
    extractor = make(folder, layer=2).fit(TEXTS)
    rows = extractor.transform(TEXTS)
    data = pickle.dumps(extractor)
    assert len(data) < 20_000
    assert_same_rows(pickle.loads(data).transform(TEXTS), rows)
    make_tiny_text_model(folder, seed=1)  # other weights in the same folder
    with pytest.raises(ValueError, match="differ from those this extractor"):
        pickle.loads(data).transform(TEXTS)


# -- sharing and Dask ------------------------------------------------------------


def test_save_and_load_without_pickle(tiny_text_model, tmp_path):
    """sktransfer.save / load: a pipeline with a text extractor comes back
    with the same outputs, its model checked by digest."""
    sktransfer = pytest.importorskip("sktransfer")
    pytest.importorskip("skops")
    y = np.array([0, 1, 0, 1, 0, 1])
    pipe = make_pipeline(make(tiny_text_model, layer=2), LogisticRegression())
    pipe.fit(TEXTS, y)
    sktransfer.save(pipe, tmp_path / "model")
    loaded = sktransfer.load(tmp_path / "model")
    np.testing.assert_allclose(
        loaded.predict_proba(TEXTS), pipe.predict_proba(TEXTS), atol=1e-6
    )


def test_dask_series_and_bag_of_texts(tiny_text_model):
    """A Dask Series or bag of texts: a lazy array of the same rows."""
    dd = pytest.importorskip("dask.dataframe")
    db = pytest.importorskip("dask.bag")
    extractor = make(tiny_text_model, layer=1).fit(TEXTS)
    expected = extractor.transform(TEXTS)
    series = dd.from_pandas(pd.Series(TEXTS), npartitions=3)
    lazy = extractor.transform(series)
    assert lazy.shape[1] == extractor.n_features_out_
    assert_same_rows(lazy.compute(), expected)
    bag = db.from_sequence(TEXTS, npartitions=2)
    assert_same_rows(extractor.transform(bag).compute(), expected)
    fitted = make(tiny_text_model, layer=1).fit(series)
    assert_same_rows(fitted.transform(TEXTS), expected)


def test_verbose_shows_a_progress_bar(tiny_text_model, capsys, monkeypatch):
    """verbose=True: a progress bar of the texts on stderr (a terminal);
    False: none."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    make(tiny_text_model, verbose=True).fit_transform(TEXTS)
    assert "Embedding texts" in capsys.readouterr().err
    make(tiny_text_model, verbose=False).fit_transform(TEXTS)
    assert "Embedding texts" not in capsys.readouterr().err


def test_chunk_needs_room_for_overlapping_windows(tiny_text_model):
    """long_text='chunk' with a max_length that holds no overlap: a
    ValueError naming the fix."""
    with pytest.raises(ValueError, match="too short to split long texts"):
        make(tiny_text_model, max_length=3, long_text="chunk").fit(TEXTS)
    make(tiny_text_model, max_length=3).fit_transform(["a"])  # truncating is fine


def test_truncation_is_counted_alike_from_the_cache(tiny_text_model):
    """A transform served by the cache counts truncated texts as the first."""
    texts = ["the cat sat on the mat " * 3, "a good movie"]
    extractor = make(tiny_text_model, max_length=8, cache=EmbeddingCache()).fit(texts)
    for _ in range(2):
        with pytest.warns(TruncationWarning, match="1 of 2 texts"):
            extractor.transform(texts)


# -- batching ----------------------------------------------------------------------


def _tokens_run(lengths, ends, overhead):
    """Tokens a plan runs (each batch pads to its first, longest, window)
    plus ``overhead`` per batch."""
    starts = [0, *ends[:-1]]
    return sum(
        lengths[s] * (e - s) + overhead for s, e in zip(starts, ends, strict=True)
    )


def _every_plan(n, most):
    """Every way to cut n windows into contiguous batches of at most most."""
    if n == 0:
        yield []
        return
    for first in range(1, min(most, n) + 1):
        for rest in _every_plan(n - first, most):
            yield [first, *(first + e for e in rest)]


@pytest.mark.parametrize("seed", range(20))
def test_batches_run_the_fewest_padded_tokens(seed):
    """The plan of batches is the cheapest of all plans: no plan of batches
    of at most ``most`` windows runs fewer padded tokens plus overhead."""
    from sktransfer._text.encode import batch_ends

    rng = np.random.default_rng(seed)
    n, most, overhead = int(rng.integers(1, 11)), int(rng.integers(1, 5)), 8
    lengths = sorted(rng.integers(1, 40, n).tolist(), reverse=True)
    ends = batch_ends(lengths, most, overhead)
    assert ends[-1] == n and ends == sorted(set(ends))
    assert max(e - s for s, e in zip([0, *ends[:-1]], ends, strict=True)) <= most
    best = min(_tokens_run(lengths, p, overhead) for p in _every_plan(n, most))
    assert _tokens_run(lengths, ends, overhead) == best


def test_batches_part_where_lengths_drop():
    """A few long texts among many short ones run apart: they no longer pad
    the short ones to their length; equal lengths fill whole batches."""
    from sktransfer._text.encode import batch_ends

    assert batch_ends([200, 200] + [10] * 30, 32, 64) == [2, 32]
    ends = batch_ends([10] * 70, 32, 64)
    assert len(ends) == 3 and ends[-1] == 70


def test_an_out_of_memory_batch_is_split_and_the_rows_stay_equal(
    tiny_text_model, monkeypatch
):
    """A forward pass that runs out of memory is retried in halves, each
    text still runs once, and the rows equal those of one pass."""
    import sktransfer._text.encode as encode_module

    texts = [f"text number {i}" for i in range(10, 34)]  # (of one length)
    expected = make(tiny_text_model, batch_size=32).fit(texts).transform(texts)
    forward = encode_module._forward
    sizes = []

    def forward_out_of_memory_above_5(encoder, input_ids, *args):
        sizes.append(len(input_ids))
        if len(input_ids) > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(encoder, input_ids, *args)

    monkeypatch.setattr(encode_module, "_forward", forward_out_of_memory_above_5)
    extractor = make(tiny_text_model, batch_size=32).fit(texts)
    with counting_images() as count:
        rows = extractor.transform(texts)
    assert count.images == len(texts)
    assert sizes[:4] == [24, 12, 6, 3]  # (halved until it fitted)
    assert max(sizes[4:]) <= 3
    assert_same_rows(rows, expected)


def test_a_cached_transform_hashes_each_text_once(tiny_text_model, monkeypatch):
    """Served by the cache, a transform computes one digest per text (for
    its rows and for the truncation count alike)."""
    import sktransfer._text.inputs as inputs_module

    texts = [f"text {i}" for i in range(20)]
    extractor = make(tiny_text_model, cache=EmbeddingCache()).fit(texts)
    extractor.transform(texts)
    hashed = []
    digest = inputs_module.text_digest

    def counted(text):
        hashed.append(text)
        return digest(text)

    import sktransfer._text.encode as encode_module

    monkeypatch.setattr(inputs_module, "text_digest", counted)
    monkeypatch.setattr(encode_module, "text_digest", counted)
    extractor.transform(texts)
    assert sorted(hashed) == sorted(texts)


@pytest.mark.parametrize("padding", [0.0, float("inf"), float("nan")])
def test_max_pooling_ignores_the_padding_whatever_it_holds(padding):
    """Max pooling takes the real tokens only, even where a padding
    position holds inf or NaN (a float16 overflow), in float32 whatever
    torch's default dtype, with the gradient on the real tokens' maxima
    only."""
    from sktransfer._text.encode import pool

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    hidden[~mask] = padding
    hidden.requires_grad_(True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        maxima = pool(hidden, mask, "max")
    finally:
        torch.set_default_dtype(default)
    expected = [hidden[i, : int(n)].amax(0) for i, n in enumerate(mask.sum(1))]
    assert maxima.dtype == torch.float32
    torch.testing.assert_close(maxima, torch.stack(expected))
    maxima.sum().backward()
    assert hidden.grad[~mask].abs().sum() == 0
    assert hidden.grad[mask].sum() == 3 * 4  # one maximum per row and feature


def test_chunk_max_pools_over_every_window_of_a_text(tiny_text_model):
    """long_text='chunk', pooling='max': a long text's row is the maximum
    over the tokens of all its windows, which share batches."""
    long_text = " ".join(["the cat sat on the mat", "i loved it"] * 4)
    rows = make(
        tiny_text_model, layer=2, pooling="max", max_length=10, long_text="chunk"
    ).fit_transform([long_text, "a good movie"])
    model = transformers.AutoModel.from_pretrained(tiny_text_model).eval()
    windows = overlapping_windows(tiny_text_model, long_text, max_length=10)
    with torch.no_grad():
        maxima = [
            model(torch.tensor([ids]), output_hidden_states=True)
            .hidden_states[2][0]
            .amax(0)
            for ids in windows
        ]
    assert_same_rows(rows[0], torch.stack(maxima).amax(0).numpy())
    assert_same_rows(rows[1], hand_pooled(tiny_text_model, ["a good movie"], 2, "max"))
