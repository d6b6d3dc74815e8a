"""No UNKNOWN from our own configuration: a turn of the loop that failed (the poll function timed
out or crashed) is asked again until the loop's deadline, and a turn never starts a resend it has no
time left to finish."""

from __future__ import annotations

from typing import Any

from cancellation.cancel import CancelAttempt, LoopPolicy
from cancellation.poll import EnquiryStep
from cancellation.qfpay import QFPayAmbiguous
from cancellation.routing import Routing
from cancellation.schedule import PollSchedule

from tests.unit.fakes import NOW, ORDER, Clock, FakeQFPay, cancel_answer, enquiry_shows

LOOP = LoopPolicy(PollSchedule(first_wait=3, max_wait=60, factor=2.0), deadline_seconds=900)


def handoff(*, answered: bool = False) -> dict[str, Any]:
    first = cancel_answer("1143") if answered else QFPayAmbiguous("no answer")
    fake = FakeQFPay(reversal=[first])
    attempt = CancelAttempt(
        order=ORDER, qfpay=fake.as_client(), routing=Routing(), loop=LOOP, clock=Clock(NOW)
    )
    state: dict[str, Any] = attempt.decide()["handoff"]["input"]
    return state


def step(fake: FakeQFPay, now: float, **kwargs: Any) -> EnquiryStep:
    return EnquiryStep(qfpay=fake.as_client(), routing=Routing(), clock=Clock(now), **kwargs)


def test_a_failed_turn_before_the_deadline_is_asked_again_not_concluded():
    state = {**handoff(answered=True), "polls": 2, "task_error": {"Error": "States.Timeout"}}
    fake = FakeQFPay()
    state = step(fake, NOW + 60).run(state)
    assert fake.calls == []  # this call only schedules the next turn
    assert state["status"] == "IN_PROGRESS"
    assert "outcome" not in state
    assert "task_error" not in state
    assert "States.Timeout" in state["last_reason"]
    assert 1 <= state["wait_seconds"] <= 60
    # The next turn asks the Enquiry as usual and decides.
    fake = FakeQFPay(enquiry=[enquiry_shows(cancel="1")])
    state = step(fake, NOW + 90).run(state)
    assert (state["status"], fake.names) == ("CANCELLED", ["enquiry"])


def test_a_failed_turn_may_have_sent_the_loops_one_resend_so_none_follows():
    """The failed turn may have died after resending: the resend counts as spent."""
    state = {**handoff(), "task_error": {"Error": "States.Timeout"}}
    state = step(FakeQFPay(), NOW + 60).run(state)
    assert state["resent"] is True
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    state = step(fake, NOW + 90).run(state)
    assert fake.names == ["enquiry"]


def test_a_failed_turn_at_the_deadline_concludes_unknown():
    state = {**handoff(answered=True), "task_error": {"Error": "States.Timeout"}}
    state = step(FakeQFPay(), state["deadline_at"]).run(state)
    assert state["status"] == "UNKNOWN"
    assert "States.Timeout" in state["outcome"]["reason"]


def test_no_resend_starts_without_the_time_to_finish_it():
    """One cancel request (and its 1108 re-read) must fit in what is left of the invocation; if
    not, the resend waits for the next turn, which starts with the whole timeout."""
    state = handoff()
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 2, reversal=[cancel_answer("1143")])
    state = step(fake, NOW + 30, resend_seconds=28.0).run(state, remaining_seconds=lambda: 20.0)
    assert fake.names == ["enquiry"]
    assert state["resent"] is False
    state = step(fake, NOW + 60, resend_seconds=28.0).run(state, remaining_seconds=lambda: 55.0)
    assert fake.names == ["enquiry", "enquiry", "reversal"]
    assert state["resent"] is True
