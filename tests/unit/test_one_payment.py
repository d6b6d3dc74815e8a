"""One payment, one identity, and QFPay's figures in every outcome.

The payment's identity is QFPay's ``syssn`` once known, whoever names it and however: the first
Enquiry (``first_look``) learns it for a message that names only ``out_trade_no``, and refuses a
message whose figures disagree with QFPay's record.
"""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
from cancellation.cancel import (
    CancelAttempt,
    FirstLook,
    RetryLater,
    batch_look,
    execution_name,
    first_look,
)
from cancellation.naming import adopt
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
    payment_row,
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


def test_an_outcome_of_a_message_naming_only_the_syssn_names_qfpay_s_out_trade_no():
    """A caller that sent only out_trade_no may hear this outcome (the same payment): it names
    the order by the number QFPay's row records for it."""
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="1")])
    order = Order(txamt=1250, txdtm=ORDER.txdtm, syssn=SYSSN, mchid="MCH1")
    detail = as_dict(CancelAttempt(order, fake.as_client(), Routing(), LOOP, Clock()).decide())["outcome"]
    assert (detail["status"], detail["out_trade_no"], detail["syssn"]) == ("CANCELLED", OUT_TRADE_NO, SYSSN)


# --- looking up several orders with one Enquiry -----------------------------------------------


def by_number(n: int, txdtm: str = ORDER.txdtm) -> Order:
    return Order(txamt=1250, txdtm=txdtm, out_trade_no=f"SHOP-{n}", mchid="MCH1", txcurrcd="HKD")


def row_of(n: int, **changes: Any) -> dict[str, Any]:
    return payment_row(**{"syssn": f"2026112600010100000{n}", "out_trade_no": f"SHOP-{n}", **changes})


def test_one_enquiry_looks_up_several_orders_of_a_merchant_each_with_its_own_row():
    orders = [by_number(1), by_number(2), by_number(3, "2026-11-27 09:00:00")]
    fake = FakeQFPay(enquiry=[enquiry_answer(row_of(2, cancel="2"), row_of(1))])  # 3: not at QFPay
    looks = batch_look(fake.as_client(), orders)
    [params] = fake.params("enquiry")  # one request for the three
    assert params == {
        "mchid": "MCH1",
        "out_trade_no": "SHOP-1,SHOP-2,SHOP-3",
        "start_time": "2026-11-25 10:00:00",  # a day around the earliest and the latest
        "end_time": "2026-11-28 09:00:00",
        "page_size": "100",
    }
    assert [look.order.syssn if isinstance(look, FirstLook) else look for look in looks] == [
        "20261126000101000001",
        "20261126000101000002",
        None,  # QFPay shows no row of it: it keeps its naming
    ]
    # Each order reads its own row from the shared answer, never another's.
    attempt = CancelAttempt(
        cast(FirstLook, looks[1]).order,
        FakeQFPay().as_client(),
        Routing(),
        LOOP,
        Clock(),
        seen=cast(FirstLook, looks[1]).answer,
    )
    assert as_dict(attempt.decide())["outcome"]["status"] == "CANCELLED"


def test_a_full_page_is_not_trusted_to_hold_every_row_each_order_looks_for_itself():
    page = enquiry_answer(*[row_of(1, syssn=f"9{i:019d}", order_type="refund") for i in range(100)])
    looks = batch_look(FakeQFPay(enquiry=[page]).as_client(), [by_number(1), by_number(2)])
    assert looks == [None, None]


def test_orders_of_one_calendar_month_are_asked_in_one_enquiry_however_far_apart():
    orders = [by_number(1, "2026-11-02 10:00:00"), by_number(2, "2026-11-29 10:00:00")]
    fake = FakeQFPay(enquiry=[enquiry_answer(row_of(1), row_of(2))])
    looks = batch_look(fake.as_client(), orders)
    assert [(p["out_trade_no"], p["start_time"], p["end_time"]) for p in fake.params("enquiry")] == [
        ("SHOP-1,SHOP-2", "2026-11-01 10:00:00", "2026-11-30 10:00:00")
    ]
    assert [cast(FirstLook, look).order.syssn for look in looks] == [row_of(1)["syssn"], row_of(2)["syssn"]]


def test_no_look_up_window_crosses_a_month_an_order_near_its_end_is_asked_in_both_months():
    """QFPay searches one calendar month at most. November's query asks for the orders whose day
    either side touches November, December's for those touching December; the order of November's
    last hour, which QFPay dated in December, is found in December's answer."""
    orders = [
        by_number(1, "2026-11-20 10:00:00"),
        by_number(2, "2026-11-30 23:30:00"),
        by_number(3, "2026-12-05 10:00:00"),
    ]
    november = enquiry_answer(row_of(1))
    december = enquiry_answer(row_of(2, sysdtm="2026-12-01 00:30:00"), row_of(3))
    fake = FakeQFPay(enquiry=[november, december])
    looks = batch_look(fake.as_client(), orders)
    assert [(p["out_trade_no"], p["start_time"], p["end_time"]) for p in fake.params("enquiry")] == [
        ("SHOP-1,SHOP-2", "2026-11-19 10:00:00", "2026-11-30 23:59:59"),
        ("SHOP-2,SHOP-3", "2026-12-01 00:00:00", "2026-12-06 10:00:00"),
    ]
    assert [cast(FirstLook, look).order.syssn for look in looks] == [row_of(n)["syssn"] for n in (1, 2, 3)]


def test_a_full_page_in_one_month_leaves_only_that_month_s_orders_to_look_for_themselves():
    orders = [by_number(1, "2026-11-10 10:00:00"), by_number(2, "2026-12-10 10:00:00")]
    full = enquiry_answer(*[row_of(1, syssn=f"9{i:019d}", order_type="refund") for i in range(100)])
    looks = batch_look(FakeQFPay(enquiry=[full, enquiry_answer(row_of(2))]).as_client(), orders)
    assert looks[0] is None
    assert cast(FirstLook, looks[1]).order.syssn == row_of(2)["syssn"]


def test_a_month_s_query_that_fails_is_retried_later_by_its_orders_only():
    orders = [by_number(1, "2026-11-10 10:00:00"), by_number(2, "2026-11-30 23:30:00")]
    fake = FakeQFPay(enquiry=[enquiry_answer(row_of(1), row_of(2)), QFPayUnavailable("enquiry: HTTP 503")])
    looks = batch_look(fake.as_client(), orders)
    assert cast(FirstLook, looks[0]).order.syssn == row_of(1)["syssn"]
    # Its row was in November's answer, but December's could not be read: not all QFPay shows.
    assert isinstance(looks[1], RetryLater)


@pytest.mark.parametrize(
    ("failure", "throttled"),
    [
        (QFPayUnavailable("enquiry: HTTP 429", http_status=429), True),
        (enquiry_answer(respcd="1100"), False),
    ],
)
def test_a_look_up_that_fails_is_each_order_s_retry_later_and_sends_nothing(failure, throttled):
    looks = batch_look(FakeQFPay(enquiry=[failure]).as_client(), [by_number(1), by_number(2)])
    assert all(isinstance(look, RetryLater) and look.throttled is throttled for look in looks)
    assert looks[0] is not looks[1]  # raised from two threads: one exception each


# --- the ledger's binding of an out_trade_no (cancellation.naming) ---------------------------------


def test_an_out_trade_no_bound_to_a_syssn_names_the_payment_by_it():
    assert adopt(BY_OUT_TRADE_NO, f"syssn={SYSSN}") == BY_OUT_TRADE_NO._replace(syssn=SYSSN)


def test_an_out_trade_no_bound_to_itself_keeps_that_identity_even_with_a_syssn():
    both = BY_OUT_TRADE_NO._replace(syssn=SYSSN)
    assert adopt(BY_OUT_TRADE_NO, BY_OUT_TRADE_NO.identity).identity == BY_OUT_TRADE_NO.identity
    assert adopt(both, BY_OUT_TRADE_NO.identity).identity == BY_OUT_TRADE_NO.identity


def test_a_message_naming_another_syssn_than_the_bound_one_keeps_its_own():
    """QFPay's record refuses it before any cancel (disagreement); never another payment's key."""
    other = BY_OUT_TRADE_NO._replace(syssn="20261126000101000999")
    assert adopt(other, f"syssn={SYSSN}") == other
