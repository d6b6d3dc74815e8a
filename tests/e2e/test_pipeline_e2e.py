"""End to end: orders on the queue built from template.yaml, delivered with SQS semantics to the real
cancel handler, in-progress cancellations through the real ASL executed by moto with the real poll
handler, outcomes read back from the bus. QFPay is the stand-in over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest

from tests.conftest import PipelineFactory
from tests.local.aws_stack import load_template
from tests.local.demo import run_scenarios
from tests.local.qfpay_limits import Outage
from tests.local.scenarios import SCENARIOS
from tests.template.test_template import TEMPLATE, granted_actions, sam_transform

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "events/schemas/payment-cancellation-outcome.schema.json"
    ).read_text()
)

pytestmark = pytest.mark.e2e


def test_every_demo_scenario_reaches_its_expected_outcome(pipeline_factory: PipelineFactory) -> None:
    transactions = [s.transaction for s in SCENARIOS if s.transaction is not None]
    with pipeline_factory(transactions) as pipeline:
        run = run_scenarios(pipeline)
        executions = pipeline.executions()
        qfpay = pipeline.qfpay

    assert [row[-1] for row in run.rows] == ["ok"] * len(SCENARIOS), run.rows
    assert run.failures == 0
    assert run.dead_letters == []
    by_order = {detail["out_trade_no"]: detail for detail in run.outcomes}
    assert len(run.outcomes) == len(SCENARIOS), "exactly one outcome per order, duplicates included"
    for scenario in SCENARIOS:
        detail = by_order[scenario.order()["out_trade_no"]]
        jsonschema.validate(detail, SCHEMA, format_checker=jsonschema.FormatChecker())
        if scenario.transaction is not None:
            applied = qfpay.cancellations_applied(scenario.transaction.syssn)
            assert applied == (1 if scenario.expected_status == "CANCELLED" else 0), scenario.name
    # The in-progress order and the one answered 500 went through the loop; both succeeded.
    assert [e["status"] for e in executions] == ["SUCCEEDED", "SUCCEEDED"]
    looped = by_order["DEMO-PROGRESS-0003"]
    assert looped["polls"] == 3
    assert looped["reversal_syssn"]
    # The 500 came after QFPay reversed the payment: nothing was resent; the loop's Enquiry
    # showed it reversed. One reversal call, applied once.
    assert qfpay.count("reversal", "DEMO-FLAKY-0006") == 1
    assert by_order["DEMO-FLAKY-0006"]["resent"] is False
    # Three deliveries of one order: one reversal.
    assert qfpay.count("reversal", "DEMO-DUPLICATE-0009") == 1
    # After the key rotation, the first call was refused (1108) and the re-signed one went through.
    rotated = [c for c in qfpay.calls if c.params.get("out_trade_no") == "DEMO-ROTATED-0010"]
    assert [(c.endpoint, c.respcd) for c in rotated][:2] == [
        ("/trade/v1/reversal", "1108"),
        ("/trade/v1/reversal", "0000"),
    ]


@contextmanager
def cancel_function_calls() -> Iterator[set[str]]:
    """The AWS actions the cancel function calls meanwhile (its orders run on its pool's threads,
    "order_0", ...; its clients are made from the default session on first use, hook included)."""
    called: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        if threading.current_thread().name.startswith("order"):
            called.add(f"{model.service_model.signing_name}:{model.name}")

    session = boto3._get_default_session()
    session.events.register("before-call", record)
    try:
        yield called
    finally:
        session.events.unregister("before-call", record)


def not_granted_to_the_cancel_function(called: set[str]) -> set[str]:
    role = sam_transform(load_template(TEMPLATE))["Resources"]["CancelFunctionRole"]
    return called - granted_actions(role)


def test_the_cancel_function_calls_only_what_its_role_allows(pipeline_factory: PipelineFactory) -> None:
    """moto does not enforce IAM: a call the role does not grant would only fail once deployed.
    Every AWS call the cancel function makes over the demo scenarios (hand-off, caller answers,
    backoff, a re-read secret) must be granted by its role as the template declares it."""
    called: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        # The cancel function's orders run on its pool's threads ("order_0", ...).
        if threading.current_thread().name.startswith("order"):
            called.add(f"{model.service_model.signing_name}:{model.name}")

    transactions = [s.transaction for s in SCENARIOS if s.transaction is not None]
    with pipeline_factory(transactions) as pipeline:
        # The handler's clients are made from the default session on first use, hook included.
        boto3._get_default_session().events.register("before-call", record)
        run = run_scenarios(pipeline)
    assert run.failures == 0
    role = sam_transform(load_template(TEMPLATE))["Resources"]["CancelFunctionRole"]
    assert {"dynamodb:PutItem", "events:PutEvents", "states:StartExecution"} <= called
    assert called - granted_actions(role) == set()


def test_a_repeated_hand_off_starts_no_second_loop(pipeline_factory: PipelineFactory) -> None:
    scenario = next(s for s in SCENARIOS if s.expected_decided_by == "poll-loop")
    assert scenario.transaction is not None
    with pipeline_factory([scenario.transaction]) as pipeline:
        pipeline.send(scenario.body())
        pipeline.send(scenario.body())  # the same order, delivered twice
        seen = pipeline.collect_outcomes(1, timeout=30)
        seen += pipeline.collect_outcomes(2, timeout=2)
        executions = pipeline.executions()
        reversals = pipeline.qfpay.count("reversal", scenario.transaction.syssn)
        applied = pipeline.qfpay.cancellations_applied(scenario.transaction.syssn)
    assert [d["status"] for d in seen] == ["CANCELLED"], seen
    assert len(executions) == 1
    assert executions[0]["name"].startswith("order-")
    assert (reversals, applied) == (1, 1)


def test_the_poll_loop_runs_the_asl_from_the_template(pipeline_factory: PipelineFactory) -> None:
    """The execution history shows the template's states, in the loop's order."""
    scenario = next(s for s in SCENARIOS if s.expected_decided_by == "poll-loop")
    assert scenario.transaction is not None
    with pipeline_factory([scenario.transaction]) as pipeline:
        pipeline.send(scenario.body())
        pipeline.collect_outcomes(1, timeout=30)
        execution = pipeline.executions()[0]
        sfn = boto3.client("stepfunctions")
        history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert entered[:3] == ["WaitBeforeEnquiry", "AskEnquiry", "IsDecided"]
    assert entered.count("AskEnquiry") == 3
    assert "PublishOutcome" in entered
    assert entered[-1] == "Decided"


def test_a_qfpay_outage_longer_than_the_loops_deadline_does_not_decide_the_order_unknown(
    pipeline_factory: PipelineFactory,
) -> None:
    """The cancel answered in progress and the order is in the loop when QFPay goes down (HTTP 503
    to everything) for longer than the loop's deadline: the unanswered turns do not spend the
    deadline (up to the retry horizon), so the loop, run by moto's Step Functions from the
    template's ASL, decides the order when QFPay is back instead of concluding UNKNOWN."""
    scenario = next(s for s in SCENARIOS if s.name == "in progress, resolved by the loop")
    assert scenario.transaction is not None
    outage = Outage()
    settings = {"POLL_DEADLINE_SECONDS": "5", "RETRY_HORIZON_SECONDS": "120"}
    with pipeline_factory([scenario.transaction], env_overrides=settings, outage=outage) as pipeline:
        pipeline.send(scenario.body())
        deadline = time.monotonic() + 30
        while not pipeline.executions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pipeline.executions(), "the order was not handed to the loop"
        outage.active = True
        time.sleep(12)  # more than twice the loop's 5 s deadline
        outage.active = False
        seen = pipeline.collect_outcomes(1, timeout=45)
        execution = pipeline.executions()[0]
        history = boto3.client("stepfunctions").get_execution_history(
            executionArn=execution["executionArn"], maxResults=1000
        )["events"]
        applied = pipeline.qfpay.cancellations_applied(scenario.transaction.syssn)
    assert outage.refused >= 3, "the loop asked while QFPay was down"
    assert [(d["status"], d["decided_by"]) for d in seen] == [("CANCELLED", "poll-loop")], seen
    assert execution["status"] == "SUCCEEDED"
    assert applied == 1
    # Every turn, answered or not, went through the template's AskEnquiry state.
    asked = [e for e in history if e.get("stateEnteredEventDetails", {}).get("name") == "AskEnquiry"]
    assert len(asked) == seen[0]["polls"] >= 4
