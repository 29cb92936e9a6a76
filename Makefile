# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test unit integration bench bench-caching clean

setup: $(VENV)/.installed

# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

demo: setup
	$(BIN)/raysight demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

integration: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration

bench: setup
	$(BIN)/python -m bench

bench-caching: setup
	$(BIN)/python -m bench --only caching

clean:
	rm -rf $(VENV) build *.egg-info
