"""`sktransfer probe` and `sktransfer embed`, and `sktransfer.probe`."""

import json
import re
import sys
import warnings

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sktransfer
from sktransfer import PretrainedFeatureExtractor, probe
from sktransfer._probe import rank
from sktransfer.cli import main

SMALL = ["--size", "32", "--cv", "3"]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def write_folder(root, per_class=6, bad=False, sizes=(32, 40)):
    """Class folders of noisy images of one colour each (a learnable task),
    of two sizes; with ``bad``, a file that is not an image."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            side = sizes[i % len(sizes)]
            noise = rng.integers(-60, 60, (side, side, 3))
            pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    if bad:
        (root / "red" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "photos")


def _table_rows(text):
    """(rank, model, layer label, features, accuracy, std) of a printed table."""
    rows = []
    for line in text.splitlines():
        m = re.match(
            r"\s*(\d+)\s+(\S+)\s+(.+?)\s+(\d+|-)\s+([\d.]+) \+- ([\d.]+)", line
        )
        if m:
            rows.append(m.groups())
    return rows


def test_probe_command_table_json_report_and_saved_winner(
    folder, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("matplotlib")
    (folder / "red" / "broken.jpg").write_bytes(b"not an image")
    report, ranking = tmp_path / "report", tmp_path / "ranking.json"
    saved = tmp_path / "best.joblib"
    argv = ["probe", str(folder), "--models", "resnet18:none", *SMALL]
    argv += ["--json", str(ranking), "--report", str(report), "--save", str(saved)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    table = _table_rows(out)
    rows = json.loads(ranking.read_text())
    # Every stage boundary and the final embedding (layer4's pooled output is
    # the final embedding: one row for both).
    assert {row["layer"] for row in rows} == {"layer1", "layer2", "layer3", None}
    assert len(table) == len(rows) == 4
    for printed, row in zip(table, rows, strict=True):
        label = "final embedding" if row["layer"] is None else row["layer"]
        assert printed[:4] == (
            str(row["rank"]),
            "resnet18",
            label,
            str(row["n_features"]),
        )
        assert float(printed[4]) == pytest.approx(row["cv_accuracy"], abs=5e-4)
        assert float(printed[5]) == pytest.approx(row["cv_std"], abs=5e-4)
        assert row["cv_accuracy"] == pytest.approx(np.mean(row["cv_scores"]))
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    accuracies = [row["cv_accuracy"] for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert "winner: resnet18" in out
    assert "1 of 19 images could not be read" in err and "broken.jpg" not in out
    # The report: a valid PNG, and a page with the table and the code.
    with Image.open(report / "probe.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
        plot.verify()
    page = (report / "report.md").read_text()
    assert "![CV accuracy against depth](probe.png)" in page
    assert "| red | 6 |" in page and out.splitlines()[0] in page
    # The code of the report rebuilds the saved winner: same predictions.
    code = page.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code, namespace)
    X = namespace["X"]
    assert len(X) == 18 and not any(x.endswith("broken.jpg") for x in X)
    loaded = joblib.load(saved)
    np.testing.assert_array_equal(
        namespace["pipeline"].predict_proba(X), loaded.predict_proba(X)
    )
    assert loaded[0].layer == rows[0]["layer"]


def test_the_winner_is_saved_without_pickle_with_the_ranking_in_its_card(
    folder, tmp_path, capsys
):
    pytest.importorskip("skops")
    saved = tmp_path / "best"
    argv = ["probe", str(folder), "--models", "resnet18:none", *SMALL, "--quiet"]
    assert main([*argv, "--layers", "layer1", "None", "--save", str(saved)]) == 0
    table = capsys.readouterr().out.strip()
    card = (saved / "README.md").read_text()
    assert "sktransfer probe: 3-fold CV accuracy" in card and table in card
    X, _ = sktransfer.load_image_folder(folder)
    pipeline = sktransfer.load(saved)
    assert pipeline.predict(X).shape == (len(X),)
    assert pipeline[0].layer in ("layer1", None)


def test_a_missing_extra_stops_the_probe_before_any_work(folder, capsys, monkeypatch):
    from sktransfer import _probe

    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    monkeypatch.setattr(_probe, "_embed", None)  # would fail if reached
    argv = ["probe", str(folder), "--models", "resnet18:none", "--save", "best/"]
    assert main(argv) == 1
    assert "pip install -e '.[share]'" in capsys.readouterr().err


def test_each_image_goes_through_each_network_once(tmp_path):
    """All cut points of a model come from one pass; a directory cache makes
    a second probe (another process, say) run no network at all."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (18, 32, 32, 3), np.uint8)
    y = np.repeat(["a", "b", "c"], 6)
    kwargs = dict(
        models=["resnet18", "mobilenet_v2"],
        weights="none",
        cv=3,
        preprocessing={"resize_size": 32, "crop_size": 32},
        cache=tmp_path / "cache",
        verbose=False,
    )
    first = probe(X, y, **kwargs)
    assert [r["network_images"] for r in first.runs] == [18, 18]
    layers = {r["model"]: [] for r in first.runs}
    for row in first.rows:
        layers[row["model"]].append(row["layer"])
    assert len(layers["resnet18"]) == 4 and len(layers["mobilenet_v2"]) == 19
    sktransfer.clear_caches()  # only the directory remains
    second = probe(X, y, **kwargs)
    assert [r["network_images"] for r in second.runs] == [0, 0]
    assert [r["cv_scores"] for r in second.rows] == [r["cv_scores"] for r in first.rows]
    assert "cached" in second.table()


def test_int8_networks_count_their_images(tmp_path):
    """The images counted are those the probe's network embeds, int8 ones
    included: each once, none on a rerun the cache answers."""
    pytest.importorskip("onnxruntime")
    X = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), np.uint8)
    kwargs = dict(
        models=["resnet18"], weights="none", layers=[None], cv=2, precision="int8",
        preprocessing={"resize_size": 32, "crop_size": 32},
        cache=tmp_path / "cache", verbose=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a CPU without int8 instructions)
        first = probe(X, np.repeat([0, 1], 6), **kwargs)
        second = probe(X, np.repeat([0, 1], 6), **kwargs)
    # (int8 runs: the 12 images, and one through the float network whose
    # output widths fit reads, not cached as an int8 row)
    from sktransfer._runtime import int8 as _int8

    width_probe = 0 if _int8.unavailable() else 1
    assert [r["network_images"] for r in first.runs] == [12 + width_probe]
    assert [r["network_images"] for r in second.runs] == [0]


def test_every_row_is_scored_on_the_same_folds():
    """A row's fold scores are those of the plain sklearn code on the
    stratified folds seeded by random_state."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (20, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 10)
    prep = {"resize_size": 32, "crop_size": 32}
    result = probe(
        X, y, models=["resnet18"], weights=None, cv=4, preprocessing=prep,
        random_state=7, layers=["layer2", None], verbose=False,
    )  # fmt: skip
    for row in result.rows:
        features = PretrainedFeatureExtractor(
            model="resnet18", weights=None, layer=row["layer"],
            preprocessing=prep, random_state=7, verbose=False,
        ).fit_transform(X)  # fmt: skip
        folds = StratifiedKFold(4, shuffle=True, random_state=7)
        expected = cross_val_score(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            features, y, cv=folds,
        )  # fmt: skip
        np.testing.assert_allclose(row["cv_scores"], expected)


def test_rows_within_one_standard_deviation_of_the_best_are_marked():
    rows = rank(
        [
            {"cv_accuracy": 0.80, "cv_std": 0.05},
            {"cv_accuracy": 0.90, "cv_std": 0.04},
            {"cv_accuracy": 0.87, "cv_std": 0.01},
        ]
    )
    assert [r["cv_accuracy"] for r in rows] == [0.90, 0.87, 0.80]
    assert [r["close_to_best"] for r in rows] == [True, True, False]


def test_a_class_with_fewer_images_than_folds_is_an_error(folder, capsys):
    for extra in list((folder / "blue").iterdir())[2:]:
        extra.unlink()
    code = main(["probe", str(folder), "--models", "resnet18:none", *SMALL])
    assert code == 1
    err = capsys.readouterr().err
    assert "'blue' (2)" in err and "fewer images than the 3" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "resnet1"], "Did you mean 'resnet18'"),
        (["--models", "resnet18:none", "--layers", "layer9"], "Did you mean 'layer4'"),
        (["--models", "resnet18:none", "--cv", "1"], "cv must be an integer"),
    ],
)
def test_usage_errors_exit_with_2(folder, capsys, args, message):
    assert main(["probe", str(folder), "--size", "32", *args]) == 2
    assert message in capsys.readouterr().err


def test_argument_errors_exit_with_2_and_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["probe"])
    assert exit_.value.code == 2
    for command in ("probe", "embed"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"examples:\n  sktransfer {command}" in capsys.readouterr().out


def test_cut_points_for_one_model_or_all(folder, tmp_path, capsys):
    ranking = tmp_path / "ranking.json"
    argv = ["probe", str(folder), "--models", "resnet18:none", "mobilenet_v2:none"]
    argv += [*SMALL, "--quiet", "--json", str(ranking)]
    assert main([*argv, "--layers", "resnet18:layer2", "None"]) == 0
    rows = json.loads(ranking.read_text())
    assert sorted((r["model"], str(r["layer"])) for r in rows) == [
        ("mobilenet_v2", "None"),
        ("resnet18", "layer2"),
    ]
    assert main([*argv, "--layers", "resnet50:layer2"]) == 2
    assert "not probed: ['resnet50']" in capsys.readouterr().err


def test_labels_from_a_csv(folder, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    lines = ["path,label"] + [
        f"{p.parent.name}/{p.name},{'warm' if p.parent.name == 'red' else 'cold'}"
        for p in sorted(folder.glob("*/*.png"))
    ]
    labels.write_text("\n".join(lines) + "\n")
    argv = ["probe", str(folder), "--labels", str(labels), "--quiet"]
    argv += ["--models", "resnet18:none", "--json", "-", *SMALL]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --quiet: nothing but results
    rows = json.loads(out)  # --json -: stdout is the JSON alone
    assert {"model", "layer", "n_features", "cv_accuracy", "cv_std"} <= set(rows[0])
    labels.write_text("file,label\na.png,x\n")
    assert main(["probe", str(folder), "--labels", str(labels)]) == 2
    assert "lacks the column(s) path" in capsys.readouterr().err


def test_offline_models_without_weights_are_skipped_and_said_so(
    folder, capsys, hub_with_real_weights, offline
):
    """resnet18 has no weights at hand: skipped, with the reason; for
    mobilenet_v2 the ImageNet weights in the cache stand in for DEFAULT."""
    argv = ["probe", str(folder), "--models", "resnet18", "mobilenet_v2", *SMALL]
    assert main([*argv, "--layers", "None", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert "resnet18: skipped, its weights cannot be had here" in err
    assert "using MobileNet_V2_Weights.IMAGENET1K_V1" in err
    assert "Downloading" in err  # torch.hub's line, kept off stdout
    rows = json.loads(out)  # stdout: the results alone
    assert {r["model"] for r in rows} == {"mobilenet_v2"}
    assert "winner: mobilenet_v2 (MobileNet_V2_Weights.IMAGENET1K_V1)" in err
    assert main(["probe", str(folder), "--models", "resnet18", *SMALL]) == 1
    assert "No model could be probed" in capsys.readouterr().err


def test_finetuning_rows_for_the_best_model(folder, tmp_path, capsys):
    """--finetune ranks the recipe: kept layers x head, frozen, at every cut
    point, then the best of these with its last kept stages trainable."""
    ranking = tmp_path / "ranking.json"
    argv = ["probe", str(folder), "--models", "resnet18:none", *SMALL, "--quiet"]
    argv += ["--layers", "layer2", "layer3", "--finetune", "--finetune-epochs", "1"]
    assert main([*argv, "--json", str(ranking)]) == 0
    rows = json.loads(ranking.read_text())
    tuned = [r for r in rows if r["method"] == "fine-tuned"]
    assert all(len(r["cv_scores"]) == 3 for r in tuned)
    frozen = sorted(
        (r["layer"], tuple(r["hidden_layer_sizes"]))
        for r in tuned
        if r["trainable_layers"] == 0
    )
    assert frozen == [
        ("layer2", ()),
        ("layer2", (256,)),
        ("layer3", ()),
        ("layer3", (256,)),
    ]
    best = max(
        (r for r in tuned if r["trainable_layers"] == 0),
        key=lambda r: (r["cv_accuracy"], -r["cv_std"]),
    )
    trained = [r for r in tuned if r["trainable_layers"]]
    assert sorted(r["trainable_layers"] for r in trained) == [1, 2]
    assert {(r["layer"], tuple(r["hidden_layer_sizes"])) for r in trained} == {
        (best["layer"], tuple(best["hidden_layer_sizes"]))
    }
    out = capsys.readouterr().out
    assert "fine-tuned layer3 + hidden 256, 0 trainable" in out
    assert "fine-tuned layer2 + linear, 0 trainable" in out


def test_finetuning_a_shallow_cut_trains_only_the_stages_it_keeps():
    """At a cut that keeps one stage, only one kept stage can train: the
    probe tries no more (and the count comes without fitting)."""
    from sktransfer._finetune import kept_stages

    # (ResNet's stages: layer1 to layer4; the stem is not one)
    assert kept_stages("resnet18", None, "conv1", 0) == 0
    assert kept_stages("resnet18", None, "layer1", 0) == 1
    assert kept_stages("resnet18", None, "layer3", 0) == 3
    assert kept_stages("resnet18", None, None, 0) == 4
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 6)
    result = probe(
        X, y, models=["resnet18:none"], layers=["layer1"], cv=2, finetune=True,
        finetune_epochs=1, preprocessing={"resize_size": 32, "crop_size": 32},
        verbose=False,
    )  # fmt: skip
    trained = [r["trainable_layers"] for r in result.rows if r["trainable_layers"]]
    assert trained == [1]


def test_finetuning_the_frozen_recipe_runs_each_image_once_per_cut_point(
    monkeypatch,
):
    """The frozen rows of every cut point, head and fold come from one pass
    per image and cut point (the embedding cache), beside the linear
    probe's own pass."""
    from sktransfer import _probe
    from sktransfer._engine import counting_images

    monkeypatch.setattr(_probe, "FINETUNE_TRAINABLE", ())  # (frozen rows only)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 6)
    common = dict(
        models=["resnet18:none"], layers=["layer1", "layer2"], cv=2,
        preprocessing={"resize_size": 32, "crop_size": 32}, verbose=False,
    )  # fmt: skip
    with counting_images() as plain:
        probe(X, y, cache=sktransfer.EmbeddingCache(), **common)
    with counting_images() as tuned:
        result = probe(
            X, y, finetune=True, finetune_epochs=2,
            cache=sktransfer.EmbeddingCache(), **common,
        )  # fmt: skip
    tuned_rows = [r for r in result.rows if r["method"] == "fine-tuned"]
    assert len(tuned_rows) == 4  # 2 cut points x 2 heads, on 2 folds each
    assert tuned.images == plain.images + 2 * len(X)


def test_the_probe_plot_shows_the_recipe_by_kept_layers():
    """The report's plot gives the fine-tuned rows: a dashed line per head
    over the cut points, a point per trained variant."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 6)
    result = probe(
        X, y, models=["resnet18:none"], layers=["layer2", "layer3"], cv=2,
        finetune=True, finetune_epochs=1,
        preprocessing={"resize_size": 32, "crop_size": 32}, verbose=False,
    )  # fmt: skip
    ax = result.plot()
    labels = [line.get_label() for line in ax.get_lines()]
    assert "fine-tuned, linear head, kept layers frozen" in labels
    assert "fine-tuned, hidden 256 head, kept layers frozen" in labels
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert all(len(line.get_xdata()) == 2 for line in dashed)  # two cut points
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("trainable" in text for text in legend) == 2


def test_the_code_of_a_fine_tuned_winner_builds_that_classifier():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 6)
    result = probe(
        X, y, models=["resnet18:none"], layers=[None], cv=2, finetune=True,
        finetune_epochs=1, preprocessing={"resize_size": 32, "crop_size": 32},
        verbose=False,
    )  # fmt: skip
    result.rows = rank([r for r in result.rows if r["method"] == "fine-tuned"])
    namespace = {"X": X, "y": y}
    exec(result.pipeline_code("pass  # X and y are given"), namespace)
    built = namespace["pipeline"]
    assert isinstance(built, sktransfer.FineTunedClassifier)
    assert built.get_params() == result.best_pipeline().get_params()
    assert built.trainable_layers == result.best["trainable_layers"]
    assert built.predict(X).shape == (12,)  # fitted by the code


# -- sktransfer embed ---------------------------------------------------------


def _reference(paths, **params):
    extractor = PretrainedFeatureExtractor(
        model="resnet18",
        weights=None,
        random_state=0,
        preprocessing={"resize_size": 32, "crop_size": 32},
        on_error="nan",
        verbose=False,
        **params,
    )
    return extractor.fit_transform(paths)


EMBED = ["--model", "resnet18", "--weights", "none", "--size", "32", "--quiet"]


def test_embed_a_folder_to_parquet(folder, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    (folder / "red" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "emb.parquet"
    argv = ["embed", str(folder), "-o", str(out), *EMBED, "--on-error", "nan"]
    assert main([*argv, "--layer", "layer2", "None"]) == 0
    table = pq.read_table(out).to_pydict()
    paths = list(sktransfer.list_images(folder))
    assert table["path"] == paths and table["row"] == list(range(len(paths)))
    bad = paths.index(str(folder / "red" / "broken.jpg"))
    assert table["embedding"][bad] is None and "broken.jpg" in table["error"][bad]
    with pytest.warns(UserWarning, match="1 of 19 images could not be read"):
        expected = _reference(paths, layer=["layer2", None])
    good = [i for i in range(len(paths)) if i != bad]
    np.testing.assert_allclose(
        np.asarray([table["embedding"][i] for i in good]),
        expected[good],
        rtol=1e-5,
        atol=1e-5,
    )
    assert not (tmp_path / "emb.parquet.partial").exists()  # removed when done


def test_embed_a_list_to_npy(folder, tmp_path):
    paths = [str(p) for p in sorted(folder.glob("*/*.png"))][::-1]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(listing), "-o", str(out), *EMBED]) == 0
    rows, read = sktransfer.read_embeddings(out)
    np.testing.assert_allclose(rows, _reference(paths), rtol=1e-5, atol=1e-5)
    assert read == paths


def test_embed_a_list_gives_one_row_per_line(folder, tmp_path):
    """Names that look like comments or end in spaces are files of their own:
    five lines, five rows, each the embedding of its line's file."""
    source = sorted(folder.glob("*/*.png"))
    names = ["#1.png", "b.png ", "b.png", " c.png", "# d.png"]
    for name, image in zip(names, source, strict=False):
        (tmp_path / name).write_bytes(image.read_bytes())
    listing = tmp_path / "files.txt"
    listing.write_text("".join(str(tmp_path / name) + "\n" for name in names))
    out = tmp_path / "emb.parquet"
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["embed", str(listing), "-o", str(out), *EMBED]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["path"] == [str(tmp_path / name) for name in names]
    expected = _reference([str(p) for p in source[: len(names)]])
    np.testing.assert_allclose(
        np.asarray(table["embedding"]), expected, rtol=1e-5, atol=1e-5
    )


def test_embed_refuses_a_list_with_an_empty_line(folder, tmp_path, capsys):
    paths = [str(p) for p in sorted(folder.glob("*/*.png"))]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join([*paths[:2], "", *paths[2:]]) + "\n")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(listing), "-o", str(out), *EMBED]) == 1
    assert "Line 3 of the list file" in capsys.readouterr().err
    assert not out.exists()


def test_embed_to_a_bare_file_name_in_the_working_directory(
    folder, tmp_path, monkeypatch
):
    """``-o emb.npy``: its resumable cache is ./emb.npy.partial/, not a bare
    word the cache parameter would refuse."""
    monkeypatch.chdir(tmp_path)
    assert main(["embed", str(folder), "-o", "emb.npy", *EMBED]) == 0
    assert np.load(tmp_path / "emb.npy").shape[0] == len(list(folder.glob("*/*")))
    assert not (tmp_path / "emb.npy.partial").exists()


def test_embed_int8_calibrates_on_the_images(folder, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "emb.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a CPU without int8 instructions)
        assert (
            main(["embed", str(folder), "-o", str(out), *EMBED, "--precision", "int8"])
            == 0
        )
    paths = list(sktransfer.list_images(folder))
    exact = _reference(paths)
    rows = np.load(out)
    assert rows.shape == exact.shape
    differences = np.linalg.norm(rows - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.median(differences) < 0.1


def test_an_unreadable_image_stops_embed_naming_its_row(folder, tmp_path, capsys):
    listing = tmp_path / "files.txt"
    good = [str(p) for p in sorted(folder.glob("*/*.png"))]
    listing.write_text("\n".join([*good, str(tmp_path / "missing.png")]))
    out = tmp_path / "emb.npy"
    argv = ["embed", str(listing), "-o", str(out), *EMBED, "--chunk-size", "5"]
    assert main(argv) == 1
    assert (
        f"Image {len(good)} ('{tmp_path / 'missing.png'}')" in capsys.readouterr().err
    )
    assert not out.exists()


def test_an_interrupted_embed_resumes_from_its_cache(folder, tmp_path, monkeypatch):
    """Ctrl-C after two chunks: no output, the chunks done are in
    OUT.partial/; the re-run sends only the rest through the network."""
    from sktransfer._runtime.layers import FeatureNet

    out = tmp_path / "emb.npy"
    argv = ["embed", str(folder), "-o", str(out), *EMBED, "--chunk-size", "5"]
    calls = []
    forward = FeatureNet.forward

    def interrupted(self, x):
        if sum(calls) >= 10:  # two chunks done: Ctrl-C
            raise KeyboardInterrupt
        calls.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(FeatureNet, "forward", interrupted)
    assert main(argv) == 130
    assert not out.exists() and (tmp_path / "emb.npy.partial").is_dir()
    sktransfer.clear_caches()  # a new process: only the directory remains
    counted = []
    monkeypatch.setattr(
        FeatureNet,
        "forward",
        lambda self, x: counted.append(len(x)) or forward(self, x),
    )
    assert main(argv) == 0
    assert sum(counted) == 18 - 10  # the first two chunks come from the cache
    np.testing.assert_allclose(
        np.load(out),
        _reference(list(sktransfer.list_images(folder))),
        rtol=1e-5,
        atol=1e-5,
    )
    assert not (tmp_path / "emb.npy.partial").exists()


def test_parquet_without_pyarrow_says_what_to_install(
    folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(folder), "-o", str(out), *EMBED]) == 1
    assert "pip install -e '.[parquet]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet1"], "Did you mean 'resnet18'"),
        (["--layer", "layer9"], "Did you mean 'layer4'"),
    ],
)
def test_embed_usage_errors_exit_with_2(folder, tmp_path, capsys, args, message):
    out = tmp_path / "e.npy"
    assert main(["embed", str(folder), "-o", str(out), *EMBED, *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option", ["--chunk-size", "--batch-size", "--size"])
def test_sizes_must_be_positive_integers(folder, tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(folder), "-o", str(tmp_path / "e.npy"), option, "0"])
    assert exit_.value.code == 2
    assert "must be a positive integer, got '0'" in capsys.readouterr().err


def test_embed_refuses_an_unknown_output_format(folder, tmp_path, capsys):
    assert main(["embed", str(folder), "-o", str(tmp_path / "e.csv"), *EMBED]) == 1
    assert "must end with .parquet or .npy" in capsys.readouterr().err
