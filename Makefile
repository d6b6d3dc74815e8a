# Two commands matter: `make demo` (the whole pipeline, locally) and `make test` (what CI runs).
# Both build the same virtual environment (.venv) from the pinned requirements on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
CHECKOV_STAMP := $(VENV)/checkov/.installed
MYPY_TARGETS := layers/cancellation/python/cancellation functions/cancel/app.py functions/poll/app.py tests

.PHONY: demo test lint typecheck unit install clean soak bench

demo: $(PY_STAMP)
	$(BIN)/python -m tests.local.demo

# Evidence that nothing is lost and nothing is reversed twice (tests/local/soak.py): SOAK_N orders
# (default 2000, about 8 minutes here) with duplicates, QFPay faults, in-progress loops and crashes.
# CI: `make soak SOAK_N=300`. The last three lines are lost / double_reversals / contradictions.
# SOAK_STRICT_FAULTS / SOAK_STRICT_RULES=all adds the strict fault kinds and judge rules (docs/soak.md).
soak: $(PY_STAMP)
	$(BIN)/python -m tests.local.soak

# Cold start, batch concurrency, poll-loop cost and memory, as ratios measured side by side
# (tests/benchmarks/bench.py; a few minutes). CI: `make bench BENCH_QUICK=1` (under 2 minutes,
# asserts no times). The last three lines are cold_import_ratio / batch10_ratio /
# poll_transitions_ratio_120s.
bench: $(PY_STAMP)
	BENCH_QUICK=$(BENCH_QUICK) $(BIN)/python -m tests.benchmarks.bench

test: lint typecheck unit

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy $(MYPY_TARGETS)

unit: $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)
	$(BIN)/pytest

install: $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

$(PY_STAMP): requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# checkov pins boto3 and friends below our pins, so it gets an environment of its own.
$(CHECKOV_STAMP): requirements-checkov.txt $(PY_STAMP)
	$(PYTHON) -m venv --clear $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# AWS's own ASL language service validates the state machine offline.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
