"""The example caller workflow (statemachine/examples/order_cancellation_caller.asl.json).

Another team's Step Functions workflow sends an order to our queue with
``sqs:sendMessage.waitForTaskToken`` and waits for our answer. Here it runs in moto against the
whole local pipeline (our real handlers, the QFPay stand-in, SQS delivery): the cancel function
or the enquiry loop answers its task token, and the caller ends with the outcome, or its Catch
sees ``Cancellation.Rejected`` / ``Cancellation.Unknown``.

moto 5.2.5 needs two fixes for this, both about answering a task token, not about our code;
``tests/local/moto_fixes.py`` describes them and the local AWS installs them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest

from tests.conftest import PipelineFactory
from tests.e2e.test_pipeline_e2e import cancel_function_calls, not_granted_to_the_cancel_function
from tests.local import lambda_runtime
from tests.local.pipeline import CALLER_ASL, Pipeline, caller_definition
from tests.local.scenarios import order_in, transaction_for
from tests.template.test_template import _validate_asl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

EVENTS = ROOT / "events"
SCHEMA = json.loads((EVENTS / "schemas" / "payment-cancellation-outcome.schema.json").read_text())
# Every field of an order-timeout message but task_token (docs/contracts.md): the caller's input.
ORDER_FIELDS = ("out_trade_no", "syssn", "txamt", "txdtm", "pay_type", "mchid", "udid", "txcurrcd")

BROKEN_POLL_FUNCTION = """
def lambda_handler(event, context):
    raise RuntimeError("the poll function is broken (test)")
"""


def _order(event_file: str) -> dict[str, Any]:
    """The caller's input: every order field, null when the sample does not have it."""
    message = order_in(json.loads((EVENTS / event_file).read_text(encoding="utf-8")))
    return {name: message.get(name) for name in ORDER_FIELDS}


def _run_caller(pipeline: Pipeline, order: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    try:
        return pipeline.run_caller(order, timeout)
    except TimeoutError as waited:
        pytest.fail(str(waited))


def _entered(history: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            e["stateEnteredEventDetails"]["name"],
            json.loads(e["stateEnteredEventDetails"].get("input") or "null"),
        )
        for e in history
        if "stateEnteredEventDetails" in e
    ]


def _loop_states(pipeline: Pipeline) -> list[str]:
    (execution,) = pipeline.executions()
    sfn = boto3.client("stepfunctions")
    history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
    return [name for name, _ in _entered(history)]


# ------------------------------------------------------------------ the definition


def test_the_caller_definition_is_valid_asl() -> None:
    returncode, diagnostics = _validate_asl(CALLER_ASL)
    assert diagnostics == []
    assert returncode == 0


def test_the_caller_sends_every_order_field_and_its_task_token() -> None:
    definition = json.loads(CALLER_ASL.read_text(encoding="utf-8"))
    assert set(re.findall(r"\$\{([^}]+)\}", CALLER_ASL.read_text(encoding="utf-8"))) == {
        "OrderTimeoutQueueUrl"
    }
    request = definition["States"][definition["StartAt"]]
    assert request["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    assert request["Parameters"]["QueueUrl"] == "${OrderTimeoutQueueUrl}"
    body = request["Parameters"]["MessageBody"]
    assert body == {
        **{f"{name}.$": f"$.order.{name}" for name in ORDER_FIELDS},
        "task_token.$": "$$.Task.Token",
    }
    assert request["TimeoutSeconds"] > 900  # longer than the loop's default deadline
    assert "Retry" not in request  # a resent order would carry a token nobody answers
    caught = {error for catcher in request["Catch"] for error in catcher["ErrorEquals"]}
    assert caught == {"Cancellation.Rejected", "Cancellation.Unknown", "States.Timeout"}
    assert request["ResultPath"] == "$.outcome"


# ------------------------------------------------------------------ against the local pipeline


def test_an_unpaid_order_is_cancelled_and_the_caller_gets_the_outcome(
    pipeline_factory: PipelineFactory,
) -> None:
    event_file = "orders/reversal-confirmed.json"
    with pipeline_factory([transaction_for(event_file, state="unpaid")]) as pipeline:
        finished = _run_caller(pipeline, _order(event_file))
        (published,) = pipeline.collect_outcomes(1, timeout=5)

    assert finished["status"] == "SUCCEEDED", finished
    output = json.loads(finished["output"])
    outcome = output["outcome"]
    jsonschema.validate(outcome, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert (outcome["status"], outcome["decided_by"]) == ("CANCELLED", "cancel-function")
    assert outcome["out_trade_no"] == "DEMO-REVERSAL-0001"
    assert outcome == published  # the same outcome as on the bus
    assert output["order"] == _order(event_file)
    assert [name for name, _ in _entered(finished["history"])] == [
        "RequestCancellation",
        "IsOurOrder",
        "IsRefundRequired",
        "NotCharged",
    ]


def test_an_in_progress_cancel_answers_the_caller_when_the_loop_decides(
    pipeline_factory: PipelineFactory,
) -> None:
    event_file = "orders/reversal-in-progress.json"
    transaction = transaction_for(event_file, state="unpaid", in_progress_enquiries=2)
    with pipeline_factory([transaction]) as pipeline:
        finished = _run_caller(pipeline, _order(event_file))
        loop = _loop_states(pipeline)

    assert finished["status"] == "SUCCEEDED", finished
    outcome = json.loads(finished["output"])["outcome"]
    jsonschema.validate(outcome, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert (outcome["status"], outcome["decided_by"]) == ("CANCELLED", "poll-loop")
    assert outcome["polls"] >= 3
    # The loop never saw the caller's token: the cancel function answered it, from the message.
    assert "ReportSuccessToCaller" not in loop
    assert loop[-1] == "Decided"


def test_a_loop_that_cannot_publish_still_answers_the_caller_and_ends_failed(
    pipeline_factory: PipelineFactory,
) -> None:
    """EventBridge refuses the loop's outcome (here: the bus is gone) on every retry. The loop's
    PublishOutcome catches it: the execution ends in the Fail state OutcomeNotPublished (what
    CancellationStateMachineFailedAlarm counts), the outcome stays in its history, and the caller,
    whose message waits for the loop, is answered with it all the same. Run for real: moto's
    Step Functions executes the putEvents task, its retries and its Catch."""
    event_file = "orders/reversal-in-progress.json"
    transaction = transaction_for(event_file, state="unpaid", in_progress_enquiries=2)
    with pipeline_factory([transaction]) as pipeline:
        # The hand-off publishes nothing: only the loop meets the missing bus.
        boto3.client("events").delete_event_bus(Name=pipeline.stack.bus_name)
        finished = _run_caller(pipeline, _order(event_file), timeout=150)
        (execution,) = pipeline.executions()
        described = boto3.client("stepfunctions").describe_execution(executionArn=execution["executionArn"])
        loop = _loop_states(pipeline)

    assert finished["status"] == "SUCCEEDED", finished
    outcome = json.loads(finished["output"])["outcome"]
    assert (outcome["status"], outcome["decided_by"]) == ("CANCELLED", "poll-loop")
    assert described["status"] == "FAILED"
    assert described["error"] == "Cancellation.OutcomeNotPublished"
    assert loop[-2:] == ["EndByStatus", "OutcomeNotPublished"]
    assert "PublishOutcome" in loop


def test_an_invalid_order_reaches_the_callers_rejected_catch(pipeline_factory: PipelineFactory) -> None:
    order = _order("orders/invalid-amount.json")
    with pipeline_factory([]) as pipeline:
        finished = _run_caller(pipeline, order)
        (published,) = pipeline.collect_outcomes(1, timeout=5)

    entered = _entered(finished["history"])
    assert [name for name, _ in entered] == ["RequestCancellation", "CancellationRejected", "NotCancelled"]
    caught = entered[1][1]["cancellation_error"]
    assert caught == {"Error": "Cancellation.Rejected", "Cause": published["reason"]}
    assert published["status"] == "REJECTED"
    assert "txamt" in published["reason"]
    assert finished["status"] == "FAILED"
    assert finished["error"] == "Cancellation.Rejected"


def test_a_broken_loop_reaches_the_callers_unknown_catch(
    pipeline_factory: PipelineFactory, tmp_path: Path
) -> None:
    event_file = "orders/reversal-in-progress.json"
    transaction = transaction_for(event_file, state="unpaid", in_progress_enquiries=2)
    broken = tmp_path / "broken_poll"
    broken.mkdir()
    (broken / "app.py").write_text(BROKEN_POLL_FUNCTION)
    with pipeline_factory([transaction]) as pipeline, cancel_function_calls() as called:
        stack = pipeline.stack
        lambda_runtime.register_function(
            stack.poll_function_name, broken, "app.lambda_handler", stack.poll_environment
        )
        finished = _run_caller(pipeline, _order(event_file))
        (published,) = pipeline.collect_outcomes(1, timeout=5)
        loop = _loop_states(pipeline)

    entered = _entered(finished["history"])
    assert [name for name, _ in entered] == ["RequestCancellation", "CancellationUnknown", "NeedsAPerson"]
    caught = entered[1][1]["cancellation_error"]
    assert caught == {"Error": "Cancellation.Unknown", "Cause": published["reason"]}
    jsonschema.validate(published, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert (published["status"], published["decided_by"]) == ("UNKNOWN", "poll-loop")
    assert "failed twice" in published["reason"]
    assert "ReportFailureToCaller" not in loop  # answered by the cancel function, from the message
    # The loop ended in a Fail state: its outcome was read from its history, as the role allows.
    assert "states:GetExecutionHistory" in called
    assert not_granted_to_the_cancel_function(called) == set()
    assert loop[-1] == "EnquiryLoopBroken"
    assert finished["status"] == "FAILED"
    assert finished["error"] == "Cancellation.Unknown"


# ------------------------------------------------------------------ an answer about another order


def _caller_waiting_on(queue_url: str, order: dict[str, Any]) -> tuple[str, str]:
    """Start the example caller against ``queue_url``; return its execution and the task token
    it sent (read from the queue, as whoever holds the queue could)."""
    sfn, sqs = boto3.client("stepfunctions"), boto3.client("sqs")
    machine = sfn.create_state_machine(
        name=f"caller-{uuid.uuid4().hex[:8]}",
        definition=caller_definition(queue_url),
        roleArn=boto3.client("iam").list_roles()["Roles"][0]["Arn"],
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"order": order}))[
        "executionArn"
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1).get("Messages", [])
        if messages:
            return execution, json.loads(messages[0]["Body"])["task_token"]
        time.sleep(0.1)
    pytest.fail("the caller sent no message")


def _finished(execution: str) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            history = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
            described["history"] = history
            return described
        time.sleep(0.1)
    pytest.fail("the caller is still running")


def _refund_required(order: dict[str, Any], **identity: Any) -> dict[str, Any]:
    """A REFUND_REQUIRED outcome as the service publishes it, about ``order`` with ``identity``
    replacing its out_trade_no / syssn."""
    outcome: dict[str, Any] = {
        "outcome_id": "5d41402abc4b2a76b9719d911017c592",
        **{name: order.get(name) for name in ("out_trade_no", "syssn", "mchid", "pay_type", "txcurrcd")},
        "txamt": order.get("txamt"),
        "status": "REFUND_REQUIRED",
        "reason": "QFPay shows the payment paid (1260)",
        "endpoint": "reversal",
        "respcd": "1260",
        "resperr": "already paid",
        "reversal_syssn": None,
        "attempts": 1,
        "polls": 0,
        "resent": False,
        "decided_by": "cancel-function",
        "decided_at": "2026-11-26T10:20:00Z",
        **identity,
    }
    return outcome


@pytest.mark.parametrize(
    ("sent", "identity", "acted_on"),
    [
        ({}, {}, True),
        ({}, {"out_trade_no": "SOMEONE-ELSES-ORDER"}, False),
        ({}, {"out_trade_no": None}, False),
        ({"mchid": "M-1"}, {}, True),
        ({"mchid": "M-1"}, {"mchid": "M-2"}, False),  # the same out_trade_no at another merchant
        ({"mchid": "M-1"}, {"mchid": None}, False),
    ],
)
def test_the_caller_acts_only_on_an_outcome_about_its_own_order(
    pipeline_factory: PipelineFactory, sent: dict[str, Any], identity: dict[str, Any], acted_on: bool
) -> None:
    """Our role may answer any task token (SendTaskSuccess has no resource type): a caller must
    check that the outcome names its order before it refunds or closes anything."""
    order = {**_order("orders/reversal-confirmed.json"), **sent}
    with pipeline_factory([]):
        scratch = boto3.client("sqs").create_queue(QueueName=f"caller-check-{uuid.uuid4().hex[:8]}")[
            "QueueUrl"
        ]
        execution, token = _caller_waiting_on(scratch, order)
        outcome = _refund_required(order, **identity)
        boto3.client("stepfunctions").send_task_success(taskToken=token, output=json.dumps(outcome))
        finished = _finished(execution)

    states = [name for name, _ in _entered(finished["history"])]
    if acted_on:
        assert finished["status"] == "SUCCEEDED", finished
        assert states == ["RequestCancellation", "IsOurOrder", "IsRefundRequired", "RefundRequired"]
    else:
        assert finished["status"] == "FAILED"
        assert finished["error"] == "Cancellation.NotOurOrder"
        assert states == ["RequestCancellation", "IsOurOrder", "NotOurOrder"]


def test_a_caller_without_out_trade_no_checks_the_syssn(pipeline_factory: PipelineFactory) -> None:
    order = {
        **_order("orders/reversal-confirmed.json"),
        "out_trade_no": None,
        "syssn": "20261126000100020000000001",
    }
    with pipeline_factory([]):
        sqs = boto3.client("sqs")
        for syssn, expected in ((order["syssn"], "SUCCEEDED"), ("20261126000100020000000999", "FAILED")):
            scratch = sqs.create_queue(QueueName=f"caller-check-{uuid.uuid4().hex[:8]}")["QueueUrl"]
            execution, token = _caller_waiting_on(scratch, order)
            outcome = _refund_required(order, syssn=syssn)
            boto3.client("stepfunctions").send_task_success(taskToken=token, output=json.dumps(outcome))
            assert _finished(execution)["status"] == expected, syssn
