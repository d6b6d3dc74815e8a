"""The poll function's input is not trusted: whoever may start the state machine (or invoke the
function) chooses it. Before any request to QFPay, the order is validated exactly as the cancel
function validates a message, and the schedule and deadline must lie within what our settings allow.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cancellation.cancel import CancelAttempt
from cancellation.poll import EnquiryStep, InvalidLoopState
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy, PollSchedule

from tests.unit.fakes import NOW, ORDER, Clock, FakeQFPay, as_dict, cancel_answer, enquiry_shows

LOOP = LoopPolicy(PollSchedule(), deadline_seconds=900)


def genuine_state() -> dict[str, Any]:
    attempt = CancelAttempt(
        ORDER, FakeQFPay(reversal=[cancel_answer("1143")]).as_client(), Routing(), LOOP, Clock()
    )
    state: dict[str, Any] = as_dict(attempt.decide())["handoff"]["input"]
    passed: dict[str, Any] = json.loads(json.dumps(state))  # as Step Functions passes it
    return passed


def run(state: dict[str, Any], fake: FakeQFPay, now: float = NOW + 3) -> dict[str, Any]:
    return EnquiryStep(qfpay=fake.as_client(), routing=Routing(), clock=Clock(now)).run(state)


def test_the_state_the_cancel_function_writes_is_accepted():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    assert run(genuine_state(), fake)["status"] == "IN_PROGRESS"


ORDER_CHANGES = [
    ({"mchid": "MCH1&txamt=1"}, "mchid"),
    ({"txamt": -5}, "txamt"),
    ({"txamt": 10**15}, "txamt"),
    ({"txdtm": "9999-12-31 23:59:59"}, "txdtm"),
    ({"out_trade_no": None, "syssn": None}, "out_trade_no or syssn"),
    ({"pay_type": "80010"}, "pay_type"),
    ({"txcurrcd": "XYZ"}, "txcurrcd"),
]


@pytest.mark.parametrize(("changes", "problem"), ORDER_CHANGES)
@pytest.mark.parametrize("task_error", [None, {"Error": "States.TaskFailed"}])
def test_an_order_the_cancel_function_would_reject_is_refused_before_any_request(
    changes, problem, task_error
):
    state = genuine_state()
    state["order"] = {**state["order"], **changes}
    if task_error:
        state["task_error"] = task_error
    fake = FakeQFPay()
    with pytest.raises(InvalidLoopState, match=problem):
        run(state, fake)
    assert fake.calls == []


@pytest.mark.parametrize("order", [None, "ORDER-1", [1], {}])
def test_an_order_that_is_not_an_order_is_refused(order):
    state = {**genuine_state(), "order": order}
    with pytest.raises(InvalidLoopState, match="order"):
        run(state, FakeQFPay())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"schedule": {"first_wait": 0, "max_wait": 60, "factor": 2.0}}, "schedule"),
        ({"schedule": {"first_wait": 3, "max_wait": 10**6, "factor": 2.0}}, "schedule"),
        ({"schedule": {"first_wait": 3, "max_wait": 60, "factor": 1e9}}, "schedule"),
        ({"schedule": {"first_wait": 3, "max_wait": 60, "factor": 2.0, "late_floor": 10**7}}, "schedule"),
        ({"schedule": "fast"}, "schedule"),
        ({"schedule": None}, "schedule"),
        ({"deadline_at": NOW + 365 * 86400}, "deadline_at"),
        ({"deadline_at": "tomorrow"}, "deadline_at"),
        ({"deadline_at": None}, "deadline_at"),
        ({"endpoint": "refund"}, "endpoint"),
        ({"reversal_syssn": "X&txamt=1"}, "reversal_syssn"),
        ({"payment_syssn": "../x"}, "payment_syssn"),
        ({"polls": -1}, "polls"),
        ({"attempts": "1"}, "attempts"),
        # How far QFPay being unreachable may move the deadline: at most the longest retry horizon.
        ({"unreachable_allowance": 10**9}, "unreachable_allowance"),
        ({"unreachable_allowance": "6h"}, "unreachable_allowance"),
        ({"unreachable_seconds": -1}, "unreachable_seconds"),
        ({"unreachable_seconds": True}, "unreachable_seconds"),
    ],
)
def test_schedule_deadline_and_numbers_out_of_bounds_are_refused(changes, problem):
    state = {**genuine_state(), **changes}
    fake = FakeQFPay()
    with pytest.raises(InvalidLoopState, match=problem):
        run(state, fake)
    assert fake.calls == []


def test_the_longest_deadline_the_settings_allow_is_accepted():
    state = {**genuine_state(), "deadline_at": NOW + 3 + 86400}
    assert run(state, FakeQFPay(enquiry=[enquiry_shows(respcd="1143")]))["status"] == "IN_PROGRESS"


def test_every_problem_is_named_at_once():
    state = {**genuine_state(), "endpoint": "x", "deadline_at": None}
    with pytest.raises(InvalidLoopState) as caught:
        run(state, FakeQFPay())
    assert "endpoint" in str(caught.value)
    assert "deadline_at" in str(caught.value)
