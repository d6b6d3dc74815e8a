"""The table of decisions: what one cancel attempt and one turn of the poll loop do with QFPay's answers.

QFPay is replaced at the boundary by a scripted fake (tests/unit/fakes.py) that answers with canned
dicts or raises the client's documented failure types, QFPayUnavailable and QFPayAmbiguous.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jsonschema
import pytest
from cancellation.budget import BudgetExhausted
from cancellation.cancel import CancelAttempt, RetryLater, execution_name, started_now
from cancellation.orders import Order, parse_order_message
from cancellation.outcomes import outcome_id
from cancellation.poll import EnquiryStep
from cancellation.qfpay import QFPayAmbiguous, QFPayUnavailable
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy, PollSchedule

from tests.unit.fakes import (
    NOW,
    ORDER,
    OUT_TRADE_NO,
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

if TYPE_CHECKING:
    from cancellation.models import LoopState

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "events" / "schemas" / "payment-cancellation-outcome.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

CLOSE_ORDER = Order(
    txamt=3000,
    txdtm="2026-11-26 10:01:00",
    out_trade_no="SHOP-2026-0002",
    syssn=SYSSN,
    pay_type="800208",
    txcurrcd="HKD",
)
LOOP = LoopPolicy(PollSchedule(first_wait=3, max_wait=60, factor=2.0), deadline_seconds=900)


def live_row_of(order: Order) -> dict[str, Any]:
    """QFPay's record as the first look found it: the order's payment, live."""
    return enquiry_shows(
        respcd="1143",
        txamt=str(order.txamt),
        out_trade_no=order.out_trade_no,
        txcurrcd=order.txcurrcd or "HKD",
    )


def decide(
    fake: FakeQFPay,
    order: Order = ORDER,
    *,
    redelivered: bool = False,
    routing: Routing | None = None,
    loop: LoopPolicy = LOOP,
    now: float = NOW,
    seen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One attempt. ``seen``: the Enquiry asked just before the order was claimed (the service does
    it then for a message naming only out_trade_no); by default a live payment, except for a
    redelivered message, which (like a message naming its syssn) asks for itself."""
    attempt = CancelAttempt(
        order=order,
        qfpay=fake.as_client(),
        routing=routing or Routing(),
        loop=loop,
        clock=Clock(now),
        redelivered=redelivered,
        seen=None if redelivered else (seen or live_row_of(order)),
    )
    return as_dict(attempt.decide())


def outcome_of(result: dict[str, Any]) -> dict[str, Any]:
    # "request": QFPay refused this request; the decision belongs to the message, not the order.
    assert set(result) - {"request"} == {"outcome"}, result
    assert result.get("request", True) is True, result
    detail: dict[str, Any] = result["outcome"]
    errors = [f"{list(e.path)}: {e.message}" for e in VALIDATOR.iter_errors(detail)]
    assert not errors, errors
    return detail


def handoff_of(result: dict[str, Any]) -> dict[str, Any]:
    assert set(result) == {"handoff"}, result
    assert set(result["handoff"]) == {"name", "input"}
    state: dict[str, Any] = result["handoff"]["input"]
    return state


def retry_of(fake: FakeQFPay, **kwargs: Any) -> RetryLater:
    with pytest.raises(RetryLater) as caught:
        decide(fake, **kwargs)
    return caught.value


# --- CancelAttempt.decide: a reversal ----------------------------------------------------------


def test_reversal_0000_confirmed_cancelled_by_the_enquiry():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="1", respcd="0000")])
    detail = outcome_of(decide(fake))
    assert detail["status"] == "CANCELLED"
    assert detail["endpoint"] == "reversal"
    assert detail["respcd"] == "0000"
    assert detail["reversal_syssn"] == REVERSAL_SYSSN
    assert (detail["attempts"], detail["polls"], detail["resent"]) == (1, 0, False)
    assert detail["decided_by"] == "cancel-function"
    assert (detail["out_trade_no"], detail["syssn"], detail["txamt"]) == (OUT_TRADE_NO, SYSSN, 1250)
    assert fake.names == ["reversal", "enquiry"]


def test_reversal_request_carries_the_order():
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    decide(fake)
    assert fake.params("reversal") == [
        {
            "mchid": "MCH1",
            "syssn": SYSSN,
            "out_trade_no": OUT_TRADE_NO,
            "txamt": "1250",
            "txdtm": "2026-11-26 10:00:00",
            "udid": None,
        }
    ]


def test_confirming_enquiry_asks_for_the_payment_and_the_reversal():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="1")])
    decide(fake)
    [params] = fake.params("enquiry")
    assert params["syssn"] == f"{SYSSN},{REVERSAL_SYSSN}"
    assert params["mchid"] == "MCH1"


def test_reversal_0000_and_the_payment_had_failed_is_not_charged():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(respcd="1261")])
    assert outcome_of(decide(fake))["status"] == "NOT_CHARGED"


@pytest.mark.parametrize(
    "enquiry",
    [
        enquiry_shows(respcd="1143"),  # the reversal is not visible yet
        enquiry_shows(respcd="0000", cancel="0"),  # paid, reversal not visible yet: not REFUND_REQUIRED yet
        enquiry_answer(),  # QFPay has no row yet
        enquiry_answer(respcd="1100"),  # the query itself failed
        QFPayUnavailable("enquiry: HTTP 503", http_status=503),
    ],
    ids=["still-1143", "paid-not-yet-cancelled", "no-row", "query-failed", "unavailable"],
)
def test_reversal_0000_not_confirmed_is_handed_to_the_loop(enquiry):
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry])
    state = handoff_of(decide(fake))
    assert state["reversal_pending"] is True
    assert state["respcd"] == "0000"
    assert state["reversal_syssn"] == REVERSAL_SYSSN
    assert fake.names == ["reversal", "enquiry"]


@pytest.mark.parametrize("respcd", ["1143", "1145", "1298", "2999", "1161", "1102", "2011"])
def test_reversal_in_progress_is_handed_to_the_loop_without_asking(respcd):
    fake = FakeQFPay(reversal=[cancel_answer(respcd)])
    state = handoff_of(decide(fake))
    assert state["reversal_pending"] is True
    assert state["respcd"] == respcd
    assert state["resperr"] == f"error {respcd}"
    assert state["reversal_syssn"] == REVERSAL_SYSSN
    assert fake.names == ["reversal"]


def test_respmsg_is_used_when_resperr_is_empty():
    fake = FakeQFPay(reversal=[cancel_answer("1143", resperr="", respmsg="processing")])
    assert handoff_of(decide(fake))["resperr"] == "processing"


def test_ambiguous_reversal_is_handed_over_as_not_pending():
    fake = FakeQFPay(reversal=[QFPayAmbiguous("/trade/v1/reversal: no answer within 10.0s")])
    state = handoff_of(decide(fake))
    assert state["reversal_pending"] is False
    assert state["reversal_syssn"] is None
    assert state["respcd"] is None
    assert state["resperr"] == "/trade/v1/reversal: no answer within 10.0s"
    assert state["attempts"] == 1
    assert fake.names == ["reversal"]


@pytest.mark.parametrize(
    ("error", "throttled"),
    [
        (QFPayUnavailable("/trade/v1/reversal: HTTP 429", http_status=429), True),
        (QFPayUnavailable("/trade/v1/reversal: HTTP 503", http_status=503), False),
        (QFPayUnavailable("/trade/v1/reversal: HTTP 500", http_status=500), False),
        (QFPayUnavailable("/trade/v1/reversal: connection refused or unreachable"), False),
        (QFPayUnavailable("/trade/v1/reversal: connect timeout"), False),
    ],
)
def test_unavailable_qfpay_is_retried_later(error, throttled):
    fake = FakeQFPay(reversal=[error])
    retry = retry_of(fake)
    assert retry.throttled is throttled
    assert str(retry) == str(error)
    assert fake.names == ["reversal"]


@pytest.mark.parametrize("respcd", ["1100", "1101", "1205", "1252", "1254", "1295", "1296", "1297"])
def test_try_later_codes_are_retried_later(respcd):
    fake = FakeQFPay(reversal=[cancel_answer(respcd)])
    retry = retry_of(fake)
    assert retry.throttled is False
    assert respcd in str(retry)


def test_already_paid_needs_a_refund():
    fake = FakeQFPay(reversal=[cancel_answer("1260", syssn="")])
    detail = outcome_of(decide(fake))
    assert detail["status"] == "REFUND_REQUIRED"
    assert detail["respcd"] == "1260"
    assert detail["reversal_syssn"] is None
    assert detail["attempts"] == 1
    assert "1260" in detail["reason"]
    assert fake.names == ["reversal"]


def test_bank_risk_control_is_unknown_never_retried():
    fake = FakeQFPay(reversal=[cancel_answer("1294")])
    detail = outcome_of(decide(fake))
    assert detail["status"] == "UNKNOWN"
    assert detail["respcd"] == "1294"
    assert fake.names == ["reversal"]


@pytest.mark.parametrize(
    ("respcd", "status"),
    [
        ("1268", "REJECTED"),
        ("1104", "REJECTED"),
        ("1241", "REJECTED"),
    ],
)
def test_final_answers_become_outcomes(respcd, status):
    fake = FakeQFPay(reversal=[cancel_answer(respcd)])
    detail = outcome_of(decide(fake))
    assert detail["status"] == status
    assert detail["endpoint"] == "reversal"
    assert detail["attempts"] == 1


NOT_CHARGED_ANSWERS = ["1261", "1147", "1201", "2005", "1142", "1181", "1125", "1262", "1263", "1264"]


@pytest.mark.parametrize("respcd", NOT_CHARGED_ANSWERS)
def test_not_charged_answer_is_published_only_once_the_enquiry_shows_the_payment_ended(respcd):
    fake = FakeQFPay(reversal=[cancel_answer(respcd, syssn="")], enquiry=[enquiry_shows(respcd="1261")])
    detail = outcome_of(decide(fake))
    assert detail["status"] == "NOT_CHARGED"
    assert fake.names == ["reversal", "enquiry"]
    assert respcd in detail["reason"]
    assert "1261" in detail["reason"]  # what the Enquiry showed


@pytest.mark.parametrize("respcd", NOT_CHARGED_ANSWERS)
def test_not_charged_answer_while_the_payment_is_live_goes_to_the_loop(respcd):
    """QFPay said "not paid", but the payment is still open: the customer can still pay."""
    fake = FakeQFPay(reversal=[cancel_answer(respcd, syssn="")], enquiry=[enquiry_shows(respcd="1143")])
    state = handoff_of(decide(fake))
    assert state["respcd"] == respcd
    # Our cancel was refused: nothing of ours can take effect, so a paid row later is a refund case.
    assert state["cancel_may_take_effect"] is False
    assert fake.names == ["reversal", "enquiry"]


@pytest.mark.parametrize(
    "enquiry",
    [enquiry_answer(), QFPayUnavailable("enquiry: HTTP 503", http_status=503), enquiry_shows(cancel="9")],
    ids=["no-row", "unavailable", "unreadable-row"],
)
def test_not_charged_answer_that_the_enquiry_cannot_confirm_goes_to_the_loop(enquiry):
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry])
    handoff_of(decide(fake))


def test_not_charged_answer_and_the_payment_cancelled_meanwhile_says_cancelled():
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry_shows(cancel="2")])
    assert outcome_of(decide(fake))["status"] == "CANCELLED"


def test_not_charged_answer_and_the_payment_paid_meanwhile_needs_refund():
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry_shows(respcd="0000")])
    assert outcome_of(decide(fake))["status"] == "REFUND_REQUIRED"


@pytest.mark.parametrize("respcd", ["8888", "", None], ids=["undocumented", "empty", "missing"])
def test_a_cancel_answer_we_cannot_read_is_not_decided_and_may_have_taken_effect(respcd):
    """No refusal we can read: the cancel may have taken effect (its count is kept), so the
    loop's Enquiry decides the order and never resends; not an UNKNOWN of the message's own that
    would let a later message send another cancel."""
    answer = cancel_answer("0000")
    if respcd is None:
        del answer["respcd"]
    else:
        answer["respcd"] = respcd
    fake = FakeQFPay(reversal=[answer])
    state = handoff_of(decide(fake))
    assert (state["reversal_pending"], state["cancel_may_take_effect"]) == (False, True)
    assert state["respcd"] == (respcd or None)
    assert fake.names == ["reversal"]


# --- CancelAttempt.decide: close ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "expected"), [("GET", "GET"), ("POST", "POST")])
def test_close_is_routed_for_800208_with_the_configured_method(method, expected):
    fake = FakeQFPay(close=[cancel_answer("1143")])
    routing = Routing.parse("800008,800208,801008", method)
    state = handoff_of(decide(fake, CLOSE_ORDER, routing=routing))
    assert state["endpoint"] == "close"
    assert [(name, http) for name, _, http in fake.calls] == [("close", expected)]


def test_close_1297_is_rejected_as_not_supported():
    fake = FakeQFPay(close=[cancel_answer("1297")])
    detail = outcome_of(decide(fake, CLOSE_ORDER))
    assert detail["status"] == "REJECTED"
    assert detail["endpoint"] == "close"
    assert detail["respcd"] == "1297"
    assert "not supported" in detail["reason"]
    assert fake.names == ["close"]


@pytest.mark.parametrize("syssn", [None, ""])
def test_close_0000_without_its_own_syssn_is_rejected_as_not_supported(syssn):
    fake = FakeQFPay(close=[cancel_answer("0000", syssn=syssn)])
    detail = outcome_of(decide(fake, CLOSE_ORDER))
    assert detail["status"] == "REJECTED"
    assert "not supported" in detail["reason"]
    assert fake.names == ["close"]


def test_close_0000_confirmed_by_the_enquiry_is_cancelled():
    fake = FakeQFPay(close=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="2", pay_type="800208")])
    detail = outcome_of(decide(fake, CLOSE_ORDER))
    assert detail["status"] == "CANCELLED"
    assert detail["endpoint"] == "close"
    assert fake.names == ["close", "enquiry"]


def test_reversal_1297_is_retried_not_rejected():
    fake = FakeQFPay(reversal=[cancel_answer("1297")])
    assert isinstance(retry_of(fake), RetryLater)


# --- CancelAttempt.decide: a redelivered message -----------------------------------------------


def test_redelivered_asks_first_and_sends_nothing_when_already_cancelled():
    fake = FakeQFPay(enquiry=[enquiry_shows(cancel="1", respcd="0000")])
    detail = outcome_of(decide(fake, redelivered=True))
    assert detail["status"] == "CANCELLED"
    assert fake.names == ["enquiry"]
    assert fake.params("enquiry")[0]["syssn"] == SYSSN
    assert detail["attempts"] == 0


@pytest.mark.parametrize(
    ("row", "status"), [({"respcd": "1261"}, "NOT_CHARGED"), ({"cancel": "5"}, "REFUND_REQUIRED")]
)
def test_redelivered_final_enquiry_sends_nothing(row, status):
    fake = FakeQFPay(enquiry=[enquiry_shows(**row)])
    assert outcome_of(decide(fake, redelivered=True))["status"] == status
    assert fake.names == ["enquiry"]


@pytest.mark.parametrize("row", [{"respcd": "0000"}, {"cancel": "9"}, {"respcd": "7777"}])
def test_redelivered_paid_or_unreadable_goes_to_the_loop_without_sending(row):
    """An earlier attempt's cancel may still take effect on a paid row; a row we cannot read
    decides nothing. Neither is a reason to send, nor an outcome yet."""
    fake = FakeQFPay(enquiry=[enquiry_shows(**row)])
    state = handoff_of(decide(fake, redelivered=True))
    assert fake.names == ["enquiry"]
    assert (state["reversal_pending"], state["cancel_may_take_effect"]) == (True, True)


def test_redelivered_still_live_asks_then_sends():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1143")])
    state = handoff_of(decide(fake, redelivered=True))
    assert fake.names == ["enquiry", "reversal"]
    assert state["reversal_pending"] is True


def test_redelivered_with_the_enquiry_unavailable_is_retried_without_sending():
    fake = FakeQFPay(enquiry=[QFPayUnavailable("enquiry: HTTP 502", http_status=502)])
    retry = retry_of(fake, redelivered=True)
    assert "Enquiry before the cancel" in str(retry)
    assert fake.names == ["enquiry"]


def test_first_delivery_does_not_ask_before_sending():
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    decide(fake, redelivered=False)
    assert fake.names == ["reversal"]


# --- the hand-off ------------------------------------------------------------------------------


def contract_state_example() -> dict[str, Any]:
    text = (ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    section = text.split("## Hand-off to the wait-and-poll loop", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None
    example: dict[str, Any] = json.loads(block.group(1))
    return example


def test_handoff_input_matches_the_contract():
    fake = FakeQFPay(reversal=[cancel_answer("1143", resperr="processing")])
    state = handoff_of(decide(fake))
    example = contract_state_example()
    assert set(example) <= set(state)
    assert set(state["order"]) == set(example["order"])
    assert state == {
        "outcome_id": outcome_id(ORDER.identity),
        # Never the caller's task token: the execution history keeps the input for 90 days.
        "order": {name: value for name, value in ORDER.to_dict().items() if name != "task_token"},
        "endpoint": "reversal",
        "reversal_syssn": REVERSAL_SYSSN,
        "respcd": "1143",
        "resperr": "processing",
        "reversal_pending": True,
        "cancel_may_take_effect": True,
        "attempts": 1,
        "polls": 0,
        "resent": False,
        "started_at": NOW,
        "deadline_at": NOW + 900,
        "unreachable_allowance": 0,
        "wait_seconds": 3,
        "schedule": {"first_wait": 3, "max_wait": 60, "factor": 2.0},
        "status": "IN_PROGRESS",
    }
    for key, value in example.items():
        if value is not None and key != "order":
            assert type(state[key]) is type(value) or isinstance(state[key], float | int), key
    assert json.loads(json.dumps(state)) == state


def test_handoff_deadline_and_first_wait_follow_the_loop_policy():
    loop = LoopPolicy(PollSchedule(first_wait=5, max_wait=30, factor=1.5), deadline_seconds=120)
    fake = FakeQFPay(reversal=[cancel_answer("1143")])
    state = handoff_of(decide(fake, loop=loop, now=1800000000.5))
    assert state["started_at"] == 1800000000.5
    assert state["deadline_at"] == 1800000120.5
    assert state["wait_seconds"] == 5
    assert state["schedule"] == {"first_wait": 5, "max_wait": 30, "factor": 1.5}


def test_a_handoff_started_late_gets_the_loops_whole_length_not_its_decisions_deadline():
    """A decision replayed after a crash, or delivered by the dead-letter function, starts its loop
    later than it was decided: the loop's time counts from its start."""
    loop = LoopPolicy(PollSchedule(first_wait=5, max_wait=30, factor=1.5), deadline_seconds=120)
    state = handoff_of(decide(FakeQFPay(reversal=[cancel_answer("1143")]), loop=loop, now=1800000000.5))
    started = started_now(cast("LoopState", state), 1800000100.5)
    assert (started["started_at"], started["deadline_at"]) == (1800000100.5, 1800000220.5)
    assert {**started, "started_at": 0, "deadline_at": 0} == {**state, "started_at": 0, "deadline_at": 0}


def test_execution_name_is_equal_for_duplicates():
    raw = json.dumps({**ORDER.to_dict(), "task_token": None})
    sns = json.dumps({"Type": "Notification", "TopicArn": "arn:aws:sns:ap-east-1:1:t", "Message": raw})
    names = set()
    for body, now in ((raw, NOW), (sns, NOW + 3600)):
        fake = FakeQFPay(reversal=[cancel_answer("1143")])
        result = decide(fake, parse_order_message(body), now=now)
        names.add(result["handoff"]["name"])
    assert names == {execution_name(ORDER)}


def test_execution_name_differs_across_payments_and_merchants():
    """One payment, one name (tests/unit/test_one_payment.py); different payments, different names."""
    orders = [
        ORDER,
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn="20261126000101000002"),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no=OUT_TRADE_NO, mchid="MCH1"),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no=OUT_TRADE_NO, mchid="MCH2"),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no=OUT_TRADE_NO),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no="SHOP-2026-0003", mchid="MCH1"),
    ]
    assert len({execution_name(o) for o in orders}) == len(orders)


def test_execution_name_is_a_valid_step_functions_name():
    longest = Order(txamt=1, txdtm=ORDER.txdtm, out_trade_no="X" * 128, mchid="M" * 64)
    for order in (ORDER, longest):
        name = execution_name(order)
        assert 1 <= len(name) <= 80
        assert re.fullmatch(r"[A-Za-z0-9_-]+", name)


# --- EnquiryStep.run ---------------------------------------------------------------------------


def handoff_state(
    *, pending: bool = True, order: Order = ORDER, routing: Routing | None = None
) -> dict[str, Any]:
    first = QFPayAmbiguous("no answer") if not pending else cancel_answer("1143")
    script = {
        "close" if (routing or Routing()).endpoint_for(order.pay_type) == "close" else "reversal": [first]
    }
    return handoff_of(decide(FakeQFPay(**script), order, routing=routing))


def refused_state(*, order: Order = ORDER, routing: Routing | None = None) -> dict[str, Any]:
    """The loop's input after QFPay refused our cancel ("not paid") while the payment read live:
    nothing of ours can take effect, so the loop has its one resend."""
    endpoint = "close" if (routing or Routing()).endpoint_for(order.pay_type) == "close" else "reversal"
    script = {endpoint: [cancel_answer("1261", syssn="")], "enquiry": [enquiry_shows(respcd="1143")]}
    return handoff_of(decide(FakeQFPay(**script), order, routing=routing))


def run(state: dict[str, Any], fake: FakeQFPay, *, now: float = NOW + 3, routing: Routing | None = None):
    step = EnquiryStep(qfpay=fake.as_client(), routing=routing or Routing(), clock=Clock(now))
    return step.run(state)


def loop_outcome(state: dict[str, Any]) -> dict[str, Any]:
    assert state["status"] != "IN_PROGRESS"
    detail: dict[str, Any] = state["outcome"]
    assert not [e.message for e in VALIDATOR.iter_errors(detail)]
    assert detail["status"] == state["status"]
    assert detail["decided_by"] == "poll-loop"
    return detail


def test_in_progress_waits_by_the_schedule():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143"), enquiry_shows(respcd="1145")])
    state = run(handoff_state(), fake)
    assert state["status"] == "IN_PROGRESS"
    assert state["polls"] == 1
    assert state["wait_seconds"] == 6
    assert "outcome" not in state
    state = run(state, fake, now=NOW + 10)
    assert (state["status"], state["polls"], state["wait_seconds"]) == ("IN_PROGRESS", 2, 12)
    assert fake.names == ["enquiry", "enquiry"]
    assert fake.params("enquiry")[0]["syssn"] == f"{SYSSN},{REVERSAL_SYSSN}"


def test_run_does_not_change_its_input():
    state = handoff_state()
    before = json.loads(json.dumps(state))
    run(state, FakeQFPay(enquiry=[enquiry_shows(respcd="1143")]))
    assert state == before


@pytest.mark.parametrize(
    ("row", "status"),
    [
        ({"cancel": "1", "respcd": "0000"}, "CANCELLED"),
        ({"cancel": "2"}, "CANCELLED"),
        ({"respcd": "1261"}, "NOT_CHARGED"),
        ({"cancel": "5", "respcd": "0000"}, "REFUND_REQUIRED"),
    ],
)
def test_final_enquiry_is_the_outcome(row, status):
    state = run(handoff_state(), FakeQFPay(enquiry=[enquiry_shows(**row)]))
    detail = loop_outcome(state)
    assert detail["status"] == status
    assert (detail["polls"], detail["attempts"], detail["resent"]) == (1, 1, False)
    assert detail["endpoint"] == "reversal"
    assert detail["reversal_syssn"] == REVERSAL_SYSSN
    assert detail["respcd"] == row.get("respcd", "1143")


def test_final_answer_wins_even_past_the_deadline():
    state = handoff_state()
    fake = FakeQFPay(enquiry=[enquiry_shows(cancel="1")])
    assert loop_outcome(run(state, fake, now=state["deadline_at"] + 60))["status"] == "CANCELLED"


@pytest.mark.parametrize("late", [0.0, 1.0, 3600.0])
def test_past_the_deadline_is_unknown(late):
    state = handoff_state()
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    detail = loop_outcome(run(state, fake, now=state["deadline_at"] + late))
    assert detail["status"] == "UNKNOWN"
    assert "deadline" in detail["reason"]
    assert detail["polls"] == 1


def test_wait_never_runs_past_the_deadline():
    state = {**handoff_state(), "polls": 6}
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    state = run(state, fake, now=state["deadline_at"] - 2.5)
    assert state["status"] == "IN_PROGRESS"
    assert 1 <= state["wait_seconds"] <= 3


@pytest.mark.parametrize(
    ("task_error", "named"),
    [({"Error": "States.TaskFailed", "Cause": "boom"}, "States.TaskFailed"), ("Lambda.Unknown", "error")],
)
def test_task_error_at_the_deadline_concludes_unknown_without_calling_qfpay(task_error, named):
    state = {**handoff_state(), "polls": 4, "task_error": task_error}
    fake = FakeQFPay()
    result = run(state, fake, now=state["deadline_at"])
    detail = loop_outcome(result)
    assert detail["status"] == "UNKNOWN"
    assert named in detail["reason"]
    assert fake.calls == []
    assert "task_error" not in result
    assert detail["polls"] == 4


def test_live_payment_without_a_pending_cancel_is_resent_once():
    state = refused_state()
    assert (state["reversal_pending"], state["attempts"]) == (False, 1)
    fake = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143"), enquiry_shows(respcd="1143")],
        reversal=[cancel_answer("1143")],
    )
    state = run(state, fake)
    assert fake.names == ["enquiry", "reversal"]
    assert state["status"] == "IN_PROGRESS"
    assert (state["resent"], state["attempts"], state["reversal_pending"]) == (True, 2, True)
    assert state["reversal_syssn"] == REVERSAL_SYSSN
    state = run(state, fake, now=NOW + 10)
    assert fake.names == ["enquiry", "reversal", "enquiry"]
    assert state["attempts"] == 2


def test_resend_is_never_repeated_even_when_its_answer_was_lost():
    fake = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143")] * 3,
        reversal=[QFPayAmbiguous("no answer within 10.0s")],
    )
    state = run(refused_state(), fake)
    assert (state["resent"], state["attempts"], state["reversal_pending"]) == (True, 2, False)
    state = run(state, fake, now=NOW + 10)
    state = run(state, fake, now=NOW + 20)
    assert fake.names.count("reversal") == 1
    assert state["status"] == "IN_PROGRESS"


def test_resend_that_certainly_failed_may_be_tried_next_turn():
    fake = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143")] * 2,
        reversal=[QFPayUnavailable("HTTP 503", http_status=503), cancel_answer("1143")],
    )
    state = run(refused_state(), fake)
    assert (state["resent"], state["attempts"]) == (False, 1)
    state = run(state, fake, now=NOW + 10)
    assert (state["resent"], state["attempts"]) == (True, 2)
    assert fake.names == ["enquiry", "reversal", "enquiry", "reversal"]


def test_resend_answered_try_later_may_be_tried_next_turn():
    fake = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143")] * 2,
        reversal=[cancel_answer("1100"), cancel_answer("1143")],
    )
    state = run(refused_state(), fake)
    state = run(state, fake, now=NOW + 10)
    assert fake.names == ["enquiry", "reversal", "enquiry", "reversal"]
    assert state["reversal_pending"] is True


def test_resend_answered_with_a_final_code_is_the_outcome():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], reversal=[cancel_answer("1260", syssn="")])
    detail = loop_outcome(run(refused_state(), fake))
    assert detail["status"] == "REFUND_REQUIRED"
    assert (detail["resent"], detail["attempts"], detail["respcd"]) == (True, 2, "1260")


@pytest.mark.parametrize("respcd", ["8888", ""], ids=["undocumented", "empty"])
def test_resend_answered_with_a_code_we_cannot_read_is_never_resent_and_the_enquiry_decides(respcd):
    """No refusal we can read: the resend may have taken effect. Not an UNKNOWN at once (the
    payment may well end cancelled): the loop keeps asking, as after a lost answer."""
    fake = FakeQFPay(
        enquiry=[enquiry_shows(respcd="1143"), enquiry_shows(respcd="0000", cancel="1")],
        reversal=[cancel_answer(respcd)],
    )
    state = run(refused_state(), fake)
    assert state["status"] == "IN_PROGRESS"
    assert (state["resent"], state["cancel_may_take_effect"]) == (True, True)
    detail = loop_outcome(run(state, fake, now=NOW + 10))
    assert detail["status"] == "CANCELLED"
    assert fake.names == ["enquiry", "reversal", "enquiry"]


@pytest.mark.parametrize("answer", ["1143", "0000"])
def test_a_cancel_answer_whose_syssn_is_not_one_keeps_none(answer):
    """QFPay's answer names the reversal's own syssn; one that is not a syssn (a gateway's page,
    say) is not carried into the loop, whose every turn would refuse the state."""
    fake = FakeQFPay(reversal=[cancel_answer(answer, syssn="<html>")], enquiry=[enquiry_shows(respcd="1143")])
    state = handoff_of(decide(fake))
    assert state["reversal_syssn"] is None


def test_resend_of_a_close_uses_close_and_its_method():
    routing = Routing.parse("800008,800208,801008", "POST")
    state = refused_state(order=CLOSE_ORDER, routing=routing)
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")], close=[cancel_answer("1143")])
    state = run(state, fake, routing=routing)
    assert [(name, http) for name, _, http in fake.calls] == [("enquiry", None), ("close", "POST")]
    assert state["resent"] is True


def test_pending_cancel_is_not_resent():
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")])
    state = run(handoff_state(pending=True), fake)
    assert fake.names == ["enquiry"]
    assert (state["resent"], state["attempts"]) == (False, 1)


def test_payment_not_found_is_not_resent():
    fake = FakeQFPay(enquiry=[enquiry_answer()])
    state = run(handoff_state(pending=False), fake)
    assert fake.names == ["enquiry"]
    assert state["status"] == "IN_PROGRESS"


@pytest.mark.parametrize(
    "failure",
    [
        QFPayUnavailable("enquiry: HTTP 503", http_status=503),
        QFPayUnavailable("enquiry: connection refused or unreachable"),
        enquiry_answer(payment_row(cancel="1"), respcd="1100"),
    ],
    ids=["http-503", "refused", "query-respcd-1100"],
)
def test_enquiry_unavailable_is_still_in_progress(failure):
    fake = FakeQFPay(enquiry=[failure])
    state = run(handoff_state(pending=False), fake)
    assert state["status"] == "IN_PROGRESS"
    assert state["polls"] == 1
    assert state["wait_seconds"] == 6
    assert "Enquiry unavailable" in state["last_reason"]
    assert fake.names == ["enquiry"]  # not live as far as we know: nothing resent


# --- the loop: a paid row while our cancel may still take effect ----------------------------------


@pytest.mark.parametrize("pending", [True, False], ids=["in-progress-answer", "no-answer"])
def test_paid_row_while_our_cancel_may_take_effect_waits_for_it(pending):
    state = handoff_state(pending=pending)
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="0000"), enquiry_shows(respcd="0000", cancel="1")])
    state = run(state, fake)
    assert state["status"] == "IN_PROGRESS"
    assert "may still take effect" in state["last_reason"]
    assert fake.names == ["enquiry"]  # paid: nothing is resent
    # The reversal then completes: the payment was cancelled, no refund needed.
    assert loop_outcome(run(state, fake, now=NOW + 10))["status"] == "CANCELLED"


def test_paid_row_while_our_cancel_may_take_effect_is_unknown_at_the_deadline():
    state = handoff_state()
    fake = FakeQFPay(enquiry=[enquiry_shows(respcd="0000")])
    detail = loop_outcome(run(state, fake, now=state["deadline_at"]))
    assert detail["status"] == "UNKNOWN"
    assert "may still take effect" in detail["reason"]


def test_paid_row_and_our_cancel_row_failed_needs_refund():
    state = handoff_state()
    own_row = payment_row(syssn=REVERSAL_SYSSN, respcd="1261")
    fake = FakeQFPay(enquiry=[enquiry_answer(own_row, payment_row(respcd="0000"))])
    assert loop_outcome(run(state, fake))["status"] == "REFUND_REQUIRED"


def test_paid_row_after_our_cancel_was_refused_needs_refund():
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry_shows(respcd="1143")])
    state = handoff_of(decide(fake))
    detail = loop_outcome(run(state, FakeQFPay(enquiry=[enquiry_shows(respcd="0000")])))
    assert detail["status"] == "REFUND_REQUIRED"


def test_live_payment_after_a_not_charged_answer_is_unknown_at_the_deadline_not_not_charged():
    fake = FakeQFPay(reversal=[cancel_answer("1261", syssn="")], enquiry=[enquiry_shows(respcd="1143")])
    state = handoff_of(decide(fake))
    # The loop may resend once (nothing of ours is pending); QFPay refuses again.
    loop = FakeQFPay(enquiry=[enquiry_shows(respcd="1143")] * 2, reversal=[cancel_answer("1261", syssn="")])
    state = run(state, loop)
    assert state["status"] == "IN_PROGRESS"
    assert state["cancel_may_take_effect"] is False
    detail = loop_outcome(run(state, loop, now=state["deadline_at"]))
    assert detail["status"] == "UNKNOWN"
    assert loop.names.count("reversal") == 1


# --- the loop: rows we cannot read --------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {"respcd": "7777"},
        {"respcd": None},
        {"respcd": "1205"},
        {"cancel": "9"},
        {"cancel": "7", "respcd": "0000"},
    ],
)
def test_row_we_cannot_read_asks_again_and_is_unknown_with_the_row_at_the_deadline(row):
    state = handoff_state(pending=False)  # nothing pending: even so, an unreadable row is not "live"
    fake = FakeQFPay(enquiry=[enquiry_shows(**row)] * 2)
    state = run(state, fake)
    assert state["status"] == "IN_PROGRESS"
    assert fake.names == ["enquiry"]  # nothing resent on a row we cannot read
    detail = loop_outcome(run(state, fake, now=state["deadline_at"]))
    assert detail["status"] == "UNKNOWN"
    assert "cannot be read" in detail["reason"]
    assert f'"syssn": "{SYSSN}"' in detail["reason"]


def test_long_loop_keeps_waiting_at_max_wait():
    state = {**handoff_state(), "polls": 1100, "deadline_at": NOW + 86400}
    state = run(state, FakeQFPay(enquiry=[enquiry_shows(respcd="1143")]))
    assert (state["status"], state["wait_seconds"]) == ("IN_PROGRESS", 60)


@pytest.mark.parametrize(
    ("respcd", "status", "belongs_to_the_request"),
    [
        ("1266", "REJECTED", True),  # wrong amount
        ("1267", "REJECTED", True),
        ("1268", "REJECTED", True),  # not (yet) known to QFPay
        ("1136", "REJECTED", True),
        ("1104", "REJECTED", True),
        ("1294", "UNKNOWN", True),  # bank risk control refused this request
        ("1260", "REFUND_REQUIRED", False),  # already paid: a fact about the payment
    ],
)
def test_only_a_refusal_of_the_request_belongs_to_the_request(respcd, status, belongs_to_the_request):
    result = decide(FakeQFPay(reversal=[cancel_answer(respcd)]))
    assert outcome_of(result)["status"] == status
    assert ("request" in result) is belongs_to_the_request


def test_close_not_supported_belongs_to_the_request():
    result = decide(FakeQFPay(close=[cancel_answer("1297", syssn=None)]), CLOSE_ORDER)
    assert outcome_of(result)["status"] == "REJECTED"
    assert result["request"] is True


def test_a_payment_fact_from_the_enquiry_belongs_to_the_order():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[enquiry_shows(cancel="1", respcd="0000")])
    assert "request" not in decide(fake)


def test_the_handoff_never_carries_the_callers_token():
    order = ORDER._replace(task_token="CALLER-TOKEN-0123456789")
    result = decide(FakeQFPay(reversal=[cancel_answer("1143")]), order)
    assert "CALLER-TOKEN" not in json.dumps(result)


# --- the merchant's shared request budget --------------------------------------------------------


def spent(free_in: float, now: float = NOW) -> BudgetExhausted:
    return BudgetExhausted("mchid:MCH1", next_free_at=now + free_in)


def test_a_cancel_without_budget_comes_back_when_the_budget_has_a_slot():
    retry = retry_of(FakeQFPay(reversal=[spent(42.5)]))
    assert retry.budget_free_at == NOW + 42.5
    assert not retry.throttled


def test_a_redelivered_cancel_without_budget_for_its_first_enquiry_comes_back_later():
    fake = FakeQFPay(enquiry=[spent(7)])
    assert retry_of(fake, redelivered=True).budget_free_at == NOW + 7
    assert fake.names == ["enquiry"]


def test_a_confirming_enquiry_without_budget_hands_the_order_to_the_loop():
    fake = FakeQFPay(reversal=[cancel_answer("0000")], enquiry=[spent(30)])
    state = handoff_of(decide(fake))
    assert (state["respcd"], state["reversal_pending"]) == ("0000", True)


@pytest.mark.parametrize("late", [0.0, 3600.0])
def test_the_loop_never_concludes_because_of_our_own_budget(late):
    """Not even past the deadline: nothing was asked, so nothing is known. It waits for the slot."""
    state = handoff_state()
    now = state["deadline_at"] + late
    fake = FakeQFPay(enquiry=[spent(9, now)])
    after = run(state, fake, now=now)
    assert after["status"] == "IN_PROGRESS"
    assert "outcome" not in after
    assert after["polls"] == state["polls"]  # no Enquiry was asked
    assert after["wait_seconds"] >= 9


def test_far_from_its_deadline_the_loop_yields_to_cancels_for_at_least_its_schedules_wait():
    state = handoff_state()
    fake = FakeQFPay(enquiry=[spent(2)])
    after = run(state, fake, now=NOW + 3)
    assert after["status"] == "IN_PROGRESS"
    assert after["wait_seconds"] == PollSchedule.from_dict(state["schedule"]).wait_after(0)
