"""The `sktransfer demo` command."""

import urllib.error

import pytest
import torch

from sktransfer._cli.demo import shifted_digits, split
from sktransfer.cli import main

QUICK = ["--limit", "500", "--labels", "5", "--cv", "2", "--quiet"]
QUICK += ["--source-epochs", "1", "--scratch-epochs", "1"]


def _accuracies(out):
    """First word of each row of the table mapped to its test accuracy."""
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("raw", "resnet18", "source", "ImageNet"):
            try:
                rows[words[0]] = float(words[-1])
            except ValueError:
                rows[words[0]] = words[-1]
    return rows


def test_the_data_of_the_demo():
    X, y = shifted_digits()
    assert X.shape == (1797, 12, 12) and X.dtype.name == "uint8"
    assert (X.reshape(len(X), -1).max(1) > 0).all()  # every digit is in view
    source, train, test = split(y, 10)
    assert set(y[source]) == {0, 1, 2, 3, 4}
    assert len(train) == 50 and set(y[train]) == {5, 6, 7, 8, 9}
    assert not set(train) & set(test) and len(test) == (y >= 5).sum() - 50


def test_demo_prints_the_transfer_table_offline(capsys, tmp_path, monkeypatch):
    """Offline without weights, the demo runs the develop-then-reuse story and
    says loudly that the pretrained path is skipped."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["demo", "--size", "32", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "The pretrained path is SKIPPED" in out
    rows = _accuracies(out)
    assert rows["ImageNet"] == "weights"  # "skipped ... no weights"
    for name in ("raw", "resnet18", "source"):
        assert 0.0 <= rows[name] <= 1.0
    assert "cut points of the source model" in out


def test_demo_uses_the_imagenet_weights_at_hand(capsys, hub_with_real_weights, offline):
    """DEFAULT (IMAGENET1K_V2) is not cached and cannot be downloaded, but
    IMAGENET1K_V1 is in the cache: the demo uses it and says so."""
    assert main(["demo", "--size", "32", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "using MobileNet_V2_Weights.IMAGENET1K_V1, the ImageNet weights" in out
    assert "weights of the ImageNet model: MobileNet_V2_Weights.IMAGENET1K_V1" in out
    assert isinstance(_accuracies(out)["ImageNet"], float)
    assert "SKIPPED" not in out and "another CPU can give slightly different" in out


def test_help_describes_the_commands_and_every_option(capsys):
    """`sktransfer --help` says what the commands do; every option of
    `sktransfer demo --help` has a help text and shows its default."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo   transfer learning on scikit-learn's digits" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in (
        "--model",
        "--weights",
        "--size",
        "--labels",
        "--cv",
        "--source-epochs",
        "--scratch-epochs",
        "--batch-size",
    ):
        text = out.split(f"{option} ")[-1]
        assert "(default:" in text.split("--")[0], option


@pytest.mark.parametrize("weights", ["none", "NONE"])
def test_demo_can_skip_the_pretrained_path(capsys, weights):
    assert main(["demo", "--weights", weights, *QUICK]) == 0
    assert "skipped: --weights none" in capsys.readouterr().out


def test_demo_shows_transfer_helping(capsys, shared_weights):
    """With the real checkpoint: both kinds of transfer beat raw pixels and
    training from scratch on the few labels, by a wide margin."""
    args = ["demo", "--weights", str(shared_weights), "--quiet"]
    assert main([*args, "--source-epochs", "4", "--scratch-epochs", "10"]) == 0
    out = capsys.readouterr().out
    rows = _accuracies(out)
    assert f"weights of the ImageNet model: {shared_weights}" in out
    for transfer in ("source", "ImageNet"):
        assert rows[transfer] > rows["raw"] + 0.2, out
        assert rows[transfer] > rows["resnet18"] + 0.2, out


def test_help_imports_no_command():
    """``sktransfer --help`` (and a command's) imports none of the commands'
    modules, nor torch, numpy or scikit-learn: the package's namespace loads
    them on first use."""
    import json
    import subprocess
    import sys

    code = """
import json, sys
from sktransfer.cli import main
for argv in (["--help"], ["probe", "--help"], ["embed", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
      ("torch", "numpy", "sklearn", "PIL", "sktransfer"))))
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(run.stdout.splitlines()[-1]) == [
        "sktransfer",
        "sktransfer._cli",
        "sktransfer._cli.common",
        "sktransfer._version",
        "sktransfer.cli",
        "sktransfer.exceptions",
    ]
