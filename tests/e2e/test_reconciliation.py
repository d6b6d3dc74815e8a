"""Reconciliation end to end: UNKNOWN outcomes published by the real cancel function reach the
intake queue through the template's rule, and the real reconcile function (invoked through moto's
Lambda, as the schedule would) re-checks them with the QFPay stand-in's Transaction Enquiry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from cancellation.aws import OutcomePublisher, ReconciliationLedger, ReconciliationStage
from cancellation.outcomes import CORRECTION_DETAIL_TYPE, OUTCOME_DETAIL_TYPE, Status
from cancellation.reconciliation import resolve_by_hand

from tests.conftest import PipelineFactory
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Transaction

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "events/schemas/payment-cancellation-outcome.schema.json"
    ).read_text()
)

pytestmark = pytest.mark.e2e

# Two checks: at once, then a second later; after the second, the order needs attention.
FAST_SCHEDULE = {"RECONCILE_CHECKS_AFTER_SECONDS": "0,1"}


def risk_controlled(n: int) -> Transaction:
    """A live payment whose cancel QFPay refuses with 1294 (bank risk control): UNKNOWN at once."""
    return Transaction(
        syssn=f"2026120600000000{n:04d}",
        out_trade_no=f"RISK-{n:04d}",
        txamt=1000 + n,
        txdtm="2026-12-06 10:00:00",
        pay_type="800101",
        state="unpaid",
        cancel_respcd="1294",
    )


def invoke_reconcile(pipeline: Pipeline, event: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = boto3.client("lambda").invoke(
        FunctionName=pipeline.stack.reconcile_function_name, Payload=json.dumps(event or {})
    )
    payload = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, payload
    return dict(payload)


def outcome_events(pipeline: Pipeline, expected: int) -> list[dict[str, Any]]:
    events = pipeline.stack.read_outcome_events(wait_seconds=10, expected=expected)
    for event in events:
        jsonschema.validate(event["detail"], SCHEMA, format_checker=jsonschema.FormatChecker())
    return events


def test_an_unknown_order_later_shown_cancelled_is_corrected_and_an_unreadable_one_needs_attention(
    pipeline_factory: PipelineFactory,
) -> None:
    shown_later, unreadable = risk_controlled(1), risk_controlled(2)
    with pipeline_factory([shown_later, unreadable], env_overrides=FAST_SCHEDULE) as pipeline:
        for txn in (shown_later, unreadable):
            pipeline.send(txn.order_message())
        first = outcome_events(pipeline, expected=2)
        assert sorted(e["detail"]["status"] for e in first) == ["UNKNOWN", "UNKNOWN"]
        assert {e["detail-type"] for e in first} == {OUTCOME_DETAIL_TYPE}
        assert {e["detail"]["revision"] for e in first} == {1}
        unknown = {e["detail"]["out_trade_no"]: e["detail"] for e in first}

        # A little later QFPay shows the first payment cancelled; the second stays in progress.
        pipeline.qfpay.update(shown_later.syssn, cancel=1)
        reversals_before = pipeline.qfpay.count("reversal")

        assert invoke_reconcile(pipeline) == {"checked": 2, "resolved": 1, "still_unknown": 1}
        (corrected,) = outcome_events(pipeline, expected=1)
        assert corrected["detail-type"] == CORRECTION_DETAIL_TYPE
        detail = corrected["detail"]
        assert detail["outcome_id"] == unknown[shown_later.out_trade_no]["outcome_id"]
        assert (detail["status"], detail["revision"], detail["supersedes"]) == ("CANCELLED", 2, "UNKNOWN")
        assert detail["decided_by"] == "reconciliation"
        assert detail["out_trade_no"] == shown_later.out_trade_no

        # The second check of the unreadable one is its last: it moves to needs-attention.
        time.sleep(1.1)
        assert invoke_reconcile(pipeline) == {"checked": 1, "resolved": 0, "still_unknown": 1}
        assert invoke_reconcile(pipeline) == {"checked": 0, "resolved": 0, "still_unknown": 0}
        # Reconciliation only reads: no cancel was sent after the refusals.
        assert pipeline.qfpay.count("reversal") == reversals_before
        assert pipeline.stack.read_outcome_events(wait_seconds=0.5) == []

        ledger = ReconciliationLedger(pipeline.stack.table_name)
        attention = ledger.needing_attention()
        stuck_id = unknown[unreadable.out_trade_no]["outcome_id"]
        assert [r.outcome_id for r in attention] == [stuck_id]
        assert attention[0].checks == 2
        assert "1143" in (attention[0].last_finding or "")  # the row we could not decide on
        assert ledger.get(detail["outcome_id"]).stage == ReconciliationStage.RESOLVED  # type: ignore[union-attr]

        # A person closes it: recorded with who and why, published as revision 2.
        resolved = resolve_by_hand(
            ledger,
            publisher=OutcomePublisher(pipeline.stack.bus_name),
            outcome_id=stuck_id,
            status=Status.CANCELLED,
            note="cancelled in the QFPay merchant portal",
            who="ops@example.com",
            now=time.time(),
        )
        (closed,) = outcome_events(pipeline, expected=1)
        assert closed["detail"] == resolved
        assert (resolved["status"], resolved["revision"], resolved["decided_by"]) == (
            "CANCELLED",
            2,
            "operator",
        )
        record = ledger.get(stuck_id)
        assert record is not None
        assert (record.stage, record.resolved_by, record.note) == (
            ReconciliationStage.RESOLVED,
            "ops@example.com",
            "cancelled in the QFPay merchant portal",
        )
        assert ledger.needing_attention() == []
        assert [h["revision"] for h in record.history] == [1, 2]


def test_refund_required_goes_straight_to_attention_and_corrections_are_not_enrolled(
    pipeline_factory: PipelineFactory,
) -> None:
    paid = Transaction(
        syssn="20261206000000009001",
        out_trade_no="PAID-9001",
        txamt=500,
        txdtm="2026-12-06 10:00:00",
        pay_type="800101",
        state="paid",
    )
    with pipeline_factory([paid], env_overrides=FAST_SCHEDULE) as pipeline:
        pipeline.send(paid.order_message())
        (first,) = outcome_events(pipeline, expected=1)
        assert first["detail"]["status"] == "REFUND_REQUIRED"
        # Nothing to re-check: it is not counted as checked, but it is on the attention list.
        assert invoke_reconcile(pipeline) == {"checked": 0, "resolved": 0, "still_unknown": 0}
        ledger = ReconciliationLedger(pipeline.stack.table_name)
        (record,) = ledger.needing_attention()
        assert (record.outcome_id, record.stage) == (
            first["detail"]["outcome_id"],
            ReconciliationStage.NEEDS_ATTENTION,
        )
        resolve_by_hand(
            ledger,
            publisher=OutcomePublisher(pipeline.stack.bus_name),
            outcome_id=record.outcome_id,
            status=Status.NOT_CHARGED,
            note="refunded in full by hand",
            who="ops",
            now=time.time(),
        )
        outcome_events(pipeline, expected=1)
        # The correction does not come back through the intake: nothing new is enrolled.
        assert invoke_reconcile(pipeline) == {"checked": 0, "resolved": 0, "still_unknown": 0}
        assert ledger.needing_attention() == []
        depth = boto3.client("sqs").get_queue_attributes(
            QueueUrl=pipeline.stack.intake_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        assert depth == "0"
