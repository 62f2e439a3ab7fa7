# Two commands do all the set-up on a machine with only python3:
#   make demo   creates .venv and runs the main job offline
#   make test   creates .venv and runs the test suite
# The environment is pinned by requirements/constraints.txt (torch and
# torchvision that import together); the package itself declares ranges.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED_WEIGHTS := ../shared/weights
# A folder of checkpoints at hand, each named after its model
# (mobilenet_v2_imagenet.pth): the folder beside the checkout when it has one.
# `make demo` and `make probe` pass it as SKTRANSFER_WEIGHTS: a model whose
# DEFAULT weights they need uses the checkpoint named after it, offline;
# otherwise its published weights (downloaded if online).
WEIGHTS_DIR ?= $(if $(wildcard $(SHARED_WEIGHTS)/*.pth),$(abspath $(SHARED_WEIGHTS)),)
DEMO_WEIGHTS ?= DEFAULT
# `make probe PHOTOS=photos/`: `sktransfer probe` on a folder of class folders.
PHOTOS ?=

.PHONY: venv demo probe test test-oldest lint docs clean

# torch comes first, from its CPU build's index on a machine without an NVIDIA
# GPU when that index answers (requirements/torch_index.py says which and why);
# pip shows what it installs. $(1): the venv, $(2): pip's pins for torch.
define install_torch
	@echo "== Setting up $(1) once (a few minutes; later runs reuse it)"
	$(PYTHON) -m venv $(1)
	@index=$$($(PYTHON) requirements/torch_index.py) && if [ -n "$$index" ]; then \
	  $(1)/bin/python -m pip install --extra-index-url "$$index" $(2) torch torchvision; fi
endef

$(STAMP): pyproject.toml requirements/constraints.txt
	$(call install_torch,$(VENV),-c requirements/constraints.txt)
	$(BIN)/python -m pip install -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	SKTRANSFER_WEIGHTS="$(WEIGHTS_DIR)" $(BIN)/sktransfer demo --weights "$(DEMO_WEIGHTS)"

probe: $(STAMP)
	@test -n "$(PHOTOS)" || { echo "make probe PHOTOS=DIR: a folder of class folders"; exit 2; }
	SKTRANSFER_WEIGHTS="$(WEIGHTS_DIR)" $(BIN)/sktransfer probe "$(PHOTOS)"

test: $(STAMP)
	$(BIN)/python -m pytest

# The suite on the oldest torch, torchvision, scikit-learn and numpy the
# package admits (requirements/oldest.txt), in a second environment.
OLDEST := .venv-oldest
$(OLDEST)/.installed-stamp: pyproject.toml requirements/oldest.txt
	$(call install_torch,$(OLDEST),-c requirements/oldest.txt)
	$(OLDEST)/bin/python -m pip install -r requirements/oldest.txt
	$(OLDEST)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-oldest: $(OLDEST)/.installed-stamp
	$(OLDEST)/bin/python -m pytest -p no:cacheprovider

# The documentation site: Sphinx, numpydoc and sphinx-gallery, the examples
# run at build time; warnings are errors. Output: docs/_build/html.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(BIN)/ruff check sktransfer tests benchmarks docs
	$(BIN)/ruff format --check sktransfer tests benchmarks docs
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .ruff_cache docs/_build docs/auto_examples docs/generated
