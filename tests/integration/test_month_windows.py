"""A look-up window never crosses a calendar month: the cancel function against moto (the real
decision ledger and state machine) and the QFPay stand-in over real HTTP, searching Enquiries by
out_trade_no only within their window and within one calendar month (``search_windows``; the
strictest reading of QFPay's "one calendar month at most", docs/qfpay.md).

A payment made in the last hour of November (the merchant's txdtm) is recorded by QFPay in the
first hour of December (its sysdtm). A message naming it by out_trade_no alone must still find
it, so that it takes the payment's identity (its syssn) like a message naming the syssn does.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PipelineFactory, wait_for
from tests.local.qfpay_standin import Transaction

SYSSN = "20261201000101000931"
OUT_TRADE_NO = "MONTH-END-1"
TXDTM = "2026-11-30 23:30:00"  # the merchant's clock
SYSDTM = "2026-12-01 00:30:00"  # QFPay's: already December


def transaction(**script: Any) -> Transaction:
    return Transaction(
        syssn=SYSSN,
        out_trade_no=OUT_TRADE_NO,
        txamt=1250,
        txdtm=TXDTM,
        sysdtm=SYSDTM,
        pay_type="800101",
        txcurrcd="HKD",
        **script,
    )


def message(**fields: Any) -> dict[str, Any]:
    return {"txamt": 1250, "txdtm": TXDTM, "pay_type": "800101", "txcurrcd": "HKD", **fields}


def test_a_payment_across_the_month_end_named_by_out_trade_no_then_syssn_is_one_cancel_one_outcome(
    pipeline_factory: PipelineFactory,
) -> None:
    """The first message names the payment by out_trade_no alone; its cancel is in progress when a
    second names it by syssn. One cancel reaches QFPay, and both end in one outcome naming both
    numbers."""
    with pipeline_factory([transaction(in_progress_enquiries=3)]) as pipeline:
        pipeline.qfpay.search_windows = True
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: len(pipeline.executions()) == 1, timeout=20)
        pipeline.send(message(syssn=SYSSN))  # the same payment, by QFPay's number
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=30)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        assert reversals == 1  # not a second cancel of a payment whose first is processing
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        outcomes += pipeline.stack.read_outcomes(wait_seconds=1)
        applied = pipeline.qfpay.cancellations_applied(SYSSN)
        executions = pipeline.executions()
        windows = [
            (call.params["start_time"], call.params["end_time"])
            for call in pipeline.qfpay.calls
            if call.endpoint == "/trade/v1/query" and "start_time" in call.params
        ]
    assert {(o["outcome_id"], o["status"]) for o in outcomes} == {(outcomes[0]["outcome_id"], "CANCELLED")}
    assert (outcomes[0]["out_trade_no"], outcomes[0]["syssn"]) == (OUT_TRADE_NO, SYSSN)
    assert (applied, len(executions)) == (1, 1)
    # The look-up asked once per month its window touched, each window inside one month.
    assert windows == [
        ("2026-11-29 23:30:00", "2026-11-30 23:59:59"),
        ("2026-12-01 00:00:00", "2026-12-01 23:30:00"),
    ]


@pytest.mark.parametrize("state", ["unpaid", "paid"])
def test_a_lone_message_by_out_trade_no_across_the_month_end_is_decided_by_qfpays_row(
    pipeline_factory: PipelineFactory, state: str
) -> None:
    """A single message by out_trade_no: the look-up finds the payment, so the outcome carries its
    syssn and QFPay's figures (a paid one is the refund case the Enquiry shows)."""
    with pipeline_factory([transaction(state=state)]) as pipeline:
        pipeline.qfpay.search_windows = True
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        [outcome] = pipeline.collect_outcomes(1, timeout=30)
    assert outcome["status"] == {"unpaid": "CANCELLED", "paid": "REFUND_REQUIRED"}[state]
    assert (outcome["syssn"], outcome["txamt"], outcome["txcurrcd"]) == (SYSSN, 1250, "HKD")
