"""Sphinx configuration of sktransfer's documentation site.

Build it with ``make docs`` (offline: the gallery's examples use the real
ImageNet MobileNetV2 checkpoint beside the checkout when there is one,
through a temporary torch hub cache; elsewhere torchvision downloads it).
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import sktransfer  # noqa: E402

project = "sktransfer"
author = "The sktransfer developers"
copyright = "2026, The sktransfer developers"
version = release = sktransfer.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "examples/*",
]
templates_path = ["_templates"]

autosummary_generate = True
# Our own methods; sklearn's inherited ones (score, the set_*_request
# methods of metadata routing) are documented by sklearn.
autodoc_default_options = {
    "members": True,
    "exclude-members": "score, set_fit_request, set_predict_request, "
    "set_predict_proba_request, set_score_request, set_transform_request, "
    "set_output, get_metadata_routing",
}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

intersphinx_mapping = {}  # offline: no inventories are fetched

html_theme = "pydata_sphinx_theme"
html_title = f"sktransfer {version}"
html_theme_options = {"navigation_with_keys": False}

# The gallery's examples run offline on the real ImageNet checkpoint when it
# lies beside the checkout (copied where torchvision's weights API looks).
_SHARED = HERE.parents[1] / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
if _SHARED.is_file() and "SKTRANSFER_DOCS_TORCH_HOME" not in os.environ:
    _home = Path(tempfile.mkdtemp(prefix="sktransfer-docs-torch-"))
    atexit.register(shutil.rmtree, _home, True)
    (_home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(_SHARED, _home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    os.environ["TORCH_HOME"] = str(_home)
    os.environ["SKTRANSFER_DOCS_TORCH_HOME"] = str(_home)

# The text examples: the real all-MiniLM-L6-v2 folder beside the checkout, as
# sentence-transformers/all-MiniLM-L6-v2 in an offline Hugging Face hub cache.
_MINILM = HERE.parents[1] / "shared" / "weights" / "text" / "all-MiniLM-L6-v2"
if _MINILM.is_dir() and "SKTRANSFER_DOCS_HF_HUB" not in os.environ:
    _hub = Path(tempfile.mkdtemp(prefix="sktransfer-docs-hf-"))
    atexit.register(shutil.rmtree, _hub, True)
    _repo = _hub / "models--sentence-transformers--all-MiniLM-L6-v2"
    (_repo / "snapshots" / "shared").mkdir(parents=True)
    for _path in _MINILM.iterdir():
        (_repo / "snapshots" / "shared" / _path.name).symlink_to(_path)
    (_repo / "refs").mkdir()
    (_repo / "refs" / "main").write_text("shared")
    os.environ["HF_HUB_CACHE"] = str(_hub)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["SKTRANSFER_DOCS_HF_HUB"] = str(_hub)

sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}
