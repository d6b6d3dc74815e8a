"""The DLQ's consumer (DeadLetterFunction) against moto and the QFPay stand-in: an order message
that dead-lettered still ends in one explained outcome, its task-token caller is answered, and
nothing is sent to QFPay on the way."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest

from tests.conftest import PipelineFactory, wait_for
from tests.integration.test_cancel_integration import FAST_RETRIES, order_and_txn
from tests.local.pipeline import Pipeline, caller_definition
from tests.local.qfpay_standin import Merchant
from tests.local.sqs_delivery import SqsEventSource


@contextmanager
def dead_letter_delivery(pipeline: Pipeline) -> Iterator[SqsEventSource]:
    """The template's event source mapping from the DLQ to DeadLetterFunction."""
    source = SqsEventSource(
        boto3.client("sqs"),
        boto3.client("lambda"),
        pipeline.stack.dlq_url,
        pipeline.stack.dead_letter_function_name,
    )
    source.start()
    try:
        yield source
    finally:
        source.stop()


def start_caller(pipeline: Pipeline, queue_url: str, order: dict[str, Any]) -> str:
    """The example caller workflow, sending to ``queue_url``; returns its execution ARN."""
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"caller-{uuid.uuid4().hex[:8]}",
        definition=caller_definition(queue_url),
        roleArn=pipeline.stack.role_arn,
    )["stateMachineArn"]
    caller_input = {"order": {**order, "mchid": order.get("mchid"), "udid": None}}
    return str(sfn.start_execution(stateMachineArn=machine, input=json.dumps(caller_input))["executionArn"])


def finished(arn: str, timeout: float) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        execution: dict[str, Any] = sfn.describe_execution(executionArn=arn)
        if execution["status"] != "RUNNING" or time.monotonic() > deadline:
            return execution
        time.sleep(0.2)


def ledger_record(pipeline: Pipeline, order: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = boto3.client("dynamodb").get_item(
        TableName=pipeline.stack.table_name,
        Key={"id": {"S": f"cancel#syssn={order['syssn']}"}},  # the payment's identity
    )["Item"]
    return item


def test_an_order_that_dead_letters_ends_unknown_and_its_caller_is_told(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay refuses our signature on every receive (its key changed, the secret did not): the
    message dead-letters. DeadLetterFunction publishes an UNKNOWN of that message's own with the
    reason (reconciliation's intake rule copies every UNKNOWN), answers the caller with
    SendTaskFailure and calls QFPay not once; the dead message is consumed. The order stays
    open: once the secret is right, the order sent again is decided as usual."""
    order, txn = order_and_txn(31)
    with (
        pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline,
        dead_letter_delivery(pipeline) as dlq,
    ):
        pipeline.qfpay.set_merchant(
            Merchant(app_code=pipeline.merchant.app_code, client_key="ROTATED-AT-QFPAY")
        )
        caller = finished(start_caller(pipeline, pipeline.stack.queue_url, order), timeout=90)
        outcomes = pipeline.collect_outcomes(1, timeout=10)
        assert wait_for(lambda: pipeline.dead_letters_count() == 0, timeout=10)
        calls = pipeline.qfpay.calls
        record = ledger_record(pipeline, order)
        dlq_deliveries = dlq.total
        pipeline.qfpay.set_merchant(pipeline.merchant)  # the cause is fixed; the order is sent again
        pipeline.send(order)
        decided = pipeline.stack.read_outcomes(wait_seconds=30, expected=1)
    assert caller["status"] == "FAILED", caller
    history = boto3.client("stepfunctions").get_execution_history(executionArn=caller["executionArn"])[
        "events"
    ]
    failure = next(e["taskFailedEventDetails"] for e in history if "taskFailedEventDetails" in e)
    assert failure["error"] == "Cancellation.Unknown"
    assert "dead-lettered" in failure["cause"]
    (outcome,) = outcomes
    assert outcome["status"] == "UNKNOWN"
    assert "could not be processed in 5 receives and was dead-lettered" in outcome["reason"]
    assert (outcome["out_trade_no"], outcome["message_txamt"]) == (order["out_trade_no"], order["txamt"])
    assert outcome["txamt"] is None  # no row of QFPay's was read: its figures are unknown
    # Only the cancel function's attempts reached QFPay: 5 receives, each refused twice (1108).
    assert [c.respcd for c in calls] == ["1108"] * 10
    assert record["stage"]["S"] == "DECIDING"  # the order itself undecided, its lease released
    assert dlq_deliveries.invocations >= 1
    (later,) = decided
    assert later["status"] == "CANCELLED"
    assert later["outcome_id"] != outcome["outcome_id"]  # the dead message's UNKNOWN was its own
    assert pipeline.qfpay.cancellations_applied(txn.syssn) == 1


@pytest.mark.parametrize("by_syssn", [True, False], ids=["named by syssn", "named by out_trade_no alone"])
def test_a_dead_letter_of_an_order_already_decided_gets_that_outcome_not_unknown(
    pipeline_factory: PipelineFactory, by_syssn: bool
) -> None:
    """One message of the order was decided (CANCELLED); another one, carrying a caller's token,
    dead-lettered. The order keeps its one outcome: the caller hears CANCELLED (SendTaskSuccess)
    under the same outcome_id, and nothing more is published (the outcome was delivered already;
    no UNKNOWN). One payment, one outcome identity (docs/contracts.md): a dead letter naming the
    payment by out_trade_no alone is looked up as the cancel function does (one Transaction
    Enquiry, read-only) and is the same order."""
    order, txn = order_and_txn(32 if by_syssn else 33)
    dead = order if by_syssn else {**order, "syssn": None}  # the caller workflow sends every field
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        [first] = pipeline.collect_outcomes(1, timeout=30)
        with dead_letter_delivery(pipeline):
            # The caller's message lands in the DLQ itself, as after five failed receives.
            caller = finished(start_caller(pipeline, pipeline.stack.dlq_url, dead), timeout=60)
            again = pipeline.stack.read_outcomes(wait_seconds=3)
        reversals = pipeline.qfpay.count("reversal")
    assert first["status"] == "CANCELLED"
    assert caller["status"] == "SUCCEEDED", caller
    heard = json.loads(caller["output"])["outcome"]
    assert (heard["status"], heard["outcome_id"], heard["syssn"]) == (
        "CANCELLED",
        first["outcome_id"],
        order["syssn"],
    )
    assert again == []
    assert reversals == 1


def test_a_dead_letter_naming_only_out_trade_no_when_qfpay_cannot_be_asked_is_still_settled(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay refuses our signature (its key changed, the secret did not): the payment cannot be
    looked up. The dead letter still ends in an explained UNKNOWN of its own, named by what the
    message gives (mchid + out_trade_no), and its caller is told; nothing is sent to QFPay but
    the Enquiry."""
    order, txn = order_and_txn(34)
    by_number = {**order, "syssn": None}  # the caller workflow sends every field
    with pipeline_factory([txn]) as pipeline:
        pipeline.qfpay.set_merchant(
            Merchant(app_code=pipeline.merchant.app_code, client_key="ROTATED-AT-QFPAY")
        )
        with dead_letter_delivery(pipeline):
            caller = finished(start_caller(pipeline, pipeline.stack.dlq_url, by_number), timeout=60)
            outcomes = pipeline.stack.read_outcomes(wait_seconds=10, expected=1)
            assert wait_for(lambda: pipeline.dead_letters_count() == 0, timeout=10)
        endpoints = {call.endpoint for call in pipeline.qfpay.calls}
    assert caller["status"] == "FAILED", caller
    (outcome,) = outcomes
    assert outcome["status"] == "UNKNOWN"
    assert "could not be looked up" in outcome["reason"]
    assert "dead-lettered" in outcome["reason"]
    assert (outcome["out_trade_no"], outcome["syssn"]) == (order["out_trade_no"], None)
    assert endpoints <= {"/trade/v1/query"}


def test_a_dead_letter_whose_amount_disagrees_with_qfpays_record_is_not_given_the_payments_outcome(
    pipeline_factory: PipelineFactory,
) -> None:
    """The payment was cancelled; a dead letter naming it by out_trade_no claims another amount.
    One bad message decides nothing for the genuine order and is told nothing of it: it keeps the
    identity it gives and ends in an explained UNKNOWN of its own; its caller is told so."""
    order, txn = order_and_txn(35)
    wrong = {**order, "syssn": None, "txamt": order["txamt"] + 1}
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        [first] = pipeline.collect_outcomes(1, timeout=30)
        with dead_letter_delivery(pipeline):
            caller = finished(start_caller(pipeline, pipeline.stack.dlq_url, wrong), timeout=60)
            outcomes = pipeline.stack.read_outcomes(wait_seconds=10, expected=1)
        reversals = pipeline.qfpay.count("reversal")
    assert first["status"] == "CANCELLED"
    assert caller["status"] == "FAILED", caller
    (outcome,) = outcomes
    assert outcome["status"] == "UNKNOWN"
    assert outcome["outcome_id"] != first["outcome_id"]
    assert "disagrees with QFPay's record" in outcome["reason"]
    assert outcome["syssn"] is None
    assert reversals == 1


def test_a_dead_letter_naming_only_out_trade_no_when_the_secret_cannot_be_read_is_still_settled(
    pipeline_factory: PipelineFactory,
) -> None:
    """The merchant's secret cannot be read as credentials (here an operator pasted the client key
    alone, not the JSON object; a missing secret or a key policy refusing the role fails alike):
    the cancel function cannot process the order's message, which dead-letters. The dead-letter
    function's look-up needs that same secret. It must still settle the dead letter: an explained
    UNKNOWN of its own, its caller told, and no secret in the outcome."""
    order, txn = order_and_txn(36)
    by_number = {**order, "syssn": None}  # the caller workflow sends every field
    with pipeline_factory([txn]) as pipeline:
        boto3.client("secretsmanager").put_secret_value(
            SecretId=pipeline.stack.secret_id, SecretString=pipeline.merchant.client_key
        )
        with dead_letter_delivery(pipeline):
            caller = finished(start_caller(pipeline, pipeline.stack.dlq_url, by_number), timeout=40)
            outcomes = pipeline.stack.read_outcomes(wait_seconds=5, expected=1)
        calls = pipeline.qfpay.calls
    assert caller["status"] == "FAILED", caller  # answered (not left RUNNING)
    (outcome,) = outcomes
    assert outcome["status"] == "UNKNOWN"
    assert "could not be looked up" in outcome["reason"]
    assert (outcome["out_trade_no"], outcome["syssn"]) == (order["out_trade_no"], None)
    assert pipeline.merchant.client_key not in json.dumps(outcome)
    assert calls == []  # nothing reached QFPay
