# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup browser demo test unit integration bench bench-caching clean

setup: $(VENV)/.installed

# torch first and pinned. From PyPI on Linux torch==2.13.0 is the multi-GB CUDA build (for GPU
# machines); a CPU-only machine sets TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

demo: setup
	$(BIN)/raysight demo

# Browser tests drive Debian's Chromium (never a downloaded browser build). Installing it
# needs root and Debian's package registry; without them the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make browser: could not install chromium; the browser tests will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20

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
