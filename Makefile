# Two commands matter: `make demo` (the whole pipeline, locally) and `make test` (what CI runs).
# Both build the same virtual environment (.venv) from the pinned requirements on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
MYPY_TARGETS := layers/cancellation/python/cancellation functions/cancel/app.py functions/poll/app.py tests

.PHONY: demo test lint typecheck unit install clean

demo: $(PY_STAMP)
	$(BIN)/python -m tests.local.demo

test: lint typecheck unit

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy $(MYPY_TARGETS)

unit: $(PY_STAMP) $(NODE_STAMP)
	$(BIN)/pytest

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# AWS's own ASL language service validates the state machine offline.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
