"""The probe's first minutes and its scale: where its weights come from,
the classes it reads, its cost on many classes."""

import json

import numpy as np
import pytest
import torch
import torchvision

import sktransfer
from sktransfer import PretrainedFeatureExtractor, probe
from sktransfer._common import progress, progress_label
from sktransfer._probe import ProbeUsageError
from sktransfer._sources.checkpoints import checkpoint_for, weights_folders
from sktransfer.cli import main
from sktransfer.exceptions import ProbeWarning

from .test_probe import SMALL, write_folder

TINY = "shufflenet_v2_x0_5"  # (a 5 MB checkpoint)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "photos")


@pytest.fixture
def weights_dir(tmp_path):
    """A folder holding a checkpoint of TINY, named after it."""
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.manual_seed(0)
    state = torchvision.models.get_model(TINY).state_dict()
    torch.save(state, folder / f"{TINY}_mine.pth")
    return folder


def test_a_checkpoint_is_found_by_the_model_it_is_named_after(tmp_path):
    """<model>.pth or <model>_<tag>.pth, unless a longer model name claims it."""
    for name in ("resnet50_ours.pth", "wide_resnet50_2.pth", "resnet18x.pth"):
        (tmp_path / name).write_bytes(b"")
    names = ["resnet18", "resnet50", "wide_resnet50_2"]
    assert checkpoint_for("resnet50", [tmp_path], names).name == "resnet50_ours.pth"
    assert checkpoint_for("resnet18", [tmp_path], names) is None
    found = checkpoint_for("wide_resnet50_2", [tmp_path], names)
    assert found.name == "wide_resnet50_2.pth"
    (tmp_path / "resnet50_2.pth").write_bytes(b"")
    claims = [*names, "resnet50_2"]  # a longer architecture name claims it
    assert checkpoint_for("resnet50", [tmp_path], claims).name == "resnet50_ours.pth"


def test_weights_folders_from_the_environment(tmp_path, monkeypatch):
    """SKTRANSFER_WEIGHTS lists folders; a folder given must exist."""
    monkeypatch.setenv("SKTRANSFER_WEIGHTS", f"{tmp_path}:{tmp_path / 'absent'}")
    assert weights_folders() == [tmp_path]
    with pytest.raises(FileNotFoundError, match="weights folder .*absent"):
        weights_folders(tmp_path / "absent")


def test_offline_the_probe_ranks_the_model_whose_checkpoint_is_at_hand(
    folder, weights_dir, capsys, offline, monkeypatch
):
    """Offline, with --weights-dir (or SKTRANSFER_WEIGHTS): the model with a
    checkpoint there is probed with it, the others skipped; exit 0."""
    argv = ["probe", str(folder), "--models", "resnet18", TINY, *SMALL]
    argv += ["--layers", "None", "--json", "-"]
    assert main([*argv, "--weights-dir", str(weights_dir)]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert {r["model"] for r in rows} == {TINY}
    assert rows[0]["weights"] == str(weights_dir / f"{TINY}_mine.pth")
    assert f"{TINY}: using the checkpoint" in err
    assert "resnet18: skipped" in err
    monkeypatch.setenv("SKTRANSFER_WEIGHTS", str(weights_dir))
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert [(r["weights"], r["cv_scores"]) for r in again] == [
        (r["weights"], r["cv_scores"]) for r in rows
    ]
    monkeypatch.delenv("SKTRANSFER_WEIGHTS")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"--models {TINY}:/path/to/{TINY}.pth" in err and "--weights-dir" in err


def test_one_checkpoint_for_several_models_applies_to_the_one_it_fits(
    folder, weights_dir, capsys
):
    """--weights FILE with several models: the others are skipped, named; a
    checkpoint that fits none, or the one model named, is an error naming it."""
    path = str(weights_dir / f"{TINY}_mine.pth")
    argv = ["probe", str(folder), *SMALL, "--layers", "None", "--weights", path]
    assert main([*argv, "--models", "resnet18", TINY, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert {r["model"] for r in json.loads(out)} == {TINY}
    assert "resnet18: skipped, the checkpoint given does not fit it" in err
    assert main([*argv, "--models", "resnet18", "squeezenet1_1"]) == 1
    assert "fits none of the models ['resnet18', 'squeezenet1_1']" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--models", "resnet18"]) == 1
    assert "(given for 'resnet18') does not match" in capsys.readouterr().err


def test_a_checkpoint_by_path_gets_the_preprocessing_it_gets_by_name(tmp_path):
    """The file torch.hub names for IMAGENET1K_V1, given by path: that
    weights' preprocessing (not DEFAULT's, IMAGENET1K_V2's)."""
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    by_path = PretrainedFeatureExtractor(model="mobilenet_v2", weights=str(path))
    by_path.fit(np.zeros((1, 8, 8, 3), np.uint8))
    v1 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    assert by_path.preprocessing_.resize_size == v1.resize_size[0] == 256
    other = tmp_path / "mobilenet_v2_other.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), other)
    by_other = PretrainedFeatureExtractor(model="mobilenet_v2", weights=str(other))
    by_other.fit(np.zeros((1, 8, 8, 3), np.uint8))
    assert by_other.preprocessing_.resize_size == 232  # DEFAULT's


def test_split_folders_are_named_as_such_and_the_classes_printed(tmp_path, capsys):
    """A dataset root (train/, val/) is probed with a note; the classes and
    their counts come first."""
    root = tmp_path / "dataset"
    write_folder(root / "train")
    write_folder(root / "val")
    argv = ["probe", str(root / "train"), "--models", "resnet18:none", *SMALL]
    assert main([*argv, "--layers", "None"]) == 0
    err = capsys.readouterr().err
    assert "blue 6, green 6, red 6" in err and "splits" not in err
    argv[1] = str(root)
    assert main([*argv, "--layers", "None"]) == 0
    err = capsys.readouterr().err
    assert "train 18, val 18" in err
    assert "note: the class(es) 'train', 'val' look like a dataset's splits" in err
    X = np.zeros((6, 8, 8, 3), np.uint8)
    with (
        pytest.warns(ProbeWarning, match="'Train', 'test' look like"),
        pytest.raises(ValueError, match="fewer images than"),
    ):
        probe(X, ["Train"] * 3 + ["test"] * 3, models=["resnet18"], cv=5)


def test_a_labels_file_with_rows_missing_their_label_names_them(
    folder, tmp_path, capsys
):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nred/0.png,red\nred/1.png,\nblue/0.png\n")
    assert main(["probe", str(folder), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "2 row(s) without a path or a label (line(s) 3, 4)" in err


def test_cache_none_from_the_shell(folder, tmp_path, capsys):
    argv = ["probe", str(folder), "--models", "resnet18:none", *SMALL]
    assert main([*argv, "--layers", "None", "--cache", "none", "--quiet"]) == 0
    assert "final embedding" in capsys.readouterr().out


def test_the_linear_probes_are_bounded_and_a_dataset_beyond_them_refused(
    monkeypatch,
):
    """Past the budget the iterations are bounded, and said so; below
    MIN_ITER the dataset is refused, before any probe is fitted."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    y = np.repeat([0, 1], 6)
    notes = []
    kwargs = dict(models=["resnet18"], weights=None, cv=3, layers=[None])
    kwargs.update(preprocessing={"resize_size": 32, "crop_size": 32}, verbose=False)
    # one iteration of the probes: 4 * (3 folds * 8 images) * 2 classes * 512
    monkeypatch.setattr("sktransfer._probe.PROBE_BUDGET", 4 * 24 * 2 * 512 * 30)
    result = probe(X, y, log=notes.append, **kwargs)
    assert len(result.rows) == 1
    assert any("bounded to 30 iterations (of 1000)" in n for n in notes)
    monkeypatch.setattr("sktransfer._probe.PROBE_BUDGET", 4 * 24 * 2 * 512 * 19)
    with pytest.raises(ProbeUsageError, match="beyond what a linear probe can"):
        probe(X, y, log=notes.append, **kwargs)


def test_progress_bars_name_what_they_count():
    """Within a probe's model, its bars start with the model's name."""
    with (
        progress_label("resnet50"),
        progress(total=1, desc="Extracting", unit="img", verbose=True) as bar,
    ):
        assert bar.desc.startswith("resnet50: Extracting")
    with progress(total=1, desc="Extracting", unit="img", verbose=True) as bar:
        assert bar.desc.startswith("Extracting")


def test_embed_refuses_a_csv_saying_what_it_takes(folder, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nred/0.png,red\n")
    assert main(["embed", str(labels), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "is a CSV file; embed takes a folder, or a text file of image paths" in err


def test_the_plot_names_the_cut_points(folder):
    """One model: its layers on the x-axis; several: each point named."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    X, y = sktransfer.load_image_folder(folder)
    kwargs = dict(weights=None, cv=3, verbose=False, layers=["layer3", None])
    kwargs["preprocessing"] = {"resize_size": 32, "crop_size": 32}
    ax = probe(X, y, models=["resnet18"], **kwargs).plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "layer3",
        "final embedding",
    ]
    result = probe(X, y, models=["resnet18", "resnet34"], **kwargs)
    assert sorted(t.get_text() for t in result.plot().texts) == [
        "final embedding",
        "final embedding",
        "layer3",
        "layer3",
    ]
