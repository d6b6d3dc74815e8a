# Two commands matter: `make demo` (the whole pipeline, locally) and `make test` (what CI runs).
# Both build the same virtual environment (.venv) from the pinned requirements on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
CHECKOV_STAMP := $(VENV)/checkov/.installed
CLI_STAMP := $(VENV)/.cli-installed
SAM_STAMP := $(VENV)/sam/.installed
# The Lambda runtime's Python (template.yaml: python3.13) compiles the layer and runs the built
# functions in the artifact tests and `make bench`: python3.13 on PATH, else pyenv's 3.13.x.
RUNTIME_PYTHON ?= $(shell for p in python3.13 $(HOME)/.pyenv/versions/3.13*/bin/python3.13; do \
	"$$p" -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
# What the runtime provides (python3.13 + the AWS SDK, layers/cancellation/lambda-runtime.txt).
LAMBDA_RUNTIME := $(VENV)/lambda-runtime
RUNTIME_STAMP := $(LAMBDA_RUNTIME)/.installed
# `sam build`'s output: the template, each function and the layer, as `sam deploy` uploads them.
BUILD_STAMP := .aws-sam/build/template.yaml
BUILD_SOURCES := template.yaml $(wildcard layers/cancellation/Makefile layers/cancellation/requirements.txt \
	layers/cancellation/python/cancellation/*.py functions/*/*.py)
MYPY_TARGETS := layers/cancellation/python/cancellation functions/cancel/app.py functions/poll/app.py functions/reconcile/app.py functions/deadletter/app.py tests

.PHONY: demo test lint typecheck unit integration e2e template local install clean soak bench build burst

demo: $(PY_STAMP)
	$(BIN)/python -m tests.local.demo

# Evidence that nothing is lost and nothing is reversed twice (tests/local/soak.py): SOAK_N orders
# (default 2000; docs/reliability.md has a run's figures) with duplicates, QFPay faults, in-progress loops and crashes.
# CI: `make soak SOAK_N=300`. The last three lines are lost / double_reversals / contradictions.
# SOAK_STRICT_FAULTS / SOAK_STRICT_RULES=all adds the strict fault kinds and judge rules (docs/soak.md).
soak: $(PY_STAMP)
	$(BIN)/python -m tests.local.soak

# Cold start (of the built artifact), batch concurrency, poll-loop cost and memory, as ratios
# measured side by side (tests/local/bench.py; a few minutes). CI: `make bench BENCH_QUICK=1`
# (about half as long, asserts no times). The last three lines are cold_import_ratio / batch10_ratio /
# poll_transitions_ratio_120s.
bench: $(PY_STAMP) build
	BENCH_QUICK=$(BENCH_QUICK) LAMBDA_RUNTIME_PYTHON=$(LAMBDA_RUNTIME)/bin/python $(BIN)/python -m tests.local.bench

# What `sam deploy` would upload, built by the real `sam build` (.aws-sam/build; the layer by
# layers/cancellation/Makefile), and the runtime-like environment the artifact tests import it in.
build: $(BUILD_STAMP) $(RUNTIME_STAMP)

$(BUILD_STAMP): $(BUILD_SOURCES) $(SAM_STAMP)
	@test -n "$(RUNTIME_PYTHON)" || { echo "Python 3.13 (the template's runtime) is needed to build:" \
		"put python3.13 on PATH, or 'pyenv install 3.13.0', or pass RUNTIME_PYTHON=/path/to/python3.13" >&2; exit 1; }
	PATH="$(dir $(RUNTIME_PYTHON)):$$PATH" RUNTIME_PYTHON="$(RUNTIME_PYTHON)" SAM_CLI_TELEMETRY=0 \
		$(VENV)/sam/bin/sam build --template-file template.yaml
	touch $@

# A burst of BURST_N orders (default 2000) of BURST_MERCHANTS merchants (default 1) at once against
# QFPay's rate limits, with QFPay's windows and our time settings scaled by BURST_WINDOW_SCALE
# (default 1: QFPay's own; CI: 0.2); BURST_OUTAGE=1 takes QFPay down for a scaled 30 minutes (tests/local/burst.py).
# Writes burst.png. The last three lines are drain_ratio / dlq / qfpay_429.
burst: $(PY_STAMP)
	$(BIN)/python -m tests.local.burst

# One target per test level (tests/<level>/); `make test` is all of them, as CI runs it.
test: lint typecheck unit integration e2e template local

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy $(MYPY_TARGETS)

# The layer's logic alone: fast, nothing to build, no AWS.
unit: $(PY_STAMP)
	$(BIN)/pytest tests/unit

# Each function's handler with moto and the QFPay stand-in over real HTTP.
integration: $(PY_STAMP)
	$(BIN)/pytest tests/integration

# The whole local pipeline: SQS delivery, the real state machine, the operators' CLI.
e2e: $(PY_STAMP) $(NODE_STAMP) $(CLI_STAMP)
	$(BIN)/pytest tests/e2e

# What deploys: template.yaml SAM-transformed, linted and scanned, and the `make build` artifact.
template: $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) build
	$(BIN)/pytest tests/template

# The local world's own tests (QFPay stand-in, local AWS, soak judge, bench arithmetic).
local: $(PY_STAMP)
	$(BIN)/pytest tests/local

install: $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) $(SAM_STAMP) $(RUNTIME_STAMP) $(CLI_STAMP)

$(PY_STAMP): requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The operators' CLI (pyproject.toml [project.scripts]): the project installed in place, so the
# console script runs the layer's package as it is in the tree (built with the pinned setuptools).
$(CLI_STAMP): pyproject.toml $(PY_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# checkov pins boto3 and friends below our pins, so it gets an environment of its own.
$(CHECKOV_STAMP): requirements-checkov.txt $(PY_STAMP)
	$(PYTHON) -m venv --clear $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# aws-sam-cli pins its own boto3 and click too: an environment of its own.
$(SAM_STAMP): requirements-sam.txt $(PY_STAMP)
	$(PYTHON) -m venv --clear $(VENV)/sam
	$(VENV)/sam/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

# Python 3.13 with only what Lambda's python3.13 runtime has besides the standard library.
$(RUNTIME_STAMP): layers/cancellation/lambda-runtime.txt
	@test -n "$(RUNTIME_PYTHON)" || { echo "Python 3.13 (the template's runtime) is needed:" \
		"put python3.13 on PATH, or 'pyenv install 3.13.0', or pass RUNTIME_PYTHON=/path/to/python3.13" >&2; exit 1; }
	$(RUNTIME_PYTHON) -m venv --clear --without-pip $(LAMBDA_RUNTIME)
	$(RUNTIME_PYTHON) -m pip --python $(LAMBDA_RUNTIME)/bin/python install --quiet --disable-pip-version-check \
		-r layers/cancellation/lambda-runtime.txt
	touch $@

# AWS's own ASL language service validates the state machine offline.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) .aws-sam node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
