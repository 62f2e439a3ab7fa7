# Two commands do all the set-up on a machine with only python3:
#   make demo   creates .venv and runs the main job offline
#   make test   creates .venv and runs the test suite
# The environment is pinned by requirements/constraints.txt (torch and
# torchvision that import together); the package itself declares ranges.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED_WEIGHTS := ../shared/weights/mobilenet_v2_imagenet.pth
# The demo uses the real ImageNet checkpoint beside the checkout when there is
# one, otherwise the model's published default weights (downloaded if online).
DEMO_WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),DEFAULT)

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sktransfer demo --weights "$(DEMO_WEIGHTS)"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check sktransfer tests benchmarks
	$(BIN)/ruff format --check sktransfer tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
