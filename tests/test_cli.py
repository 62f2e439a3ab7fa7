"""The `sktransfer demo` command."""

import urllib.error

import torch

from sktransfer.cli import main


def test_demo_prints_table_and_states_weights(capsys):
    """The demo prints one row per cut point plus raw pixels, naming the weights."""
    assert main(["demo", "--weights", "none", "--size", "32", "--cv", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "weights: none: RANDOM initialisation" in out
    for row in ("features.3", "features.13", "embedding (layer=None)", "raw pixels"):
        assert row in out
    accuracy = float(out.split("raw pixels")[1].split()[1])
    assert 0.8 < accuracy <= 1.0  # logistic regression on raw digits


def test_demo_says_loudly_when_pretrained_weights_are_missing(
    capsys, tmp_path, monkeypatch
):
    """Offline without a cached file, the demo says so and labels random weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["demo", "--size", "32", "--cv", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Pretrained weights are not available" in out
    assert "weights: none: RANDOM initialisation" in out


def test_demo_with_real_weights_beats_raw_pixels(capsys, shared_weights):
    """With the real checkpoint, a mid-level cut point beats raw pixels."""
    assert main(["demo", "--weights", str(shared_weights), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: float(line.split()[-3])
        for line in out.splitlines()
        if "±" in line and "accuracy" not in line
    }
    assert f"weights: {shared_weights}" in out
    assert rows["features.13"] > rows["raw"]
