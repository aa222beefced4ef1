# Two commands matter: `make demo` and `make test`. Both set up .venv when it is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export TILEFUSE_CACHE_DIR ?= $(CURDIR)/.cache/tilefuse

# what the graph pictures (Graphviz's dot) and the report's browser test (Chromium) need
SYSTEM_PACKAGES := graphviz chromium fonts-dejavu-core

.PHONY: venv system-deps demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: venv
	$(BIN)/python examples/demo.py

# Installs SYSTEM_PACKAGES when dot or chromium is missing and we are root on Debian (CI);
# otherwise says what is missing, and the tests that need them skip (except on CI).
system-deps:
	@if command -v dot >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: install $(SYSTEM_PACKAGES) for the graph and browser tests"; fi

test: venv system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: venv
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf .cache build dist src/*.egg-info
