"""At most one further cancel per order once one may have reached QFPay (the decision ledger counts
the attempts allowed to send, before they send). A reversal QFPay is still processing looks like a
live payment on the Enquiry, so "live" alone never allows a third request."""

from __future__ import annotations

from typing import Any

from cancellation.cancel import CancelAttempt, LoopPolicy
from cancellation.poll import EnquiryStep
from cancellation.qfpay import QFPayAmbiguous
from cancellation.routing import Routing
from cancellation.schedule import PollSchedule

from tests.unit.fakes import NOW, ORDER, Clock, FakeQFPay, cancel_answer, enquiry_shows

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
    return attempt.decide()


def turn(state: dict[str, Any], fake: FakeQFPay, now: float) -> dict[str, Any]:
    return EnquiryStep(qfpay=fake.as_client(), routing=Routing(), clock=Clock(now)).run(state)


def test_after_two_possible_cancels_a_live_looking_payment_gets_none_and_goes_to_the_loop():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    state = decide(fake, earlier_sends=2)["handoff"]["input"]
    assert fake.names == ["enquiry"]  # asked first, sent nothing
    assert (state["reversal_pending"], state["resent"], state["attempts"]) == (True, True, 0)
    assert "2 earlier cancel requests" in state["resperr"]


def test_after_one_possible_cancel_the_enquiry_comes_first_then_the_one_further_cancel():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[QFPayAmbiguous("no answer")])
    state = decide(fake, earlier_sends=1)["handoff"]["input"]
    assert fake.names == ["enquiry", "reversal"]
    assert (state["reversal_pending"], state["resent"], state["attempts"]) == (False, True, 1)
    # The loop then only asks: the order's one further cancel has been sent.
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 3)
    for n in range(3):
        state = turn(state, loop, NOW + 30 * (n + 1))
    assert loop.names == ["enquiry"] * 3
    assert state["status"] == "IN_PROGRESS"


def test_a_first_attempt_sends_without_asking_and_leaves_the_loop_its_one_resend():
    fake = FakeQFPay(reversal=[QFPayAmbiguous("no answer")])
    state = decide(fake, earlier_sends=0)["handoff"]["input"]
    assert fake.names == ["reversal"]
    assert (state["reversal_pending"], state["resent"]) == (False, False)
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 2, reversal=[cancel_answer("1143")])
    state = turn(turn(state, loop, NOW + 30), loop, NOW + 60)
    assert loop.names == ["enquiry", "reversal", "enquiry"]
