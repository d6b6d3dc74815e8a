"""What a cold start of each function loads: only what every invocation uses (`make bench` times it).

Each handler is imported in a fresh interpreter with the template's variables, as Lambda would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local.bench import CANCEL_CODE, LAYER_PYTHON, lambda_like_environment

POLL_CODE = CANCEL_CODE.parent / "poll"
# Loaded by something on a rare path or by nothing we use; each costs every cold start.
NOT_AT_START = (
    "aws_xray_sdk",  # only with CallTracing=Enabled
    "wrapt",
    "asyncio",
    "aws_lambda_powertools.utilities.data_classes",  # Powertools' batch utility loads them all
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.idempotency",  # the decision ledger does that work
    "requests",
)
LOADED = """
import json, os, sys
sys.path[:0] = [os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]]
import app
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(code_dir: Path, **overrides: str) -> set[str]:
    env = {**lambda_like_environment(code_dir, LAYER_PYTHON), **overrides}
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", LOADED], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("code_dir", [CANCEL_CODE, POLL_CODE], ids=["cancel", "poll"])
def test_a_cold_start_as_deployed_loads_nothing_a_rare_path_or_nobody_needs(code_dir: Path) -> None:
    modules = loaded_modules(code_dir)
    assert "cancellation.qfpay" in modules  # the handler really was imported
    assert sorted(name for name in NOT_AT_START if name in modules) == []


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
