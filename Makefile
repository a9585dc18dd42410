# Two commands for a fresh machine with python3:
#   make demo   set everything up, then run `batchmv demo`
#   make test   set everything up, then run the whole test matrix
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.batchmv-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c requirements/constraints.txt torch
	$(PIP) install -c requirements/constraints.txt -e '.[test,dask,jax,bench,scipy]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/batchmv demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules batchmv tests

clean:
	rm -rf $(VENV) build dist *.egg-info
