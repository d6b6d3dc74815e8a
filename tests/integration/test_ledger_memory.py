"""After the decision ledger forgot an order: the cancel function against moto (the real ledger)
and the QFPay stand-in over real HTTP.

The ledger's record of an order expires (``LEDGER_EXPIRY_SECONDS``, 48 h deployed). A message for
the order after its record was swept (a dead letter redriven, a late duplicate, a re-request)
must not send a second cancel without asking QFPay first: its payment is older than the ledger
remembers, so the Transaction Enquiry goes first, and a payment QFPay shows cancelled gets no
cancel (docs/ledger.md).
"""

from __future__ import annotations

import time
from typing import Any

import boto3

from tests.conftest import PipelineFactory
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Transaction

SYSSN = "20261126000101000888"
# The deployed memory: the stand-in's payments, dated November 2026, are older than that.
DEPLOYED_MEMORY = {"LEDGER_EXPIRY_SECONDS": str(48 * 3600)}


def order_message() -> dict[str, Any]:
    return {
        "syssn": SYSSN,
        "out_trade_no": "FORGOTTEN-1",
        "txamt": 1250,
        "txdtm": "2026-11-26 11:00:00",
        "pay_type": "800101",
        "txcurrcd": "HKD",
    }


def outcomes_of(pipeline: Pipeline, expected: int, timeout: float) -> list[dict[str, Any]]:
    """Every outcome event published (repeats included), waiting for ``expected`` of them."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        seen += pipeline.stack.read_outcomes(wait_seconds=0.5)
    return seen


def forget_the_order(pipeline: Pipeline) -> list[str]:
    """Remove the ledger's order records, as DynamoDB's TTL sweep does after their expiry."""
    dynamodb = boto3.client("dynamodb")
    table = pipeline.stack.table_name
    ids = [str(item["id"]["S"]) for item in dynamodb.scan(TableName=table)["Items"]]
    forgotten = [i for i in ids if i.startswith("cancel#")]
    for key in forgotten:
        dynamodb.delete_item(TableName=table, Key={"id": {"S": key}})
    return forgotten


def forgotten_payment(**changes: Any) -> Transaction:
    """The payment both tests send twice, 48 h apart (its txdtm is fixed; the ledger's memory is not)."""
    fields: dict[str, Any] = {
        "syssn": SYSSN,
        "out_trade_no": "FORGOTTEN-1",
        "txamt": 1250,
        "txdtm": "2026-11-26 11:00:00",
        "pay_type": "800101",
        "txcurrcd": "HKD",
    }
    return Transaction(**{**fields, **changes})


def test_a_message_after_the_ledger_forgot_a_cancelled_payment_sends_no_second_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    txn = forgotten_payment()
    with pipeline_factory([txn], env_overrides=DEPLOYED_MEMORY) as pipeline:
        pipeline.send(order_message())
        [first] = outcomes_of(pipeline, 1, timeout=30)
        assert first["status"] == "CANCELLED"
        assert forget_the_order(pipeline)  # the order's record existed, and is gone
        pipeline.send(order_message())  # a late duplicate, a redrive: a new message
        [second] = outcomes_of(pipeline, 1, timeout=30)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        applied = pipeline.qfpay.cancellations_applied(SYSSN)
        enquiries = pipeline.qfpay.count("/trade/v1/query", SYSSN)
    assert (reversals, applied) == (1, 1)
    # QFPay's word, from the Enquiry asked before anything was sent.
    assert second["status"] == "CANCELLED"
    assert "Enquiry" in second["reason"]
    assert second["attempts"] == 0
    assert second["outcome_id"] == first["outcome_id"]
    assert enquiries >= 3  # the first message's look and confirmation, the second's look


def expire_the_order(pipeline: Pipeline) -> list[str]:
    """The ledger's order records past their expiry but not yet swept: DynamoDB's TTL deletes an
    expired item only some time after (AWS: typically within a few days), and reads still see it."""
    dynamodb = boto3.client("dynamodb")
    table = pipeline.stack.table_name
    ids = [str(item["id"]["S"]) for item in dynamodb.scan(TableName=table)["Items"]]
    expired = [i for i in ids if i.startswith("cancel#")]
    for key in expired:
        dynamodb.update_item(
            TableName=table,
            Key={"id": {"S": key}},
            UpdateExpression="SET #expiration = :past",
            ExpressionAttributeNames={"#expiration": "expiration"},
            ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 60)}},
        )
    return expired


def test_a_message_after_the_order_s_record_expired_unswept_is_decided_as_after_the_sweep(
    pipeline_factory: PipelineFactory,
) -> None:
    """The payment was paid: the first message was REFUND_REQUIRED (its payment already older
    than the ledger's memory, it asked the Enquiry first). Its record expired (48 h) and DynamoDB
    has not swept it yet. A late duplicate asks the Enquiry first (it does) and, as once the
    record is swept, is REFUND_REQUIRED with no cancel: nothing of ours can still be pending after
    that long, and the order's outcome_id keeps its status."""
    txn = forgotten_payment(state="paid")
    env = {**DEPLOYED_MEMORY, "POLL_DEADLINE_SECONDS": "8"}
    with pipeline_factory([txn], env_overrides=env) as pipeline:
        pipeline.send(order_message())
        [first] = outcomes_of(pipeline, 1, timeout=30)
        assert first["status"] == "REFUND_REQUIRED"
        sent = pipeline.qfpay.count("reversal", SYSSN)
        assert expire_the_order(pipeline)
        pipeline.send(order_message())  # a late duplicate, 48 h on
        [second] = outcomes_of(pipeline, 1, timeout=40)
        sent_again = pipeline.qfpay.count("reversal", SYSSN) - sent
    assert sent_again == 0
    assert (second["outcome_id"], second["status"]) == (first["outcome_id"], "REFUND_REQUIRED")
