"""The text probe: language models x layers x poolings, word vectors and a
tf-idf baseline on the same folds; a tie rule that keeps the default
embedding where the folds cannot tell rows apart; the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sktransfer
from sktransfer import TruncationWarning
from sktransfer._text_probe import beats, choose, is_texts
from sktransfer.cli import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    """The tiny random BERT, with a tokenizer that knows its words."""
    from .conftest import make_tiny_text_model

    return make_tiny_text_model(
        tmp_path_factory.mktemp("probe") / "tiny-bert", words=True
    )


NOISE = ["the", "a", "cat", "dog", "sat", "on", "mat", "is", "was", "plot"]


def labelled(n=30, seed=0, noise_words=4):
    """Texts whose last word (good/bad) is the label, after noise words."""
    rng = np.random.default_rng(seed)
    y = np.array(["pos", "neg"] * (n // 2))
    texts = [
        " ".join([*rng.choice(NOISE, noise_words), "good" if t == "pos" else "bad"])
        for t in y
    ]
    return texts, y


def test_probe_of_texts_ranks_models_layers_and_a_tfidf_baseline(tiny_text_model):
    texts, y = labelled()
    result = sktransfer.probe(
        texts, y, models=[str(tiny_text_model)], layers=[1, -1], verbose=False
    )
    assert isinstance(result, sktransfer.TextProbeResult)
    keys = {(r["kind"], r["layer"], r["pooling"]) for r in result.rows}
    assert ("baseline", None, None) in keys
    assert ("language model", None, None) in keys  # the default embedding
    for pooling in ("mean", "cls", "max"):  # every pooling, layers 1 and 4
        assert {("language model", 1, pooling), ("language model", 4, pooling)} <= keys
    assert len(result.rows) == 1 + 2 * 3 + 1
    accuracies = [r["cv_accuracy"] for r in result.rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert sum(r["winner"] for r in result.rows) == 1
    assert "tf-idf + logistic regression" in result.table()
    assert json.loads(result.to_json())[0]["rank"] == 1
    pipeline = result.best_pipeline().fit(texts, y)
    assert set(pipeline.predict(texts[:4])) <= {"pos", "neg"}
    code = result.pipeline_code()
    assert "pipeline.fit(X, y)" in code


def test_one_pass_serves_every_layer_and_pooling(tiny_text_model):
    """Each text goes through the network once, whatever the rows."""
    from sktransfer._text_extractor import PretrainedTextExtractor

    texts, y = labelled(seed=3)
    calls = []
    original = PretrainedTextExtractor._compute

    def counting(self, batch, indices):
        calls.append(len(indices))
        return original(self, batch, indices)

    PretrainedTextExtractor._compute = counting
    try:
        sktransfer.probe_texts(
            texts, y, models=[str(tiny_text_model)], cache=None, verbose=False
        )
    finally:
        PretrainedTextExtractor._compute = original
    assert sum(calls) == len(set(texts))


def test_beats_is_a_paired_test_of_the_fold_differences():
    assert beats([0.9] * 5, [0.5] * 5, 0.05) == (True, 0.0)
    assert beats([0.5] * 5, [0.5] * 5, 0.05) == (False, 1.0)
    noisy, p = beats([0.9, 0.4, 0.8, 0.5, 0.7], [0.5, 0.8, 0.6, 0.7, 0.6], 0.05)
    assert not noisy and 0.05 < p < 1
    clear, p = beats([0.9, 0.95, 0.85, 0.9, 0.92], [0.6, 0.62, 0.58, 0.61, 0.6], 0.05)
    assert clear and p < 0.001


def _rows(scores_by_name, default):
    rows = [
        {"model": name, "default": name == default, "cv_scores": list(s),
         "cv_accuracy": float(np.mean(s))}
        for name, s in scores_by_name.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: -r["cv_accuracy"])


def test_tie_rule_keeps_the_default_where_the_folds_cannot_tell():
    rows = _rows(
        {"default": [0.7, 0.6, 0.8, 0.7, 0.65], "lucky": [0.8, 0.6, 0.9, 0.7, 0.75]},
        "default",
    )
    assert rows[0]["model"] == "lucky"  # the top of the ranking...
    winner, why = choose(rows)
    assert winner["model"] == "default" and why["kept_default"]  # ...is not chosen


def test_tie_rule_picks_a_clearly_better_row():
    rows = _rows(
        {
            "default": [0.6, 0.55, 0.62, 0.58, 0.6],
            "better": [0.9, 0.88, 0.93, 0.9, 0.91],
            "noisy best": [1.0, 0.4, 1.0, 1.0, 1.0],
        },
        "default",
    )
    winner, why = choose(rows)
    assert winner["model"] == "better" and not why["kept_default"]
    assert why["level"] == pytest.approx(0.05 / 2)  # Bonferroni over 2 rows


def test_random_labels_keep_the_default(tiny_text_model):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(NOISE, 6)) for _ in range(40)]
    y = rng.permutation(np.repeat([0, 1], 20))
    result = sktransfer.probe_texts(texts, y, models=[str(tiny_text_model)],
                                    verbose=False)  # fmt: skip
    assert result.best["default"]
    if result.decision["kept_default"]:
        assert "the folds cannot tell them apart" in result.table()


def test_tfidf_baseline_wins_plainly_when_the_model_is_blind(tiny_text_model):
    """The label word lies past max_length: the language model cannot see
    it, tf-idf can; the baseline clearly beats the default and wins."""
    texts, y = labelled(n=40, noise_words=12)
    with pytest.warns(TruncationWarning):
        result = sktransfer.probe_texts(
            texts, y, models=[str(tiny_text_model)], layers=[1],
            poolings=["mean"], max_length=6, verbose=False,
        )  # fmt: skip
    assert result.best["kind"] == "baseline"
    assert result.best["cv_accuracy"] == 1.0
    assert "The tf-idf + logistic regression baseline wins" in result.table()
    pipeline = result.best_pipeline().fit(texts, y)
    assert (pipeline.predict(texts) == y).all()


def test_word_vectors_are_a_row(tiny_text_model, tmp_path):
    rng = np.random.default_rng(0)
    words = [*NOISE, "good", "bad"]
    lines = [f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=8)) for w in words]
    vectors = tmp_path / "tiny-glove.txt"
    vectors.write_text("\n".join(lines) + "\n")
    texts, y = labelled()
    result = sktransfer.probe_texts(
        texts, y, models=[str(tiny_text_model)], word_vectors=[str(vectors)],
        layers=[1], poolings=["mean"], verbose=False,
    )  # fmt: skip
    row = next(r for r in result.rows if r["kind"] == "word vectors")
    assert row["model"] == str(vectors) and row["n_features"] == 8
    # a vectors file among the models is word vectors too
    again = sktransfer.probe_texts(texts, y, models=[str(vectors)], verbose=False)
    assert {r["kind"] for r in again.rows} == {"word vectors", "baseline"}
    assert again.best["kind"] in ("word vectors", "baseline")
    again.best_pipeline().fit(texts, y)


def test_image_paths_are_not_texts(tmp_path):
    assert is_texts(["a cat", "a dog"])
    assert is_texts(pd.Series(["a cat", "a dog"]))
    assert not is_texts(["photos/cat.jpg", "photos/dog.png"])
    (tmp_path / "cat").write_bytes(b"")
    assert not is_texts([str(tmp_path / "cat")])
    assert not is_texts(np.zeros((2, 8, 8, 3)))


def test_image_only_parameters_are_refused_for_texts(tiny_text_model):
    texts, y = labelled()
    with pytest.raises(sktransfer.ProbeUsageError, match="finetune"):
        sktransfer.probe(texts, y, models=[str(tiny_text_model)], finetune=True)


def test_missing_text_names_its_row(tiny_text_model):
    texts, y = labelled()
    texts[3] = None
    with pytest.raises(sktransfer.TextInputError, match="Row 3"):
        sktransfer.probe_texts(texts, y, models=[str(tiny_text_model)])


# -- the command line ------------------------------------------------------------
def _cli(table, model, *extra):
    return main(
        ["probe", str(table), "--text-column", "review", "--label-column", "stars",
         "--models", str(model), "--layers", "1", "--poolings", "mean", "--quiet",
         *extra]
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_cli_probes_a_table_of_texts(tiny_text_model, tmp_path, capsys, suffix):
    texts, y = labelled()
    frame = pd.DataFrame({"id": range(len(y)), "review": texts, "stars": y})
    table = tmp_path / f"reviews{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(table)
    else:
        frame.to_csv(table, sep="\t" if suffix == ".tsv" else ",", index=False)
    out = tmp_path / "ranking.json"
    assert _cli(table, tiny_text_model, "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "tf-idf + logistic regression" in printed and "winner:" in printed
    rows = json.loads(out.read_text())
    assert {r["kind"] for r in rows} == {"language model", "baseline"}
    assert len(rows) == 3


def test_cli_report_and_saved_winner(tiny_text_model, tmp_path):
    pytest.importorskip("matplotlib")
    texts, y = labelled()
    table = tmp_path / "t.csv"
    pd.DataFrame({"review": texts, "stars": y}).to_csv(table, index=False)
    saved = tmp_path / "winner.joblib"
    report = tmp_path / "report"
    assert _cli(table, tiny_text_model, "--report", str(report), "--save",
                str(saved)) == 0  # fmt: skip
    assert (report / "probe.png").is_file()
    assert json.loads((report / "probe.json").read_text())[0]["rank"] == 1
    text = (report / "report.md").read_text()
    assert "pd.read_csv" in text and "tf-idf" in text
    n_pos = sum(label == "pos" for label in y)
    assert f"| pos | {n_pos} |" in text and "![CV accuracy against depth]" in text
    import joblib

    assert set(joblib.load(saved).predict(texts[:2])) <= {"pos", "neg"}


@pytest.mark.parametrize(
    "frame, columns, message",
    [
        ({"review": ["a"] * 6, "stars": ["x", "y"] * 3}, ("text", "stars"),
         "no column 'text'"),
        ({"review": ["a"] * 6, "stars": ["x", None] * 3}, ("review", "stars"),
         "3 rows of column 'stars' have no label"),
        ({"review": [1, 2, 3, 4, 5, 6], "stars": ["x", "y"] * 3},
         ("review", "stars"), "Row 0 of column 'review' is not a text"),
    ],
)  # fmt: skip
def test_cli_bad_tables_name_the_column(tmp_path, capsys, frame, columns, message):
    table = tmp_path / "t.parquet"
    pd.DataFrame(frame).to_parquet(table)
    code = main(["probe", str(table), "--text-column", columns[0],
                 "--label-column", columns[1]])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_table_needs_both_columns(tmp_path, capsys):
    table = tmp_path / "t.csv"
    pd.DataFrame({"review": ["a", "b"], "stars": ["x", "y"]}).to_csv(table)
    assert main(["probe", str(table), "--text-column", "review"]) == 2
    assert "--label-column" in capsys.readouterr().err


# -- sktransfer embed, for texts -------------------------------------------------
def test_cli_embeds_a_text_file_in_order(tiny_text_model, tmp_path):
    from sktransfer import read_embeddings
    from sktransfer._text_extractor import PretrainedTextExtractor

    texts = ["the cat sat", "", "a good movie , really", "the cat sat", "i loved it"]
    source = tmp_path / "texts.txt"
    source.write_bytes(("\n".join(texts) + "\n").encode())
    out = tmp_path / "emb.npy"
    code = main(["embed", str(source), "--texts", "-o", str(out), "--model",
                 str(tiny_text_model), "--layer", "2", "--quiet"])  # fmt: skip
    assert code == 0
    rows, listed = read_embeddings(out)
    assert listed == texts  # every line a row, the empty one too, in order
    expected = PretrainedTextExtractor(
        model=str(tiny_text_model), layer=[2], cache=None, verbose=False
    ).fit_transform(texts)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


def test_cli_embeds_a_column_to_parquet(tiny_text_model, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    texts, y = labelled(n=6)
    table = tmp_path / "t.csv"
    pd.DataFrame({"review": texts, "stars": y}).to_csv(table, index=False)
    out = tmp_path / "emb.parquet"
    code = main(["embed", str(table), "--text-column", "review", "-o", str(out),
                 "--model", str(tiny_text_model), "--quiet"])  # fmt: skip
    assert code == 0
    written = pq.read_table(out).to_pandas()
    assert written["text"].tolist() == texts
    assert written["row"].tolist() == list(range(6))
    assert len(written["embedding"][0]) == 32


def test_cli_embed_of_texts_refuses_image_options(tiny_text_model, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("a\nb\n")
    code = main(["embed", str(source), "--texts", "-o", str(tmp_path / "e.npy"),
                 "--pooling", "avg"])  # fmt: skip
    assert code == 2
    assert "--pooling for texts" in capsys.readouterr().err
    source.write_bytes(b"ok\n\xff\xfe bad\n")
    code = main(["embed", str(source), "--texts", "-o", str(tmp_path / "e.npy")])
    assert code == 2
    assert "Line 2" in capsys.readouterr().err
