"""A further cancel only when no cancel of ours can still take effect.

QFPay documents no way to tell a reversal it is still processing from a payment nobody is
cancelling: while a reversal processes, the payment's row may read in progress (``1143``,
cancel ``0``) exactly like a live payment, and QFPay does not document that a second cancel sent
meanwhile is deduplicated. So once a cancel of ours may have reached QFPay (no answer, a 5xx, a
crashed attempt that may have sent it, an in-progress or success answer), "live" on the Enquiry
does not allow another one at once. The one further cancel per order goes when QFPay refused the
first (nothing of ours pending) while the payment still reads live; or when the first's answer
could not be read and QFPay has since shown the payment live, at every Enquiry, for longer than
it takes to settle a cancel it received (``DEFAULT_SETTLE_SECONDS``: QFPay advises cancelling a
payment still in progress after about two minutes). A cancel QFPay answered in progress or done,
or one an earlier attempt may have sent, is never followed by another."""

from __future__ import annotations

from typing import Any, cast

import pytest
import urllib3
from cancellation.budget import BudgetExhausted
from cancellation.cancel import CancelAttempt, RetryLater
from cancellation.poll import EnquiryStep, InvalidLoopState
from cancellation.qfpay import Credentials, QFPayAmbiguous, QFPayClient, QFPayUnavailable
from cancellation.routing import Routing
from cancellation.schedule import DEFAULT_SETTLE_SECONDS, SETTLE_ENQUIRIES, LoopPolicy, PollSchedule

from tests.canned_http import CannedPool
from tests.unit.fakes import (
    NOW,
    ORDER,
    REVERSAL_SYSSN,
    SYSSN,
    Clock,
    FakeQFPay,
    as_dict,
    cancel_answer,
    enquiry_answer,
    enquiry_shows,
    payment_row,
)

LOOP = LoopPolicy(PollSchedule(first_wait=3, max_wait=60, factor=2.0), deadline_seconds=900)


def decide(fake: FakeQFPay, earlier_sends: int) -> dict[str, Any]:
    attempt = CancelAttempt(
        order=ORDER,
        qfpay=fake.as_client(),
        routing=Routing(),
        loop=LOOP,
        clock=Clock(NOW),
        earlier_sends=earlier_sends,
    )
    return as_dict(attempt.decide())


def turn(state: dict[str, Any], fake: FakeQFPay, now: float) -> dict[str, Any]:
    return EnquiryStep(qfpay=fake.as_client(), routing=Routing(), clock=Clock(now)).run(state)


@pytest.mark.parametrize("earlier_sends", [1, 2])
def test_after_an_earlier_attempt_may_have_sent_a_live_looking_payment_gets_no_cancel(earlier_sends):
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    state = decide(fake, earlier_sends=earlier_sends)["handoff"]["input"]
    assert fake.names == ["enquiry"]  # asked first, sent nothing
    assert (state["reversal_pending"], state["resent"], state["attempts"]) == (True, True, 0)
    assert state["cancel_may_take_effect"] is True
    assert "may have reached QFPay" in state["resperr"]
    # The loop then only asks, to its deadline.
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 3, reversal=[cancel_answer("1143")])
    for n in range(2):
        state = turn(state, loop, NOW + 30 * (n + 1))
    state = turn(state, loop, state["deadline_at"])
    assert loop.names == ["enquiry"] * 3
    assert state["status"] == "UNKNOWN"


def test_after_an_earlier_attempt_may_have_sent_the_enquiry_still_decides():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143", cancel="1")])
    decision = decide(fake, earlier_sends=1)
    assert fake.names == ["enquiry"]
    assert decision["outcome"]["status"] == "CANCELLED"


def test_an_unanswered_first_cancel_is_not_resent_on_a_live_looking_row_before_qfpay_could_settle_it():
    """Our reversal's answer was lost: QFPay may be processing it, and its row reads live. Within
    QFPay's settle time (the readings at 30 s and 60 s) nothing is sent again; the next reading
    comes at the deadline, which concludes before any resend, saying why."""
    fake = FakeQFPay(reversal=[QFPayAmbiguous("no answer")])
    state = decide(fake, earlier_sends=0)["handoff"]["input"]
    assert fake.names == ["reversal"]
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 3, reversal=[cancel_answer("1143")])
    state = turn(turn(state, loop, NOW + 30), loop, NOW + 60)
    assert loop.names == ["enquiry", "enquiry"]
    assert state["status"] == "IN_PROGRESS"
    assert "may still be processing" in state["last_reason"]
    detail = turn(state, loop, state["deadline_at"])["outcome"]
    assert loop.names == ["enquiry"] * 3
    assert (detail["status"], detail["attempts"], detail["resent"]) == ("UNKNOWN", 1, False)
    assert "not confirmed by the deadline" in detail["reason"]
    assert "may still be processing" in detail["reason"]
    # ...and once QFPay shows it reversed, that is the outcome.
    shown = FakeQFPay(enquiry=[enquiry_shows(respcd="1143", cancel="1")])
    assert turn(dict(state, status="IN_PROGRESS"), shown, NOW + 90)["status"] == "CANCELLED"


SETTLE = DEFAULT_SETTLE_SECONDS
BEFORE = SETTLE_ENQUIRIES - 1  # live readings short of settling
LIVE = enquiry_shows(respcd="1143")


def almost_settled(state: dict[str, Any], loop: FakeQFPay, first: float) -> dict[str, Any]:
    """BEFORE live readings from ``first`` to ``first + SETTLE - 1``: one more at ``first + SETTLE``
    settles (enough time and enough Enquiries)."""
    for k in range(BEFORE):
        state = turn(state, loop, first + k * (SETTLE - 1) / (BEFORE - 1))
    return state


@pytest.mark.parametrize(
    "first_answer",
    [QFPayAmbiguous("reversal: HTTP 503"), cancel_answer("8888")],
    ids=["5xx", "undocumented code"],
)
def test_an_unanswered_first_cancel_is_sent_again_once_qfpay_has_shown_the_payment_live_past_its_settle_time(
    first_answer: Any,
):
    """QFPay answered our reversal with nothing we can read (an outage's 503, a code it does not
    document). Every Enquiry since shows the payment live: once that has lasted longer than QFPay
    takes to settle a cancel it received, the first one did nothing, and the loop's one resend
    goes. Its answer is in progress, so the Enquiry after it decides."""
    state = decide(FakeQFPay(reversal=[first_answer]), earlier_sends=0)["handoff"]["input"]
    assert (state["reversal_pending"], state["cancel_may_take_effect"], state["resent"]) == (
        False,
        True,
        False,
    )
    loop = FakeQFPay(
        enquiry=[LIVE] * SETTLE_ENQUIRIES + [enquiry_shows(respcd="1143", cancel="1")],
        reversal=[cancel_answer("1143")],
    )
    state = almost_settled(state, loop, NOW + 30)  # the first reading QFPay answered starts the clock
    assert loop.names == ["enquiry"] * BEFORE
    assert "may still be processing" in state["last_reason"]
    state = turn(state, loop, NOW + 30 + SETTLE)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal"]
    assert (state["status"], state["resent"], state["attempts"], state["reversal_pending"]) == (
        "IN_PROGRESS",
        True,
        2,
        True,
    )
    detail = turn(state, loop, NOW + 40 + SETTLE)["outcome"]
    assert (detail["status"], detail["resent"], detail["attempts"]) == ("CANCELLED", True, 2)
    assert loop.names.count("reversal") == 1


def test_the_settle_time_needs_enough_enquiries_in_it_not_only_time():
    """QFPay may move a payment's state along when it is asked (its Enquiry is how it tells a
    merchant to follow an order in progress): time with few Enquiries in it proves little. Turns
    that asked nothing (the budget spent, a failed turn) leave the payment read live only twice
    in the settle time: no resend until it has been read live SETTLE_ENQUIRIES times."""
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    loop = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143")] * (SETTLE_ENQUIRIES + 1), reversal=[cancel_answer("1143")]
    )
    state = turn(state, loop, NOW + 30)
    state = turn(state, loop, NOW + 30 + 2 * SETTLE)
    assert loop.names == ["enquiry", "enquiry"]
    for n in range(3, SETTLE_ENQUIRIES):
        state = turn(state, loop, NOW + 30 + 2 * SETTLE + n)
    assert loop.names == ["enquiry"] * (SETTLE_ENQUIRIES - 1)
    state = turn(state, loop, NOW + 40 + 2 * SETTLE + SETTLE_ENQUIRIES)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal"]


@pytest.mark.parametrize(
    "between",
    [QFPayUnavailable("query: HTTP 503", http_status=503), enquiry_shows(respcd="9999")],
    ids=["QFPay unreachable", "a row we cannot read"],
)
def test_the_settle_time_counts_only_unbroken_live_readings(between: Any):
    """An Enquiry QFPay did not answer, or whose row we cannot read, shows nothing about our
    cancel: the payment must read live again for the whole settle time after it."""
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    loop = FakeQFPay(
        enquiry=[LIVE] * BEFORE + [between] + [LIVE] * SETTLE_ENQUIRIES, reversal=[cancel_answer("1143")]
    )
    state = almost_settled(state, loop, NOW + 30)
    state = turn(state, loop, NOW + 30 + SETTLE)  # the reading that would have settled it
    state = almost_settled(state, loop, NOW + 31 + SETTLE)  # live again: the clock starts again
    assert loop.names == ["enquiry"] * (2 * BEFORE + 1)
    state = turn(state, loop, NOW + 31 + 2 * SETTLE)
    assert loop.names == ["enquiry"] * (2 * BEFORE + 2) + ["reversal"]
    assert state["resent"] is True


def test_after_the_settle_time_resend_whose_answer_is_lost_too_no_third_cancel_follows():
    """The resend's own answer is lost as well: it may be processing now, so the loop only asks,
    and says so; its settle time gives no further cancel (one resend per order)."""
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    loop = FakeQFPay(enquiry=[LIVE] * (BEFORE + 3), reversal=[QFPayAmbiguous("reversal: HTTP 502")] * 2)
    state = almost_settled(state, loop, NOW + 30)
    for seconds in (30 + SETTLE, 30 + 3 * SETTLE, 30 + 5 * SETTLE):
        state = turn(state, loop, NOW + seconds)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal", "enquiry", "enquiry"]
    assert (state["resent"], state["attempts"], state["cancel_may_take_effect"]) == (True, 2, True)
    assert "may still be processing" in state["last_reason"]


@pytest.mark.parametrize(
    "ours",
    [
        payment_row(syssn=REVERSAL_SYSSN, respcd="1143"),  # our cancel's own row, by its syssn
        payment_row(syssn=REVERSAL_SYSSN, respcd="1143", order_type="refund", origssn=SYSSN),
        payment_row(syssn="20261126000300020099999999", respcd="1145", order_type="refund", origssn=SYSSN),
    ],
    ids=["our cancel's row", "our cancel's row as a refund of the payment", "a reversal of the payment"],
)
def test_no_settle_resend_while_qfpay_lists_a_cancel_of_the_payment_under_way(ours: dict[str, Any]):
    """The cancel answered a code QFPay does not document, with a syssn: QFPay numbered it, and its
    Enquiry lists that cancel (or a reversal of the payment) in progress. However long the
    payment's own row reads live, a cancel is under way: nothing is sent again."""
    state = decide(FakeQFPay(reversal=[cancel_answer("8888")]), earlier_sends=0)["handoff"]["input"]
    assert (state["reversal_syssn"], state["reversal_pending"]) == (REVERSAL_SYSSN, False)
    under_way = enquiry_answer(payment_row(respcd="1143"), ours)
    loop = FakeQFPay(enquiry=[under_way] * (SETTLE_ENQUIRIES + 1), reversal=[cancel_answer("1143")])
    state = almost_settled(state, loop, NOW + 30)
    for seconds in (30 + SETTLE, 30 + 2 * SETTLE):
        state = turn(state, loop, NOW + seconds)
    assert loop.names == ["enquiry"] * (SETTLE_ENQUIRIES + 1)
    assert "under way" in state["last_reason"]


def test_a_cancel_of_the_payment_that_qfpay_lists_as_failed_does_not_stop_the_settle_clock():
    failed = payment_row(syssn=REVERSAL_SYSSN, respcd="1261", order_type="refund", origssn=SYSSN)
    state = decide(FakeQFPay(reversal=[cancel_answer("8888")]), earlier_sends=0)["handoff"]["input"]
    loop = FakeQFPay(
        enquiry=[enquiry_answer(payment_row(respcd="1143"), failed)] * SETTLE_ENQUIRIES,
        reversal=[cancel_answer("1143")],
    )
    state = turn(almost_settled(state, loop, NOW + 30), loop, NOW + 30 + SETTLE)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal"]


@pytest.mark.parametrize("live_since", [1, 0, NOW - 1])
def test_a_live_clock_from_before_the_hand_off_is_refused(live_since: float):
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    assert state["started_at"] == NOW
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    with pytest.raises(InvalidLoopState, match="live_since must be a time between the hand-off"):
        turn({**state, "live_since": live_since}, loop, NOW + 30)
    assert loop.names == []


def test_a_settle_resend_that_certainly_did_not_leave_changes_nothing_it_waits_for():
    """QFPay refused the connection for the resend: nothing was sent and nothing learnt, so the
    state is as before (the next turn may try again), not one that reads a paid row otherwise."""
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    loop = FakeQFPay(
        enquiry=[LIVE] * (SETTLE_ENQUIRIES + 1),
        reversal=[QFPayUnavailable("reversal: connection refused"), cancel_answer("1143")],
    )
    state = turn(almost_settled(state, loop, NOW + 30), loop, NOW + 30 + SETTLE)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal"]
    assert (state["resent"], state["cancel_may_take_effect"], state["reversal_pending"]) == (
        False,
        True,
        False,
    )
    state = turn(state, loop, NOW + 40 + SETTLE)
    assert loop.names == ["enquiry"] * SETTLE_ENQUIRIES + ["reversal", "enquiry", "reversal"]
    assert (state["resent"], state["reversal_pending"]) == (True, True)


def test_a_cancel_qfpay_answered_in_progress_is_never_sent_again_however_long_the_row_reads_live():
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    state = decide(fake, earlier_sends=0)["handoff"]["input"]
    loop = FakeQFPay(enquiry=[LIVE] * (SETTLE_ENQUIRIES + 2), reversal=[cancel_answer("1143")])
    state = almost_settled(state, loop, NOW + 30)
    for seconds in (30 + SETTLE, 30 + 3 * SETTLE, 30 + 5 * SETTLE):
        state = turn(state, loop, NOW + seconds)
    assert loop.names == ["enquiry"] * (SETTLE_ENQUIRIES + 2)
    assert state["status"] == "IN_PROGRESS"


@pytest.mark.parametrize("live_since", ["0", True, float("nan"), NOW + 3600])
def test_a_loop_state_whose_live_clock_is_not_a_past_time_is_refused_before_any_request(live_since: Any):
    """Whoever may start the state machine writes its input: a made-up clock could force a resend."""
    state = decide(FakeQFPay(reversal=[QFPayAmbiguous("reversal: HTTP 503")]), earlier_sends=0)["handoff"][
        "input"
    ]
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    with pytest.raises(InvalidLoopState, match="live_since must be a time between the hand-off"):
        turn({**state, "live_since": live_since}, loop, NOW + 30)
    assert loop.names == []


def test_a_refused_first_cancel_leaves_the_loop_its_one_resend():
    """QFPay answered "not paid" while the payment still reads live: nothing of ours is pending."""
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry_shows(respcd="1143")])
    state = decide(fake, earlier_sends=0)["handoff"]["input"]
    assert (state["cancel_may_take_effect"], state["resent"]) == (False, False)
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 2, reversal=[cancel_answer("1143")])
    state = turn(turn(state, loop, NOW + 30), loop, NOW + 60)
    assert loop.names == ["enquiry", "reversal", "enquiry"]
    assert (state["resent"], state["reversal_pending"]) == (True, True)


def test_after_an_earlier_attempt_may_have_sent_a_payment_qfpay_does_not_know_is_sent_the_cancel():
    """An earlier attempt's cancel went unanswered (it crashed), and QFPay's Enquiry then has no
    row naming the order at all. QFPay answers a cancel of a payment it does not know 1268 and does
    nothing, so no cancel of ours can be pending: this message is sent, and QFPay's refusal is its
    answer, the same one every message making that request gets (not an UNKNOWN from the loop
    beside another message's REJECTED)."""
    fake = FakeQFPay(enquiry=[enquiry_answer()], reversal=[cancel_answer("1268", syssn="")])
    detail = decide(fake, earlier_sends=1)["outcome"]
    assert fake.names == ["enquiry", "reversal"]
    assert (detail["status"], detail["respcd"]) == ("REJECTED", "1268")


def test_after_an_earlier_attempt_may_have_sent_our_own_reversal_row_alone_still_blocks_a_resend():
    """A row naming the order (here a reversal of it, not the payment's row) shows QFPay knows the
    payment: an earlier cancel may be processing, so nothing is sent."""
    reversal_row = payment_row(syssn="20261126000300020099999999", order_type="refund", respcd="1143")
    fake = FakeQFPay(enquiry=[enquiry_answer(reversal_row)])
    state = decide(fake, earlier_sends=1)["handoff"]["input"]
    assert fake.names == ["enquiry"]
    assert state["cancel_may_take_effect"] is True


class WindowedQFPay(FakeQFPay):
    """QFPay as it documents its Enquiry: asked without a syssn, it searches only between
    ``start_time`` and ``end_time``, on the row's ``sysdtm`` (QFPay's own clock), not on ``txdtm``."""

    def __init__(self, row: dict[str, Any], **scripts: Any) -> None:
        super().__init__(**scripts)
        self.row = row

    def enquiry(self, params: Any) -> dict[str, Any]:
        self.calls.append(("enquiry", dict(params), None))
        if params.get("syssn"):
            found = self.row["syssn"] in str(params["syssn"]).split(",")
        else:
            found = self.row["out_trade_no"] in str(params.get("out_trade_no") or "").split(",") and (
                str(params["start_time"]) <= self.row["sysdtm"] <= str(params["end_time"])
            )
        return enquiry_answer(self.row) if found else enquiry_answer()


def test_a_window_that_misses_the_payment_is_not_proof_that_qfpay_does_not_know_it():
    """The message names the payment by out_trade_no alone, and its txdtm (the merchant's clock)
    is three days before QFPay's sysdtm of the payment. An earlier attempt's cancel went unanswered
    (QFPay finds a payment by its out_trade_no whatever the window): QFPay is reversing it and the
    row reads in progress. The Enquiry asked now searches a window that misses the row: an empty
    answer there says nothing of what QFPay knows, so no second cancel may be sent."""
    order = ORDER._replace(syssn=None)
    row = payment_row(respcd="1143", sysdtm="2026-11-29 10:00:01")
    fake = WindowedQFPay(row, reversal=[cancel_answer("1143")])
    attempt = CancelAttempt(
        order=order,
        qfpay=fake.as_client(),
        routing=Routing(),
        loop=LOOP,
        clock=Clock(NOW),
        earlier_sends=1,
    )
    decision = as_dict(attempt.decide())
    assert fake.names == ["enquiry"]  # asked, sent nothing
    assert decision["handoff"]["input"]["cancel_may_take_effect"] is True


@pytest.mark.parametrize(
    "answer",
    [
        {"respcd": "0000", "resperr": "", "respmsg": ""},  # no data at all
        {**enquiry_answer(), "data": None},
        {**enquiry_answer(), "data": ["20261126000101000001"]},  # rows that are not objects
    ],
    ids=["no data", "data null", "rows not objects"],
)
def test_after_an_earlier_attempt_may_have_sent_an_enquiry_we_cannot_read_is_not_an_unknown_payment(answer):
    """QFPay's Enquiry answers with ``data``, a list of row objects. An answer without one (or with
    rows that are not objects) says nothing of what QFPay knows: it is not the empty list of a
    payment QFPay does not know, so the earlier attempt's cancel may still be processing and
    nothing is sent."""
    fake = FakeQFPay(enquiry=[answer], reversal=[cancel_answer("1143")])
    state = decide(fake, earlier_sends=1)["handoff"]["input"]
    assert fake.names == ["enquiry"]  # asked, sent nothing
    assert state["cancel_may_take_effect"] is True


def test_a_cancel_that_left_and_whose_confirming_enquiry_has_no_credentials_goes_to_the_loop():
    """The reversal was answered 0000; the Enquiry confirming it could not be signed (the secret
    unreadable, or QFPay refusing the signature after a re-read). That cancel left: the attempt
    must not fail as if nothing had been sent (its count would be handed back, and the next
    attempt could send a second cancel while the first processes). The loop asks instead."""
    from cancellation.qfpay import CredentialsUnreadable  # noqa: PLC0415

    fake = FakeQFPay(
        reversal=[cancel_answer("0000")], enquiry=[CredentialsUnreadable("the secret could not be read")]
    )
    state = decide(fake, earlier_sends=0)["handoff"]["input"]
    assert fake.names == ["reversal", "enquiry"]
    assert (state["reversal_pending"], state["cancel_may_take_effect"]) == (True, True)


class SpentBudget:
    """The merchant's budget has no slot for this invocation (cancellation.budget)."""

    def acquire(self, mchid: str | None, app_code: str) -> None:
        raise BudgetExhausted("mchid:M", NOW + 60)

    def throttled(self, mchid: str | None, app_code: str) -> None:
        raise AssertionError("nothing was sent, so nothing was throttled")


def real_client(pool: CannedPool, budget: Any = None) -> QFPayClient:
    credentials = Credentials(app_code="APP", client_key="KEY")
    return QFPayClient(
        "https://qfpay.invalid",
        lambda _force: credentials,
        http=cast(urllib3.PoolManager, pool),
        budget=budget,
    )


def test_a_cancel_is_counted_only_once_the_merchants_budget_let_it_go() -> None:
    """Counted after the wait for a budget slot, just before the bytes leave: an attempt refused a
    slot (or stopped while it waited) sent nothing and leaves the order no count, or every later
    attempt would treat a cancel that never left as one QFPay may be processing and end the order
    in the loop, UNKNOWN, with no cancel at all."""
    counted: list[int] = []
    pool = CannedPool()
    attempt = CancelAttempt(
        ORDER,
        real_client(pool, SpentBudget()),
        Routing(),
        LOOP,
        Clock(NOW),
        count_send=lambda: counted.append(1),
    )
    with pytest.raises(RetryLater):
        attempt.decide()
    assert (counted, pool.sent) == ([], [])


def test_a_cancel_is_counted_before_it_leaves() -> None:
    seen_when_sent: list[int] = []
    counted: list[int] = []

    class Watching(CannedPool):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            seen_when_sent.append(len(counted))
            return super().request(*args, **kwargs)

    pool = Watching(body=b'{"respcd": "1143", "resperr": "processing", "syssn": "20261126000101999999"}')
    attempt = CancelAttempt(
        ORDER, real_client(pool), Routing(), LOOP, Clock(NOW), count_send=lambda: counted.append(1)
    )
    attempt.decide()
    assert (seen_when_sent, counted) == ([1], [1])
