# Two commands matter: `make demo` and `make test`. Both set up .venv when it is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# make uses the cache the command line uses (TILEFUSE_CACHE_DIR, else ~/.cache/tilefuse); the
# tests make one of their own per run (tests/conftest.py)

# what the graph pictures (Graphviz's dot) and the report's browser test (Chromium) need
SYSTEM_PACKAGES := graphviz chromium fonts-dejavu-core

.PHONY: venv system-deps demo test fuzz lint bench conformance clean

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

# The fuzzers of tests/test_fuzz.py, randomized, FUZZ_SECONDS each (`make test` runs a
# derandomized one-minute slice). Failing cases: .cache/fuzz-failures/; counts: .cache/fuzz-stats.jsonl
FUZZ_SECONDS ?= 120
fuzz: venv
	TILEFUSE_FUZZ_SECONDS=$(FUZZ_SECONDS) TILEFUSE_FUZZ_STATS=$(CURDIR)/.cache/fuzz-stats.jsonl \
	  $(BIN)/python -m pytest -q -s tests/test_fuzz.py -k fuzz_

lint: venv
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	@touch $(BENCH_STAMP)

# every peer (ONNX Runtime, PyTorch eager, torch.compile, +freezing), the mixed-numpy and busy
# conditions; results in benchmarks/results/<host>.{md,json,png}
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/transformers.py

# ONNX's own backend node tests for the ops tilefuse imports: a pass/fail/unsupported table
conformance: venv
	$(BIN)/python tests/test_conformance.py

clean:
	rm -rf .cache build dist src/*.egg-info
