"""Every Python block of the README and the docs runs as pasted.

The blocks of one file run in order as one script (``python page.py``), as a
reader pasting them into one session or one file would: a script is the
stricter of the two, since a block that starts processes re-runs the file
in each of them. They run in an empty working folder that holds only the
data the blocks name: ``photos/`` with a ``cat`` and a ``dog`` folder of
JPEGs. Offline, with the real ImageNet MobileNetV2 in a temporary torch hub
cache (the blocks use ``weights="IMAGENET1K_V1"``); skipped where that
checkpoint is absent.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import SHARED_MINILM

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WITH_CODE = [p for p in PAGES if BLOCK.search(p.read_text(encoding="utf-8"))]


def _photos(folder: Path) -> None:
    """photos/cat and photos/dog: 8 JPEGs each, of different colours."""
    rng = np.random.default_rng(0)
    for label, colour in (("cat", (200, 120, 40)), ("dog", (40, 90, 200))):
        (folder / label).mkdir(parents=True)
        for i in range(8):
            noise = rng.integers(0, 60, (48, 64, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.jpg")


def test_the_pages_with_code_are_found():
    """The README and the docs have Python blocks to run."""
    names = {p.name for p in WITH_CODE}
    assert {"README.md", "transfer_learning.md", "images_and_files.md"} <= names


def _hf_hub_with_minilm(hub: Path, monkeypatch) -> None:
    """An offline Hugging Face hub cache in which the real all-MiniLM-L6-v2
    folder is sentence-transformers/all-MiniLM-L6-v2 (the pages' text
    blocks use the hub id, as readers will); skip where it is absent."""
    pytest.importorskip("transformers")
    if not (SHARED_MINILM / "model.safetensors").is_file():
        pytest.skip(f"the real all-MiniLM-L6-v2 folder is not at {SHARED_MINILM}")
    repo = hub / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / "shared"
    snapshot.mkdir(parents=True)
    for path in SHARED_MINILM.iterdir():
        (snapshot / path.name).symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("shared")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


#: Put before a page's blocks: a download attempt fails the script, and is
#: recorded in the file named by the environment (a block could catch it).
NO_DOWNLOADS = """\
import os, torch.hub, urllib.error
def _no_download(url, *args, **kwargs):
    with open(os.environ["SKTRANSFER_TEST_DOWNLOADS"], "a") as attempts:
        attempts.write(url + "\\n")
    raise urllib.error.URLError("offline: the docs must not download " + url)
torch.hub.download_url_to_file = _no_download
"""


def as_script(page: Path) -> str:
    """The page's blocks in order, each under a comment naming it."""
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    return NO_DOWNLOADS + "".join(
        f"\n# --- {page.name}, block {number} ---\n{code}"
        for number, code in enumerate(blocks, 1)
    )


def test_a_download_attempt_fails_the_script(tmp_path, monkeypatch):
    """The harness itself: a block that downloads fails, and is recorded."""
    attempts = tmp_path / "attempts"
    monkeypatch.setenv("SKTRANSFER_TEST_DOWNLOADS", str(attempts))
    script = tmp_path / "page.py"
    script.write_text(
        NO_DOWNLOADS + "torch.hub.download_url_to_file('https://x/y.pth', 'y')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True)
    assert done.returncode != 0
    assert attempts.read_text() == "https://x/y.pth\n"


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda p: p.name)
def test_the_code_blocks_run_as_a_script(
    page, hub_with_real_weights, tmp_path, monkeypatch
):
    """The blocks run in order as one script, with nothing else defined,
    offline (``TORCH_HOME`` holds the real MobileNetV2 only)."""
    if "PretrainedTextExtractor(" in page.read_text(encoding="utf-8"):
        _hf_hub_with_minilm(tmp_path / "hf-hub", monkeypatch)
    attempts = tmp_path / "downloads"
    monkeypatch.setenv("SKTRANSFER_TEST_DOWNLOADS", str(attempts))
    work = tmp_path / "work"
    _photos(work / "photos")
    script = work / f"{page.stem}.py"
    script.write_text(as_script(page), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, script.name], cwd=work, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{page.name} failed as a script:\n{done.stderr}"
    assert not attempts.exists(), attempts.read_text()  # nothing tried to download
