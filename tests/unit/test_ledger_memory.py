"""A payment older than the decision ledger remembers is asked about before its cancel.

The ledger's record of an order expires (``LEDGER_EXPIRY_SECONDS``, 48 h by default). A message
for the order after that (a dead letter redriven, a late duplicate, a re-request) finds no record
and would look like a first message: naming the ``syssn``, it would send its cancel at once,
though an earlier attempt may have cancelled the payment. A record is written after its payment
was made, so it can only be gone once the payment is older than the ledger's memory: such a
message asks the Transaction Enquiry first. QFPay's ``txdtm`` is the merchant's local time (up
to UTC+14), so the payment's age is read as the oldest it can be. A fresh timeout (a payment
made minutes ago) costs no extra request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cancellation.aws import DecisionLedger
from cancellation.batch import QueueMessage
from cancellation.deciding import OrderDecider
from cancellation.settings import cancel_settings

from tests.unit.fakes import ORDER, Clock, FakeQFPay, as_dict, cancel_answer, enquiry_shows
from tests.unit.test_schedule_and_settings import CANCEL_ENV

HOUR = 3600.0
# The order's txdtm read as if it were UTC: the merchant's clock may be up to 14 h ahead of it.
TXDTM_AS_UTC = datetime.strptime(ORDER.txdtm, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
MESSAGE = QueueMessage(
    message_id="m-1",
    body="{}",
    receive_count=1,
    queue_arn="arn:aws:sqs:ap-east-1:123456789012:orders",
    receipt_handle="r-1",
)


class NoLedger:
    """A first delivery of a message reads nothing from the ledger while deciding."""

    names: Any = None  # naming happens before deciding, not here

    def decision_of(self, key: str) -> Any:
        raise AssertionError(f"a first delivery read the ledger: {key}")


def decide(fake: FakeQFPay, now: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One first attempt at ORDER (named by its syssn), its record claimed fresh (no earlier one)."""
    settings = cancel_settings({**CANCEL_ENV, **(env or {})})
    decider = OrderDecider(settings, fake.as_client(), cast(DecisionLedger, NoLedger()), Clock(now))
    return as_dict(decider.decide(ORDER, "key", None, MESSAGE, seen=None, sends=None))


def test_a_fresh_timeout_sends_its_cancel_without_asking_first():
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    decide(fake, now=TXDTM_AS_UTC + 15 * 60)
    assert fake.names == ["reversal"]


def test_a_payment_older_than_the_ledger_remembers_is_not_cancelled_again():
    """Three days on, the record of an earlier attempt that cancelled it may be gone."""
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="0000", cancel="1")])
    detail = decide(fake, now=TXDTM_AS_UTC + 72 * HOUR)["outcome"]
    assert fake.names == ["enquiry"]
    assert detail["status"] == "CANCELLED"
    assert detail["attempts"] == 0


def test_an_old_payment_still_live_gets_its_cancel_after_the_enquiry():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    state = decide(fake, now=TXDTM_AS_UTC + 72 * HOUR)["handoff"]["input"]
    assert fake.names == ["enquiry", "reversal"]
    assert (state["attempts"], state["reversal_pending"]) == (1, True)


def test_an_old_paid_payment_nothing_cancelled_needs_a_refund_and_gets_no_cancel():
    """A paid row does not show that an earlier cancel, forgotten by the ledger, was refused:
    a cancel is sent only on a live row. The Enquiry proves the refund case."""
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="0000", cancel="0")])
    detail = decide(fake, now=TXDTM_AS_UTC + 72 * HOUR)["outcome"]
    assert fake.names == ["enquiry"]
    assert detail["status"] == "REFUND_REQUIRED"
    assert "ledger" in detail["reason"]


def test_an_old_payment_whose_row_cannot_be_read_goes_to_the_loop_which_may_send_one_cancel():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="7777")])
    state = decide(fake, now=TXDTM_AS_UTC + 72 * HOUR)["handoff"]["input"]
    assert fake.names == ["enquiry"]
    assert state["attempts"] == 0
    # Nothing of ours is pending: a later turn showing the payment live may send the one cancel.
    assert (state["reversal_pending"], state["cancel_may_take_effect"], state["resent"]) == (
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("hours_after_txdtm_as_utc", "asks_first"),
    [
        # 48 h of memory, 1 h of margin, the merchant's clock up to 14 h ahead of UTC.
        (32.9, False),
        (33.1, True),
    ],
)
def test_the_payment_is_read_as_old_as_its_merchant_local_txdtm_allows(hours_after_txdtm_as_utc, asks_first):
    enquiry = [enquiry_shows(respcd="1143")] if asks_first else []
    fake = FakeQFPay(enquiry=enquiry, reversal=[cancel_answer("1143")])
    decide(fake, now=TXDTM_AS_UTC + hours_after_txdtm_as_utc * HOUR)
    assert fake.names == (["enquiry", "reversal"] if asks_first else ["reversal"])


def test_the_ledgers_memory_comes_from_its_setting():
    """LEDGER_EXPIRY_SECONDS of 30 days: a three-day-old payment's record is still there."""
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    decide(fake, now=TXDTM_AS_UTC + 72 * HOUR, env={"LEDGER_EXPIRY_SECONDS": str(30 * 86400)})
    assert fake.names == ["reversal"]
