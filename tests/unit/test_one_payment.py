"""One payment, one identity, and QFPay's figures in every outcome.

The payment's identity is QFPay's ``syssn`` once known, whoever names it and however: the first
Enquiry (``first_look``) learns it for a message that names only ``out_trade_no``, and refuses a
message whose figures disagree with QFPay's record.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from cancellation.cancel import (
    CancelAttempt,
    RetryLater,
    execution_name,
    first_look,
)
from cancellation.orders import Order
from cancellation.outcomes import outcome_id
from cancellation.poll import EnquiryStep
from cancellation.qfpay import QFPayUnavailable
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy, PollSchedule

from tests.unit.fakes import (
    NOW,
    ORDER,
    OUT_TRADE_NO,
    SYSSN,
    Clock,
    FakeQFPay,
    as_dict,
    cancel_answer,
    enquiry_answer,
    enquiry_shows,
)

BY_OUT_TRADE_NO = Order(
    txamt=1250, txdtm=ORDER.txdtm, out_trade_no=OUT_TRADE_NO, mchid="MCH1", txcurrcd="HKD"
)
LOOP = LoopPolicy(PollSchedule(), deadline_seconds=900)


# --- one identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "named",
    [
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn=SYSSN),
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn=SYSSN, mchid="MCH1"),
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn=SYSSN, out_trade_no=OUT_TRADE_NO),
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn=SYSSN, out_trade_no=OUT_TRADE_NO, mchid="MCH1"),
    ],
    ids=["syssn", "syssn+mchid", "syssn+out_trade_no", "all"],
)
def test_a_payment_named_by_syssn_has_one_identity_however_else_it_is_named(named):
    assert named.identity == ORDER.identity
    assert outcome_id(named.identity) == outcome_id(ORDER.identity)
    assert execution_name(named) == execution_name(ORDER)


def test_different_payments_have_different_identities():
    other = Order(txamt=1250, txdtm=ORDER.txdtm, syssn="20261126000101000002")
    by_number = [
        BY_OUT_TRADE_NO,
        BY_OUT_TRADE_NO._replace(mchid="MCH2"),
        BY_OUT_TRADE_NO._replace(mchid=None),
    ]
    assert len({o.identity for o in [ORDER, other, *by_number]}) == 5


def test_first_look_learns_the_syssn_so_an_out_trade_no_message_is_the_same_order():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    look = first_look(fake.as_client(), BY_OUT_TRADE_NO)
    assert look.order.syssn == SYSSN
    assert look.order.identity == ORDER.identity
    assert fake.params("enquiry")[0]["out_trade_no"] == OUT_TRADE_NO


def test_first_look_without_a_row_keeps_the_message_s_naming():
    look = first_look(FakeQFPay(enquiry=[enquiry_answer()]).as_client(), BY_OUT_TRADE_NO)
    assert look.order == BY_OUT_TRADE_NO


# --- a message that disagrees with QFPay's record ----------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"txamt": 99_999_999}, "txamt 99999999 disagrees with QFPay's record (1250)"),
        ({"txcurrcd": "USD"}, "txcurrcd USD disagrees with QFPay's record (HKD)"),
        ({"out_trade_no": "SHOP-OTHER"}, "out_trade_no disagrees"),
    ],
)
@pytest.mark.parametrize("read", ["looked_up", "redelivered"])
def test_a_message_that_disagrees_with_qfpay_s_record_is_refused_before_anything_is_sent(
    changes, problem, read
):
    """QFPay's record is read before the cancel when the message named only out_trade_no (the
    service's look-up, ``seen``) or an earlier attempt may have sent one (asked here)."""
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    seen = enquiry_shows(respcd="1143") if read == "looked_up" else None
    attempt = CancelAttempt(
        ORDER._replace(**changes),
        fake.as_client(),
        Routing(),
        LOOP,
        Clock(),
        redelivered=read == "redelivered",
        seen=seen,
    )
    decision = as_dict(attempt.decide())
    assert decision["request"] is True  # the message's own decision, never the payment's
    detail = decision["outcome"]
    assert detail["status"] == "REJECTED"
    assert re.search(re.escape(problem), detail["reason"])
    assert (detail["txamt"], detail["txcurrcd"]) == (1250, "HKD")  # QFPay's figures
    assert fake.names == ([] if seen else ["enquiry"])  # nothing sent


def test_a_first_message_naming_the_syssn_sends_the_cancel_without_reading_first():
    """The syssn names the payment: no look-up is needed, and QFPay checks the reversal's txamt
    itself (1266: a refusal of that request, the message's own)."""
    fake = FakeQFPay(reversal=[cancel_answer("1266", syssn="")])
    attempt = CancelAttempt(ORDER._replace(txamt=99_999_999), fake.as_client(), Routing(), LOOP, Clock())
    decision = as_dict(attempt.decide())
    assert fake.names == ["reversal"]
    assert decision["request"] is True
    detail = decision["outcome"]
    assert (detail["status"], detail["respcd"]) == ("REJECTED", "1266")
    # No row of QFPay's was read: its figures are unknown, the message's stand beside them.
    assert (detail["txamt"], detail["message_txamt"]) == (None, 99_999_999)


def test_a_message_without_a_currency_is_not_refused_for_it():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    attempt = CancelAttempt(ORDER._replace(txcurrcd=None), fake.as_client(), Routing(), LOOP, Clock())
    assert "handoff" in attempt.decide()


@pytest.mark.parametrize(
    ("failure", "throttled"),
    [
        (QFPayUnavailable("enquiry: HTTP 429", http_status=429), True),
        (QFPayUnavailable("enquiry: HTTP 503", http_status=503), False),
        (enquiry_answer(respcd="1100"), False),
    ],
)
def test_first_look_unavailable_is_retried_later_before_anything_is_sent(failure, throttled):
    with pytest.raises(RetryLater) as caught:
        first_look(FakeQFPay(enquiry=[failure]).as_client(), ORDER)
    assert caught.value.throttled is throttled


# --- deciding with the first look --------------------------------------------------------------


def decide(fake: FakeQFPay, seen: dict[str, Any], *, order: Order = ORDER, redelivered: bool = False):
    attempt = CancelAttempt(
        order, fake.as_client(), Routing(), LOOP, Clock(), redelivered=redelivered, seen=seen
    )
    return attempt.decide()


@pytest.mark.parametrize(
    ("row", "status"),
    [
        ({"cancel": "2"}, "CANCELLED"),
        ({"respcd": "1261"}, "NOT_CHARGED"),
        ({"cancel": "5", "respcd": "0000"}, "REFUND_REQUIRED"),
    ],
)
def test_a_payment_already_decided_is_not_sent_a_cancel(row, status):
    fake = FakeQFPay()
    detail = decide(fake, enquiry_shows(**row))["outcome"]
    assert detail["status"] == status
    assert fake.calls == []
    assert detail["attempts"] == 0


def test_a_paid_payment_nothing_touched_is_still_sent_the_first_cancel():
    """A completed payment may still be reversible: QFPay's answer decides (1260: refund it)."""
    fake = FakeQFPay(reversal=[cancel_answer("1260", syssn="")])
    detail = decide(fake, enquiry_shows(respcd="0000"))["outcome"]
    assert detail["status"] == "REFUND_REQUIRED"
    assert fake.names == ["reversal"]
    assert (detail["txamt"], detail["txcurrcd"]) == (1250, "HKD")  # QFPay's, from the first look


def test_a_live_payment_is_sent_the_cancel_without_asking_again():
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    assert "handoff" in decide(fake, enquiry_shows(respcd="1143"))
    assert fake.names == ["reversal"]


def test_redelivered_paid_row_reads_the_first_look_as_possibly_pending():
    fake = FakeQFPay()
    result = decide(fake, enquiry_shows(respcd="0000"), redelivered=True)
    assert result["handoff"]["input"]["reversal_pending"] is True
    assert fake.calls == []


# --- QFPay's figures in the outcome ------------------------------------------------------------


def test_outcomes_publish_qfpay_s_figures_and_the_message_s_beside_them():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="1", txamt="1250")])
    order = ORDER._replace(txcurrcd=None)
    detail = decide(fake, enquiry_shows(respcd="1143"), order=order)["outcome"]
    assert (detail["txamt"], detail["txcurrcd"]) == (1250, "HKD")
    assert (detail["message_txamt"], detail["message_txcurrcd"]) == (1250, None)


def test_an_outcome_without_a_row_of_qfpay_has_no_figures_of_qfpay():
    fake = FakeQFPay(reversal=[cancel_answer("1268", syssn="")])
    detail = decide(fake, enquiry_answer())["outcome"]
    assert detail["status"] == "REJECTED"
    assert (detail["txamt"], detail["txcurrcd"]) == (None, None)
    assert (detail["message_txamt"], detail["message_txcurrcd"]) == (1250, "HKD")


def test_the_loop_s_outcome_publishes_qfpay_s_figures():
    state = decide(FakeQFPay(reversal=[cancel_answer("1143")]), enquiry_shows(respcd="1143"))["handoff"][
        "input"
    ]
    step = EnquiryStep(FakeQFPay(enquiry=[enquiry_shows(cancel="1")]).as_client(), Routing(), Clock(NOW + 3))
    detail = step.run(state)["outcome"]
    assert (detail["txamt"], detail["txcurrcd"], detail["message_txamt"]) == (1250, "HKD", 1250)
