"""The `sktransfer demo` command."""

import urllib.error

import torch

from sktransfer.cli import main


def _scores(out):
    """First word of each table row mapped to its mean accuracy."""
    return {
        line.split()[0]: float(line.split("±")[0].split()[-1])
        for line in out.splitlines()
        if "±" in line and "accuracy" not in line
    }


def test_demo_prints_table_and_states_weights(capsys):
    """The demo prints one row per cut point plus raw pixels, naming the weights."""
    assert (
        main(
            [
                "demo",
                "--weights",
                "none",
                "--size",
                "32",
                "--cv",
                "2",
                "--limit",
                "300",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weights: none: RANDOM initialisation" in out
    for row in ("features.3", "features.13", "embedding (layer=None)", "raw pixels"):
        assert row in out
    assert 0.8 < _scores(out)["raw"] <= 1.0  # logistic regression on raw digits
    assert "computed 300 images x 6 cut points once" in out


def test_demo_says_loudly_when_pretrained_weights_are_missing(
    capsys, tmp_path, monkeypatch
):
    """Offline without a cached file, the demo says so and labels random weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["demo", "--size", "32", "--cv", "2", "--limit", "100", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Pretrained weights are not available" in out
    assert "weights: none: RANDOM initialisation" in out


def test_demo_with_real_weights_beats_raw_pixels(capsys, shared_weights):
    """With the real checkpoint, a mid-level cut point beats raw pixels."""
    assert (
        main(
            [
                "demo",
                "--weights",
                str(shared_weights),
                "--limit",
                "600",
                "--cv",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = _scores(out)
    assert f"weights: {shared_weights}" in out
    assert rows["features.13"] > rows["raw"]
