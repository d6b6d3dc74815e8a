"""What a cold start of each function loads: only what every invocation uses (`make bench` times it).

Each handler is imported in a fresh interpreter with the template's variables, as Lambda would:
the source tree in the development venv, and `make build`'s artifact in Python 3.13 with only the
runtime's SDK (what deploys, and what `make bench` times).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local.bench import (
    BUILT_CODE,
    BUILT_LAYER,
    CANCEL_CODE,
    DEFAULT_RUNTIME_PYTHON,
    LAYER_PYTHON,
    lambda_like_environment,
)

POLL_CODE = CANCEL_CODE.parent / "poll"
# (code folder, layer's python/, interpreter) of `make build`'s artifact, in the runtime-like
# Python 3.13 that `make build` creates.
BUILT = {name: (BUILT_CODE[name], BUILT_LAYER, DEFAULT_RUNTIME_PYTHON) for name in ("cancel", "poll")}
# Loaded by something on a rare path or by nothing we use; each costs every cold start.
NOT_AT_START = (
    "aws_xray_sdk",  # only with CallTracing=Enabled
    "wrapt",
    "asyncio",
    # Powertools: its package loads Logger, Metrics and the tracing package together (~10 ms of
    # CPU per start); our logs.py and emf.py write the same lines. Its Tracer is imported only with
    # call tracing on.
    "aws_lambda_powertools",
    "typing_extensions",  # Powertools' and nothing else's at start
    "requests",
    "cancellation.cli",  # the operators' command line
    "cancellation.reconciliation",  # the reconcile function's
    "cancellation.models",  # types for mypy only: its TypedDicts cost ~1.5 ms to create
)
LOADED = """
import json, os, sys
sys.path[:0] = [os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]]
import app
print(json.dumps(sorted(sys.modules)))
"""
# What a start loads on top of the runtime's `import boto3` (whose cost is the ratio's denominator).
ADDED_TO_BOTO3 = """
import json, os, sys
sys.path[:0] = [os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]]
import boto3
before = set(sys.modules)
import app
print(json.dumps(sorted(set(sys.modules) - before)))
"""
# All it may add: our package and the entry point. Anything else is a new cost on every cold
# start: measure it (`make bench`) and name it here with the reason.
ALLOWED_ON_TOP_OF_BOTO3 = ("cancellation", "app")
# What the first invocation adds by reading QFPay's secret (Secrets Manager's answer stands in).
LOADED_BY_THE_FIRST_SECRET_READ = """
import json, os, sys
sys.path[:0] = [os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]]
import app
from cancellation.aws import QFPayCredentials
before = set(sys.modules)

class SecretsManager:
    def get_secret_value(self, SecretId):
        return {"SecretString": json.dumps({"app_code": "A" * 32, "client_key": "K" * 32})}

assert QFPayCredentials("qfpay", 300, SecretsManager)().app_code == "A" * 32
print(json.dumps(sorted(set(sys.modules) - before)))
"""
# Our classes created at start that are dataclasses: creating one runs its generated methods
# through exec (~0.5 ms, frozen ~0.8 ms, each in Python 3.13 here), against ~0.1 ms for a
# NamedTuple and next to nothing for a plain class.
DATACLASSES_AT_START = """
import dataclasses, json, os, sys
sys.path[:0] = [os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]]
import app
ours = [m for name, m in list(sys.modules.items()) if name == "app" or name.startswith("cancellation")]
print(json.dumps(sorted(
    f"{module.__name__}.{name}"
    for module in ours
    for name, value in vars(module).items()
    if isinstance(value, type) and value.__module__ == module.__name__ and dataclasses.is_dataclass(value)
)))
"""


def at_start(code_dir: Path, script: str, **overrides: str) -> list[str]:
    """What ``script`` prints (a JSON list) after importing the handler in a fresh interpreter."""
    return run_at_start((code_dir, LAYER_PYTHON, Path(sys.executable)), script, **overrides)


def run_at_start(where: tuple[Path, Path, Path], script: str, **overrides: str) -> list[str]:
    code_dir, layer_dir, python = where
    if not python.is_file() or not code_dir.is_dir():
        pytest.fail(f"no {code_dir} or {python}: run `make build` (`make test` does) first")
    env = {**lambda_like_environment(code_dir, layer_dir), "PYTHONDONTWRITEBYTECODE": "1", **overrides}
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [str(python), "-c", script], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names: list[str] = json.loads(done.stdout)
    return names


def loaded_modules(code_dir: Path, **overrides: str) -> set[str]:
    return set(at_start(code_dir, LOADED, **overrides))


@pytest.mark.parametrize("code_dir", [CANCEL_CODE, POLL_CODE], ids=["cancel", "poll"])
def test_a_cold_start_as_deployed_loads_nothing_a_rare_path_or_nobody_needs(code_dir: Path) -> None:
    modules = loaded_modules(code_dir)
    assert "cancellation.qfpay" in modules  # the handler really was imported
    assert sorted(name for name in NOT_AT_START if name in modules) == []


@pytest.mark.parametrize("code_dir", [CANCEL_CODE, POLL_CODE], ids=["cancel", "poll"])
def test_a_cold_start_creates_none_of_our_classes_as_a_dataclass(code_dir: Path) -> None:
    assert at_start(code_dir, DATACLASSES_AT_START) == []


@pytest.mark.parametrize("function", sorted(BUILT))
def test_the_built_artifact_in_python_313_starts_as_the_source_tree_does(function: str) -> None:
    """What deploys: the same guards, on `make build`'s output in the runtime's Python."""
    modules = set(run_at_start(BUILT[function], LOADED))
    assert "cancellation.qfpay" in modules
    assert "boto3" in modules
    assert sorted(name for name in NOT_AT_START if name in modules) == []
    assert run_at_start(BUILT[function], DATACLASSES_AT_START) == []


@pytest.mark.parametrize("function", sorted(BUILT))
def test_a_start_adds_to_boto3_only_our_package(function: str) -> None:
    added = run_at_start(BUILT[function], ADDED_TO_BOTO3)
    assert "cancellation.qfpay" in added
    assert [name for name in added if name.split(".")[0] not in ALLOWED_ON_TOP_OF_BOTO3] == []


@pytest.mark.parametrize("function", sorted(BUILT))
def test_reading_the_secret_at_the_first_invocation_imports_no_powertools_either(function: str) -> None:
    """Moving Powertools from the start to the first invocation would not make a cold start shorter."""
    added = run_at_start(BUILT[function], LOADED_BY_THE_FIRST_SECRET_READ)
    powertools = ("aws_lambda_powertools", "typing_extensions")
    assert [name for name in added if name.split(".")[0] in powertools] == []


def test_the_cancel_function_imports_boto3_at_start() -> None:
    """Every cancel invocation writes its orders' records: deferring boto3 to the first invocation
    would not make a cold start shorter, only move its largest import out of what `make bench`
    compares with ``import boto3``."""
    assert "boto3" in loaded_modules(CANCEL_CODE)


def test_call_tracing_on_loads_the_xray_sdk_and_patches_the_clients() -> None:
    modules = loaded_modules(CANCEL_CODE, POWERTOOLS_TRACE_DISABLED="false")
    assert {
        "aws_xray_sdk.core",
        "aws_xray_sdk.ext.botocore.patch",
        "aws_xray_sdk.ext.httplib.patch",
    } <= modules
