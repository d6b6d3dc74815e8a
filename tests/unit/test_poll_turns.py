"""No UNKNOWN from our own configuration: a turn of the loop that failed (the poll function timed
out or crashed) is asked again until the loop's deadline, and a turn never starts a resend it has no
time left to finish."""

from __future__ import annotations

from typing import Any

from cancellation.cancel import CancelAttempt
from cancellation.poll import EnquiryStep
from cancellation.qfpay import EnquiryUnreadable, QFPayAmbiguous, QFPayUnavailable
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy, PollSchedule

from tests.unit.fakes import NOW, ORDER, Clock, FakeQFPay, as_dict, cancel_answer, enquiry_shows

LOOP = LoopPolicy(PollSchedule(first_wait=3, max_wait=60, factor=2.0), deadline_seconds=900)


def handoff(*, answered: bool = False, refused: bool = False) -> dict[str, Any]:
    """The loop's input after our cancel was answered in progress, refused ("not paid" while the
    payment reads live: the loop has its one resend), or not answered at all."""
    first = cancel_answer("1143") if answered else QFPayAmbiguous("no answer")
    if refused:
        first = cancel_answer("1261", syssn="")
    fake = FakeQFPay(reversal=[first], enquiry=[enquiry_shows(respcd="1143")])
    attempt = CancelAttempt(
        order=ORDER, qfpay=fake.as_client(), routing=Routing(), loop=LOOP, clock=Clock(NOW)
    )
    state: dict[str, Any] = as_dict(attempt.decide())["handoff"]["input"]
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
    state = handoff(refused=True)
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 2, reversal=[cancel_answer("1143")])
    state = step(fake, NOW + 30, resend_seconds=28.0).run(state, remaining_seconds=lambda: 20.0)
    assert fake.names == ["enquiry"]
    assert state["resent"] is False
    state = step(fake, NOW + 60, resend_seconds=28.0).run(state, remaining_seconds=lambda: 55.0)
    assert fake.names == ["enquiry", "enquiry", "reversal"]
    assert state["resent"] is True


# QFPay down: the loop's Enquiries are not answered (HTTP 503 read as no answer, refused
# connections, QFPay's own 429). Those turns do not spend the loop's deadline, up to the retry
# horizon the cancel function gives the loop (docs/contracts.md: "QFPay unreachable").
HORIZON = 6 * 3600
LOOP_WITH_HORIZON = LoopPolicy(LOOP.schedule, deadline_seconds=900, unreachable_allowance=HORIZON)
DOWN = QFPayUnavailable("enquiry: /trade/v1/query: HTTP 503")


def handoff_with_horizon() -> dict[str, Any]:
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    attempt = CancelAttempt(
        order=ORDER, qfpay=fake.as_client(), routing=Routing(), loop=LOOP_WITH_HORIZON, clock=Clock(NOW)
    )
    state: dict[str, Any] = as_dict(attempt.decide())["handoff"]["input"]
    return state


def run_turns(state: dict[str, Any], answers: list[Any], start: float) -> tuple[dict[str, Any], float]:
    """One turn per answer, each after the wait the previous turn asked for."""
    now = start
    for answer in answers:
        now += state["wait_seconds"]
        state = step(FakeQFPay(enquiry=[answer]), now).run(state)
        if state["status"] != "IN_PROGRESS":
            break
    return state, now


def test_the_hand_off_gives_the_loop_the_retry_horizon_for_qfpay_being_unreachable():
    state = handoff_with_horizon()
    assert state["unreachable_allowance"] == HORIZON
    assert state["deadline_at"] == NOW + 900


def test_the_loop_gets_only_what_is_left_of_the_orders_retry_horizon():
    """An order retried in the queue for 5 of its 6 hours gets 1 hour more in the loop, not 6."""
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    attempt = CancelAttempt(
        order=ORDER,
        qfpay=fake.as_client(),
        routing=Routing(),
        loop=LOOP_WITH_HORIZON,
        clock=Clock(NOW),
        first_attempt_at=NOW - 5 * 3600,
    )
    assert as_dict(attempt.decide())["handoff"]["input"]["unreachable_allowance"] == 3600
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    past_it = CancelAttempt(
        order=ORDER,
        qfpay=fake.as_client(),
        routing=Routing(),
        loop=LOOP_WITH_HORIZON,
        clock=Clock(NOW),
        first_attempt_at=NOW - 7 * 3600,
    )
    assert as_dict(past_it.decide())["handoff"]["input"]["unreachable_allowance"] == 0


def test_turns_that_cannot_reach_qfpay_do_not_spend_the_loops_deadline():
    """QFPay is down for an hour, from the loop's second minute: the cancel answered in
    progress is decided when QFPay is back, not concluded UNKNOWN at the 900 s deadline."""
    state = handoff_with_horizon()
    state, now = run_turns(state, [enquiry_shows(respcd="1143")] * 3, NOW)
    outage_ends = now + 3600
    while now < outage_ends:
        state, now = run_turns(state, [DOWN], now)
        assert state["status"] == "IN_PROGRESS", state.get("outcome")
    assert now > state["deadline_at"]
    assert state["unreachable_seconds"] >= 3600 - LOOP.schedule.max_wait
    # Back: still in progress for a few turns (within the time the outage gave back), then decided.
    state, now = run_turns(state, [enquiry_shows(respcd="1143")] * 3 + [enquiry_shows(cancel="1")], now)
    assert state["status"] == "CANCELLED", state.get("outcome")
    assert state["outcome"]["polls"] == state["polls"]


def test_qfpay_answering_does_spend_the_deadline():
    """Only unreachable turns move it: QFPay answering 'in progress' past it concludes UNKNOWN."""
    state = handoff_with_horizon()
    state, now = run_turns(state, [enquiry_shows(respcd="1143")] * 100, NOW)
    assert state["status"] == "UNKNOWN"
    assert "deadline" in state["outcome"]["reason"]
    assert now <= state["deadline_at"] + LOOP.schedule.max_wait


def test_qfpay_unreachable_for_the_whole_horizon_ends_unknown_and_says_why():
    state = handoff_with_horizon()
    state, now = run_turns(state, [DOWN] * 10_000, NOW)
    assert state["status"] == "UNKNOWN"
    assert "could not be reached" in state["outcome"]["reason"]
    assert (
        state["deadline_at"] + HORIZON <= now <= state["deadline_at"] + HORIZON + 2 * LOOP.schedule.max_wait
    )


def test_a_loop_started_without_an_allowance_keeps_its_deadline():
    """Executions started before the allowance existed (or with 0) end at their deadline."""
    state = handoff(answered=True)
    state.pop("unreachable_allowance", None)
    state, now = run_turns(state, [DOWN] * 1000, NOW)
    assert state["status"] == "UNKNOWN"
    assert now <= state["deadline_at"] + LOOP.schedule.max_wait


def test_an_answer_we_cannot_trust_is_not_an_outage():
    """An unsigned or garbled Enquiry answer came from somewhere: it moves no deadline (or anyone
    who can strip a header could keep a loop open for the whole horizon)."""
    state = handoff_with_horizon()
    unsigned = EnquiryUnreadable("enquiry: /trade/v1/query: answer has no X-QF-SIGN")
    state, now = run_turns(state, [unsigned] * 1000, NOW)
    assert state["status"] == "UNKNOWN"
    assert "X-QF-SIGN" in state["outcome"]["reason"]
    assert now <= state["deadline_at"] + LOOP.schedule.max_wait
