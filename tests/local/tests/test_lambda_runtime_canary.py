"""Canary: moto must run our handlers in-process, for lambda.invoke and Step Functions alike.

The hook patches a private moto method (``LambdaSimpleBackend.invoke``). If a moto upgrade
renames it or stops routing invocations through it, these tests fail instead of the
end-to-end tests silently exercising moto's echo.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.awslambda.utils import get_backend
from moto.awslambda_simple.models import LambdaSimpleBackend

from tests.conftest import wait_for
from tests.local import lambda_runtime
from tests.local.moto_server import LocalAws
from tests.local.tests.far_end import FarEnd

HANDLER = """
import json
import os
from pathlib import Path

LOADED_WITH = os.environ.get("CANARY_GREETING")  # read at import: env applied before it
CALLS = []


def lambda_handler(event, context):
    if event.get("explode"):
        raise KeyError("the canary exploded")
    CALLS.append(context.aws_request_id)
    Path(os.environ["CANARY_SIDE_EFFECT"]).write_text(json.dumps(event))
    return {
        "doubled": event.get("n", 0) * 2,
        "greeting": LOADED_WITH,
        "calls_in_this_sandbox": len(CALLS),
        "context": {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
    }
"""


@pytest.fixture
def aws(local_aws: LocalAws) -> LocalAws:
    """conftest's session moto server, reset before and after each test."""
    return local_aws


def write_function(directory: Path, source: str = HANDLER) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def canary(aws: LocalAws, tmp_path: Path) -> dict[str, Any]:
    side_effect = tmp_path / "side-effect.json"
    arn = aws.create_function(
        "canary",
        write_function(tmp_path / "canary"),
        "app.lambda_handler",
        {"CANARY_GREETING": "hello", "CANARY_SIDE_EFFECT": str(side_effect)},
        timeout=7,
        memory_size=192,
    )
    return {"arn": arn, "side_effect": side_effect}


def invoke(name: str, payload: dict[str, Any]) -> tuple[str | None, Any]:
    response = boto3.client("lambda").invoke(FunctionName=name, Payload=json.dumps(payload))
    return response.get("FunctionError"), json.loads(response["Payload"].read())


def wait_for_execution(execution_arn: str, timeout: float = 20) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        execution: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] != "RUNNING":
            return execution
        if time.monotonic() > deadline:
            pytest.fail(f"execution still running after {timeout} s")
        time.sleep(0.05)


def test_the_patch_target_exists_and_is_patched(aws: LocalAws) -> None:
    cls, attr = lambda_runtime.PATCH_TARGET
    assert cls is LambdaSimpleBackend
    assert attr == "invoke"
    assert attr in vars(LambdaSimpleBackend), "moto no longer defines LambdaSimpleBackend.invoke"
    assert lambda_runtime.is_installed()
    assert vars(LambdaSimpleBackend)["invoke"] is lambda_runtime._hooked_invoke
    # moto's Lambda API must be served by the Docker-free backend (the one we patch).
    assert isinstance(get_backend(aws.account_id, aws.region), LambdaSimpleBackend)


def test_install_is_idempotent_and_uninstall_restores(aws: LocalAws) -> None:
    lambda_runtime.install()
    lambda_runtime.install()
    assert lambda_runtime.is_installed()
    lambda_runtime.uninstall()
    try:
        assert not lambda_runtime.is_installed()
        assert vars(LambdaSimpleBackend)["invoke"] is not lambda_runtime._hooked_invoke
    finally:
        lambda_runtime.install()
    assert lambda_runtime.is_installed()


def test_lambda_invoke_runs_the_registered_handler(canary: dict[str, Any], aws: LocalAws) -> None:
    error, result = invoke("canary", {"n": 21})

    assert error is None
    assert result["doubled"] == 42  # computed by the handler, not moto's echo of the payload
    assert result["greeting"] == "hello"
    assert json.loads(canary["side_effect"].read_text()) == {"n": 21}
    context = result["context"]
    assert context["function_name"] == "canary"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == canary["arn"]
    assert context["memory_limit_in_mb"] == "192"
    assert context["log_group_name"] == "/aws/lambda/canary"
    assert context["log_stream_name"]
    assert 0 < context["remaining_ms"] <= 7000

    [recorded] = lambda_runtime.invocations("canary")
    assert recorded.payload == {"n": 21}
    assert recorded.error is None
    assert recorded.cold_start
    assert recorded.request_id == context["aws_request_id"]


def test_one_cold_start_per_function_and_a_request_id_per_invocation(
    canary: dict[str, Any],
) -> None:
    results = [invoke("canary", {"n": n})[1] for n in range(3)]

    assert [r["calls_in_this_sandbox"] for r in results] == [1, 2, 3]
    assert len({r["context"]["aws_request_id"] for r in results}) == 3
    assert [i.cold_start for i in lambda_runtime.invocations("canary")] == [True, False, False]


def test_invoking_by_arn_resolves_the_function(canary: dict[str, Any]) -> None:
    error, result = invoke(canary["arn"], {"n": 1})

    assert error is None
    assert result["doubled"] == 2
    assert result["context"]["invoked_function_arn"] == canary["arn"]


def test_a_handler_exception_is_an_unhandled_function_error(canary: dict[str, Any]) -> None:
    error, result = invoke("canary", {"explode": True})

    assert error == "Unhandled"
    assert result["errorType"] == "KeyError"
    assert "the canary exploded" in result["errorMessage"]
    assert any("lambda_handler" in line for line in result["stackTrace"])
    assert not any("lambda_runtime.py" in line for line in result["stackTrace"])
    assert lambda_runtime.invocations("canary")[-1].error == "KeyError"


def test_two_functions_with_the_same_module_name_stay_apart(aws: LocalAws, tmp_path: Path) -> None:
    for name in ("first", "second"):
        source = f"def lambda_handler(event, context):\n    return {name!r}\n"
        aws.create_function(name, write_function(tmp_path / name, source), "app.lambda_handler")

    assert invoke("first", {}) == (None, "first")
    assert invoke("second", {}) == (None, "second")


def test_an_unregistered_function_keeps_motos_behaviour(aws: LocalAws, tmp_path: Path) -> None:
    aws.create_function("echo", write_function(tmp_path / "echo"), "app.lambda_handler")
    lambda_runtime.unregister_all()

    assert invoke("echo", {"n": 5}) == (None, {"n": 5})  # moto's echo
    assert lambda_runtime.invocations() == []


def test_an_import_error_is_reported_as_the_runtime_does(aws: LocalAws, tmp_path: Path) -> None:
    source = "import module_that_does_not_exist\n"
    aws.create_function("broken", write_function(tmp_path / "broken", source), "app.lambda_handler")

    error, result = invoke("broken", {})

    assert error == "Unhandled"
    assert result["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'app'" in result["errorMessage"]


@pytest.mark.parametrize("resource", ["lambda:invoke", "function-arn"])
def test_a_state_machine_task_runs_the_handler(canary: dict[str, Any], aws: LocalAws, resource: str) -> None:
    if resource == "lambda:invoke":
        task = {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": canary["arn"], "Payload.$": "$"},
            "OutputPath": "$.Payload",
            "End": True,
        }
    else:
        task = {"Type": "Task", "Resource": canary["arn"], "End": True}
    definition = {"StartAt": "Double", "States": {"Double": task}}
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"canary-{resource.replace(':', '-')}",
        definition=json.dumps(definition),
        roleArn=f"arn:aws:iam::{aws.account_id}:role/canary-states",
    )["stateMachineArn"]

    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"n": 8}))
    finished = wait_for_execution(execution["executionArn"])

    assert finished["status"] == "SUCCEEDED", finished
    output = json.loads(finished["output"])
    assert output["doubled"] == 16
    assert output["context"]["function_name"] == "canary"
    assert json.loads(canary["side_effect"].read_text()) == {"n": 8}
    assert len(lambda_runtime.invocations("canary")) == 1


def test_a_handler_exception_fails_the_state_machine_task(canary: dict[str, Any], aws: LocalAws) -> None:
    definition = {
        "StartAt": "Double",
        "States": {"Double": {"Type": "Task", "Resource": canary["arn"], "End": True}},
    }
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="canary-fails",
        definition=json.dumps(definition),
        roleArn=f"arn:aws:iam::{aws.account_id}:role/canary-states",
    )["stateMachineArn"]

    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"explode": 1}))
    finished = wait_for_execution(execution["executionArn"])

    assert finished["status"] == "FAILED"
    assert finished["error"] == "KeyError"


def test_concurrent_invocations_run_in_separate_sandboxes(aws: LocalAws, tmp_path: Path) -> None:
    """Like Lambda: one sandbox never runs two invocations at once; idle sandboxes are reused."""
    source = """
    import time
    time.sleep(0.2)  # a slow import
    IMPORTS = [1]

    def lambda_handler(event, context):
        time.sleep(0.1)
        return {"n": event["n"], "imports": len(IMPORTS), "id": context.aws_request_id}
    """
    aws.create_function("busy", write_function(tmp_path / "busy", source), "app.lambda_handler")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: invoke("busy", {"n": n}), range(8)))

    assert [error for error, _ in results] == [None] * 8
    assert sorted(r["n"] for _, r in results) == list(range(8))
    assert len({r["id"] for _, r in results}) == 8
    recorded = lambda_runtime.invocations("busy")
    assert len(recorded) == 8
    cold_starts = sum(i.cold_start for i in recorded)
    assert 1 < cold_starts <= 8  # concurrent calls needed more than one sandbox
    assert all(r["imports"] == 1 for _, r in results)  # each sandbox imported its module once
    # Sequential calls afterwards reuse the idle sandboxes: no new cold start.
    for n in range(3):
        invoke("busy", {"n": n})
    assert sum(i.cold_start for i in lambda_runtime.invocations("busy")) == cold_starts


def test_a_handler_running_past_its_timeout_is_reported_as_timed_out(aws: LocalAws, tmp_path: Path) -> None:
    source = """
    import time

    def lambda_handler(event, context):
        time.sleep(event["sleep"])
        return "finished"
    """
    aws.create_function("slow", write_function(tmp_path / "slow", source), "app.lambda_handler", timeout=1)

    error, result = invoke("slow", {"sleep": 1.1})
    assert error == "Unhandled"
    assert result["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in result["errorMessage"]

    assert invoke("slow", {"sleep": 0}) == (None, "finished")
    assert [i.cold_start for i in lambda_runtime.invocations("slow")] == [True, True]


LATE_HANDLER = """
import os
import time
from pathlib import Path

import urllib3

POOL = urllib3.PoolManager()


def lambda_handler(event, context):
    time.sleep(event["sleep"])
    try:
        POOL.request("GET", os.environ["TARGET"] + event["path"], timeout=10, retries=False)
        what_happened = "answered"
    except BaseException as exc:
        what_happened = type(exc).__name__
        raise
    finally:
        Path(os.environ["MARKER"]).write_text(what_happened)
    return "answered"
"""


@pytest.fixture
def late(aws: LocalAws, tmp_path: Path) -> Iterator[Path]:
    """A function with a 1 s Timeout that sleeps, then sends one request; yields its marker
    file, where the handler writes what its request ended in (``answered`` or the exception)."""
    FarEnd.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FarEnd)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = tmp_path / "marker"
    environment = {"TARGET": f"http://127.0.0.1:{server.server_address[1]}", "MARKER": str(marker)}
    aws.create_function(
        "late", write_function(tmp_path / "late", LATE_HANDLER), "app.lambda_handler", environment, timeout=1
    )
    yield marker
    server.shutdown()
    server.server_close()


def test_a_timed_out_invocation_sends_nothing_after_its_deadline(late: Path) -> None:
    """Like Lambda, which ends a timed-out invocation: nothing of it runs after the deadline."""
    started = time.monotonic()
    error, result = invoke("late", {"sleep": 2.5, "path": "/after-the-deadline"})
    answered_after = time.monotonic() - started

    assert (error, result["errorType"]) == ("Unhandled", "Sandbox.Timedout")
    assert "Task timed out after 1.00 seconds" in result["errorMessage"]
    assert answered_after < 2.5  # at the deadline, not once the handler got round to returning
    # The handler went on sleeping here (a thread cannot be ended from outside), but its request
    # never left: it died where it would have sent.
    assert wait_for(late.exists, 10)
    assert late.read_text() == "SandboxKilled"
    assert FarEnd.seen == []
    assert lambda_runtime.invocations("late")[-1].error == "Sandbox.Timedout"

    # Lambda throws the timed-out sandbox away: the next invocation is a cold start, and lives.
    assert invoke("late", {"sleep": 0, "path": "/next"}) == (None, "answered")
    assert FarEnd.seen == ["/next"]
    assert [i.cold_start for i in lambda_runtime.invocations("late")] == [True, True]


def test_a_request_on_the_wire_at_the_deadline_is_done_but_its_answer_is_lost(late: Path) -> None:
    error, result = invoke("late", {"sleep": 0, "path": "/slow"})

    assert (error, result["errorType"]) == ("Unhandled", "Sandbox.Timedout")
    assert FarEnd.seen == ["/slow"]  # the far end got it (and did its work)
    assert wait_for(late.exists, 10)
    assert late.read_text() == "SandboxKilled"  # the answer never reached the handler


def test_the_moto_task_token_fixes_are_in_place(aws: LocalAws) -> None:
    """tests/local/moto_fixes.py patches private moto methods: fail loudly if they move."""
    from tests.local import moto_fixes  # noqa: PLC0415

    for owner, name in moto_fixes.PATCH_TARGETS:
        assert hasattr(owner, name), f"moto no longer has {owner.__name__}.{name}"
    assert moto_fixes.is_installed()
