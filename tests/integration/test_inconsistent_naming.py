"""A message that names a real payment by its out_trade_no and another syssn: the cancel function
against moto (the real decision ledger and state machine) and the QFPay stand-in over real HTTP.

The message says out_trade_no X (a payment QFPay knows as syssn S) and syssn S', which QFPay does
not know, or which is another payment of the merchant (out_trade_no Y). Such a message names no
payment consistently: no payment may be cancelled on its strength, neither X nor the payment S'
names, and its outcome is REJECTED, saying why. It is the message's own refusal, so the genuine
messages for X (and for the other payment) are still decided, each cancelled once.

Both paths are covered: a first message about a recent payment sends its cancel at once, naming
both numbers, and QFPay refuses it (1267: the numbers name different transactions; 1136: no such
transaction); a message whose payment may be older than the decision ledger remembers asks the
Enquiry first (by syssn), and QFPay's record of that syssn decides before anything is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import PipelineFactory, wait_for
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Transaction

SYSSN_X = "20261126000101000811"
SYSSN_Y = "20261126000101000812"
UNKNOWN_SYSSN = "20261126000101000899"
# Older than the ledger remembers (33 h or more with the deployed 48 h; the local runs' ledger
# remembers ten years unless told otherwise): the Enquiry is asked first.
OLD_TXDTM = "2026-11-26 11:00:00"
DEPLOYED_MEMORY = {"LEDGER_EXPIRY_SECONDS": str(48 * 3600)}
AGES = {"recent": {}, "older than the ledger remembers": DEPLOYED_MEMORY}


def recent_txdtm() -> str:
    """An hour ago (UTC, so at most a few hours off the merchant's clock): a first message about
    it that names the syssn sends its cancel at once."""
    return (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")


def payment(syssn: str, out_trade_no: str, txdtm: str) -> Transaction:
    return Transaction(
        syssn=syssn, out_trade_no=out_trade_no, txamt=1250, txdtm=txdtm, pay_type="800101", txcurrcd="HKD"
    )


def message(txdtm: str, **naming: Any) -> dict[str, Any]:
    return {"txamt": 1250, "txdtm": txdtm, "pay_type": "800101", "txcurrcd": "HKD", **naming}


def refused(pipeline: Pipeline, order: dict[str, Any]) -> dict[str, Any]:
    """Sends ``order``, the first message; its one outcome, once the message is settled."""
    pipeline.send(order)
    [outcome] = pipeline.collect_outcomes(1, timeout=30)
    assert wait_for(lambda: pipeline.source.total.deleted >= 1, timeout=20)
    return outcome


def txdtm_of(age: str) -> str:
    return recent_txdtm() if age == "recent" else OLD_TXDTM


@pytest.mark.parametrize("age", AGES)
def test_a_real_out_trade_no_with_a_syssn_qfpay_does_not_know_cancels_nothing_and_is_rejected(
    pipeline_factory: PipelineFactory, age: str
) -> None:
    txdtm = txdtm_of(age)
    x = payment(SYSSN_X, "NAMING-X", txdtm)
    with pipeline_factory([x], env_overrides=AGES[age]) as pipeline:
        outcome = refused(pipeline, message(txdtm, out_trade_no="NAMING-X", syssn=UNKNOWN_SYSSN))
        applied_after_refusal = pipeline.qfpay.cancellations_applied(SYSSN_X)
        pipeline.send(message(txdtm, out_trade_no="NAMING-X"))  # the genuine message for X
        [genuine] = pipeline.collect_outcomes(2, timeout=30)  # two orders' outcomes in all
        applied = pipeline.qfpay.cancellations_applied(SYSSN_X)
    assert outcome["status"] == "REJECTED"
    assert "does not exist at QFPay" in outcome["reason"]  # QFPay's 1136 for the unknown syssn
    assert applied_after_refusal == 0  # X was not cancelled on the strength of that message
    assert (genuine["status"], genuine["syssn"]) == ("CANCELLED", SYSSN_X)
    assert genuine["outcome_id"] != outcome["outcome_id"]  # the refusal was the message's own
    assert applied == 1


@pytest.mark.parametrize("age", AGES)
def test_a_real_out_trade_no_with_another_payments_syssn_cancels_neither_and_is_rejected(
    pipeline_factory: PipelineFactory, age: str
) -> None:
    txdtm = txdtm_of(age)
    x, y = payment(SYSSN_X, "NAMING-X", txdtm), payment(SYSSN_Y, "NAMING-Y", txdtm)
    with pipeline_factory([x, y], env_overrides=AGES[age]) as pipeline:
        outcome = refused(pipeline, message(txdtm, out_trade_no="NAMING-X", syssn=SYSSN_Y))
        applied_after_refusal = (
            pipeline.qfpay.cancellations_applied(SYSSN_X),
            pipeline.qfpay.cancellations_applied(SYSSN_Y),
        )
        pipeline.send(message(txdtm, out_trade_no="NAMING-X"))  # the genuine messages
        pipeline.send(message(txdtm, syssn=SYSSN_Y))
        genuine = pipeline.collect_outcomes(3, timeout=30)  # three in all
        applied = (
            pipeline.qfpay.cancellations_applied(SYSSN_X),
            pipeline.qfpay.cancellations_applied(SYSSN_Y),
        )
    assert outcome["status"] == "REJECTED"
    if age == "recent":  # sent at once, naming both numbers: QFPay refuses the mismatch
        assert "answered 1267" in outcome["reason"]
    else:  # the Enquiry first: QFPay's record of the syssn names another out_trade_no
        assert "out_trade_no disagrees with QFPay's record of the syssn" in outcome["reason"]
    assert applied_after_refusal == (0, 0)  # neither the payment named by syssn, nor X
    assert sorted((o["syssn"], o["status"]) for o in genuine) == [
        (SYSSN_X, "CANCELLED"),
        (SYSSN_Y, "CANCELLED"),
    ]
    assert outcome["outcome_id"] not in {o["outcome_id"] for o in genuine}
    assert applied == (1, 1)
