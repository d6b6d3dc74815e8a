"""The poll schedule and the functions' environment."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from cancellation.budget import BudgetPolicy
from cancellation.callers import caller_hold_seconds
from cancellation.qfpay import Timeouts
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy, PollSchedule
from cancellation.settings import (
    CancelSettings,
    ConfigurationError,
    QFPaySettings,
    call_tracing,
    cancel_settings,
    check_base_url,
    poll_settings,
)

# --- PollSchedule ------------------------------------------------------------------------------


def waits(schedule: PollSchedule, count: int) -> list[int]:
    """The first ``count`` waits, as the loop asks for them one turn at a time."""
    return [schedule.wait_after(polls) for polls in range(count)]


def enquiry_times(schedule: PollSchedule, count: int) -> list[int]:
    """Seconds after the hand-off at which the first ``count`` enquiries are made."""
    return list(itertools.accumulate(waits(schedule, count)))


def test_default_schedule_fast_phase_then_waits_proportional_to_elapsed_time():
    schedule = PollSchedule()
    assert waits(schedule, 16) == [3, 6, 12, 20, 20, 20, 20, 20, 24, 29, 34, 41, 49, 59, 60, 60]
    assert enquiry_times(schedule, 10) == [3, 9, 21, 41, 61, 81, 101, 121, 145, 174]


@pytest.mark.parametrize(
    "schedule",
    [PollSchedule(), PollSchedule(3, 120, 2.0), PollSchedule(2, 300, 3.0, 0.1, 10), PollSchedule(5, 60, 1.5)],
)
def test_a_decision_is_noticed_at_most_max_of_floor_and_fraction_late(schedule):
    times = [0, *enquiry_times(schedule, 200)]
    for decided in range(1, 3000):
        noticed = next(t for t in times if t >= decided)
        allowed = max(schedule.late_floor, schedule.late_fraction * decided, schedule.first_wait)
        assert noticed - decided <= allowed, decided


def test_default_schedule_costs_a_fraction_of_a_fixed_3_second_poll_from_120_seconds_on():
    # Each turn of the loop is 3 state transitions; the decided branch adds 4.
    times = enquiry_times(PollSchedule(), 100)
    for decided in range(120, 900):
        enquiries = next(i + 1 for i, t in enumerate(times) if t >= decided)
        fixed_enquiries = -(-decided // 3)
        assert (3 * enquiries + 4) <= 0.3 * (3 * fixed_enquiries + 4), decided


def test_previous_geometric_rule_is_still_expressible():
    geometric = PollSchedule(3, 60, 2.0, late_fraction=0, late_floor=60)
    assert waits(geometric, 8) == [3, 6, 12, 24, 48, 60, 60, 60]


def test_waits_grow_by_the_factor_up_to_the_allowed_lateness_and_max_wait():
    assert waits(PollSchedule(first_wait=5, max_wait=100, factor=3.0), 5) == [5, 15, 20, 20, 20]
    assert waits(PollSchedule(5, 100, 3.0, late_floor=100), 5) == [5, 15, 45, 100, 100]


def test_factor_one_keeps_a_constant_wait():
    schedule = PollSchedule(first_wait=4, max_wait=4, factor=1.0)
    assert {schedule.wait_after(n) for n in range(50)} == {4}
    # A fixed 3 s poll, whatever the lateness settings.
    assert set(waits(PollSchedule(3, 60, 1.0), 100)) == {3}


def test_first_wait_is_a_lower_bound_even_above_the_floor():
    assert waits(PollSchedule(first_wait=30, max_wait=300, factor=2.0), 4) == [30, 30, 30, 30]


def test_waits_never_shrink_and_are_whole_seconds():
    schedule = PollSchedule(first_wait=2, max_wait=45, factor=1.7)
    listed = waits(schedule, 30)
    assert listed == sorted(listed)
    assert all(type(w) is int for w in listed)
    assert listed[0] == 2
    assert listed[-1] == 45


@pytest.mark.parametrize(
    ("first_wait", "max_wait", "factor"),
    [(0, 60, 2.0), (-1, 60, 2.0), (10, 5, 2.0), (3, 60, 0.5), (3, 60, 0.0), (3, 60, -2.0), (3, 60, math.nan)],
)
def test_bad_schedules_are_rejected(first_wait, max_wait, factor):
    with pytest.raises(ValueError, match="first_wait <= max_wait and factor >= 1"):
        PollSchedule(first_wait, max_wait, factor)


@pytest.mark.parametrize(("late_fraction", "late_floor"), [(-0.1, 20), (1.5, 20), (math.inf, 20), (0.2, 0)])
def test_bad_lateness_is_rejected(late_fraction, late_floor):
    with pytest.raises(ValueError, match="0 <= late_fraction <= 1 and late_floor >= 1"):
        PollSchedule(late_fraction=late_fraction, late_floor=late_floor)


def test_schedule_round_trips_through_its_dict():
    schedule = PollSchedule(first_wait=2, max_wait=30, factor=1.5)
    # Default lateness settings are left out: the execution input keeps its documented shape.
    assert schedule.to_dict() == {"first_wait": 2, "max_wait": 30, "factor": 1.5}
    assert PollSchedule.from_dict(schedule.to_dict()) == schedule
    # As the state machine may hand numbers back (JSON has no int/float distinction).
    assert PollSchedule.from_dict({"first_wait": 2.0, "max_wait": 30.0, "factor": 2}) == PollSchedule(
        2, 30, 2.0
    )
    custom = PollSchedule(3, 60, 2.0, late_fraction=0, late_floor=60)
    assert custom.to_dict() == {
        "first_wait": 3,
        "max_wait": 60,
        "factor": 2.0,
        "late_fraction": 0.0,
        "late_floor": 60,
    }
    assert PollSchedule.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


@pytest.mark.parametrize(
    ("schedule", "polls"),
    [(PollSchedule(), 1100), (PollSchedule(1, 5, 10.0), 400), (PollSchedule(3, 3600, 1.1, 0.01, 1), 5000)],
)
def test_wait_after_many_polls_stays_at_max_wait(schedule, polls):
    assert schedule.wait_after(polls) == schedule.max_wait


# --- settings ----------------------------------------------------------------------------------

CANCEL_ENV = {
    "QFPAY_BASE_URL": "https://test-openapi-hk.qfapi.com",
    "QFPAY_SECRET_ID": "qfpay/credentials",
    "EVENT_BUS_NAME": "payment-outcomes",
    "STATE_MACHINE_ARN": "arn:aws:states:ap-east-1:123456789012:stateMachine:cancellation-poll",
    "LEDGER_TABLE": "cancellation-ledger",
    "BUDGET_TABLE": "cancellation-ledger",
}
POLL_ENV = {k: CANCEL_ENV[k] for k in ("QFPAY_BASE_URL", "QFPAY_SECRET_ID", "BUDGET_TABLE")}


def problems_of(call, env) -> str:
    with pytest.raises(ConfigurationError) as caught:
        call(env)
    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    return message


def test_cancel_settings_defaults():
    settings = cancel_settings(CANCEL_ENV)
    assert settings == CancelSettings(
        qfpay=QFPaySettings(
            base_url="https://test-openapi-hk.qfapi.com",
            secret_id="qfpay/credentials",
            routing=Routing(frozenset({"800008", "800208", "801008"}), "GET"),
            timeouts=Timeouts(connect=3.05, read=10.0),
            secret_max_age=300,
            verify_response_signature=False,
            budget=BudgetPolicy(per_second=100, per_minute=400, margin=0.02, pause_after_429=1.0),
            budget_table="cancellation-ledger",
        ),
        event_bus_name="payment-outcomes",
        state_machine_arn=CANCEL_ENV["STATE_MACHINE_ARN"],
        ledger_table="cancellation-ledger",
        loop=LoopPolicy(PollSchedule(3, 60, 2.0), 900, unreachable_allowance=6 * 3600),
        ledger_expiry=48 * 3600,
        retry_base_delay=10,
        retry_max_delay=900,
        batch_concurrency=10,
        retry_horizon=6 * 3600,
    )


def test_poll_settings_defaults():
    settings = poll_settings(POLL_ENV)
    assert settings.base_url == "https://test-openapi-hk.qfapi.com"
    assert settings.secret_id == "qfpay/credentials"
    assert settings.routing == Routing()
    assert settings.timeouts == Timeouts()
    assert settings.settle_seconds == 120
    assert poll_settings({**POLL_ENV, "QFPAY_SETTLE_SECONDS": "30"}).settle_seconds == 30


def test_settings_read_every_variable():
    env = {
        **CANCEL_ENV,
        "CLOSE_PAY_TYPES": "800201, 800212",
        "CLOSE_HTTP_METHOD": "post",
        "POLL_FIRST_WAIT_SECONDS": "5",
        "POLL_MAX_WAIT_SECONDS": "120",
        "POLL_BACKOFF_FACTOR": "1.5",
        "POLL_DEADLINE_SECONDS": "1800",
        "QFPAY_CONNECT_TIMEOUT_SECONDS": "2",
        "QFPAY_READ_TIMEOUT_SECONDS": "15",
        "SECRET_MAX_AGE_SECONDS": "60",
        "QFPAY_VERIFY_RESPONSE_SIGNATURE": "true",
        "BATCH_CONCURRENCY": "8",
        "QFPAY_MAX_REQUESTS_PER_SECOND": "50",
        "QFPAY_MAX_REQUESTS_PER_MINUTE": "300",
        "QFPAY_BUDGET_MARGIN": "0.1",
        "QFPAY_PAUSE_AFTER_429_SECONDS": "3",
        "QFPAY_LIMIT_WINDOW_SCALE": "0.1",
        "RETRY_HORIZON_SECONDS": "3600",
        "FUNCTION_TIMEOUT_SECONDS": "190",  # ten requests at these QFPay timeouts need 183 s
    }
    settings = cancel_settings(env)
    assert settings.qfpay.budget == BudgetPolicy(50, 300, 0.1, 3.0, 0.1)
    assert settings.retry_horizon == 3600
    assert settings.qfpay.routing == Routing(frozenset({"800201", "800212"}), "POST")
    assert settings.loop == LoopPolicy(PollSchedule(5, 120, 1.5), 1800, unreachable_allowance=3600)
    assert settings.qfpay.timeouts == Timeouts(connect=2.0, read=15.0)
    assert settings.qfpay.secret_max_age == 60
    assert settings.qfpay.verify_response_signature is True
    assert settings.batch_concurrency == 8


def test_values_are_stripped_and_blank_means_default():
    env = {
        **CANCEL_ENV,
        "QFPAY_BASE_URL": "  https://openapi-hk.qfapi.com \n",
        "POLL_DEADLINE_SECONDS": " ",
        "CLOSE_HTTP_METHOD": "",
    }
    settings = cancel_settings(env)
    assert settings.qfpay.base_url == "https://openapi-hk.qfapi.com"
    assert settings.loop.deadline_seconds == 900
    assert settings.qfpay.routing.close_method == "GET"


def test_every_missing_cancel_variable_is_reported_in_one_error():
    message = problems_of(cancel_settings, {})
    for name in (
        "QFPAY_BASE_URL",
        "QFPAY_SECRET_ID",
        "EVENT_BUS_NAME",
        "STATE_MACHINE_ARN",
        "LEDGER_TABLE",
        "BUDGET_TABLE",
    ):
        assert f"{name} is required" in message
    assert message.count("is required") == 6


def test_every_missing_poll_variable_is_reported_in_one_error():
    message = problems_of(poll_settings, {"EVENT_BUS_NAME": "x"})
    assert "QFPAY_BASE_URL is required" in message
    assert "QFPAY_SECRET_ID is required" in message
    assert "BUDGET_TABLE is required" in message
    assert message.count("is required") == 3


def test_blank_required_variable_counts_as_missing():
    assert "QFPAY_SECRET_ID is required" in problems_of(poll_settings, {**POLL_ENV, "QFPAY_SECRET_ID": "   "})


@pytest.mark.parametrize(
    "url",
    [
        "https://openapi-hk.qfapi.com",
        "https://test-openapi-hk.qfapi.com/",
        "https://openapi-int.qfapi.com:443",
        "http://127.0.0.1:8080",
        "http://127.0.0.1",
        "http://127.5.6.7:9000",
        "http://localhost",
        "http://localhost:8080/",
        "http://[::1]",
        "http://[::1]:8080",
    ],
)
def test_base_url_accepted(url):
    assert check_base_url(url) is None
    assert poll_settings({**POLL_ENV, "QFPAY_BASE_URL": url}).base_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.1", "must use https"),
        ("http://10.0.0.1:8080", "must use https"),
        ("http://example.com", "must use https"),
        ("http://openapi-hk.qfapi.com", "must use https"),
        ("http://localhost.example.com", "must use https"),
        ("http://127.0.0.1.nip.io", "must use https"),
        ("http://0.0.0.0:8080", "must use https"),
        ("ftp://openapi-hk.qfapi.com", "must use https"),
        ("ws://localhost", "must use https"),
        ("/trade/v1", "must be an absolute URL"),
        ("openapi-hk.qfapi.com", "must be an absolute URL"),
        ("https://", "must be an absolute URL"),
    ],
)
def test_base_url_refused_with_a_clear_message(url, expected):
    problem = check_base_url(url)
    assert problem is not None
    assert expected in problem
    assert problem.startswith("QFPAY_BASE_URL must ")
    assert repr(url) in problem
    message = problems_of(poll_settings, {**POLL_ENV, "QFPAY_BASE_URL": url})
    assert expected in message


def test_malformed_base_url_is_a_configuration_error():
    message = problems_of(poll_settings, {"QFPAY_BASE_URL": "https://[::1"})
    assert "QFPAY_BASE_URL" in message
    assert "QFPAY_SECRET_ID is required" in message


def test_bad_routing_is_reported():
    message = problems_of(
        poll_settings, {**POLL_ENV, "CLOSE_PAY_TYPES": "800008,WECHAT", "CLOSE_HTTP_METHOD": "PUT"}
    )
    assert "CLOSE_PAY_TYPES holds values that are not six-digit PayTypes: ['WECHAT']" in message


def test_bad_close_method_is_reported():
    message = problems_of(poll_settings, {**POLL_ENV, "CLOSE_HTTP_METHOD": "PUT"})
    assert "CLOSE_HTTP_METHOD must be GET or POST, got 'PUT'" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("POLL_FIRST_WAIT_SECONDS", "three", "POLL_FIRST_WAIT_SECONDS must be a number, got 'three'"),
        ("POLL_FIRST_WAIT_SECONDS", "0", "POLL_FIRST_WAIT_SECONDS must be between 1 and 300, got 0"),
        ("POLL_MAX_WAIT_SECONDS", "7200", "POLL_MAX_WAIT_SECONDS must be between 1 and 3600, got 7200"),
        ("POLL_BACKOFF_FACTOR", "0.5", "POLL_BACKOFF_FACTOR must be between 1 and 10, got 0.5"),
        ("POLL_DEADLINE_SECONDS", "1", "POLL_DEADLINE_SECONDS must be between 5 and 86400, got 1"),
        ("POLL_DEADLINE_SECONDS", "15m", "POLL_DEADLINE_SECONDS must be a number, got '15m'"),
        ("QFPAY_READ_TIMEOUT_SECONDS", "0", "QFPAY_READ_TIMEOUT_SECONDS must be between 0.1 and 60, got 0"),
        (
            "QFPAY_CONNECT_TIMEOUT_SECONDS",
            "-1",
            "QFPAY_CONNECT_TIMEOUT_SECONDS must be between 0.1 and 30, got -1",
        ),
        ("BATCH_CONCURRENCY", "11", "BATCH_CONCURRENCY must be between 1 and 10, got 11"),
        ("QFPAY_SETTLE_SECONDS", "0", "QFPAY_SETTLE_SECONDS must be between 1 and 3600, got 0"),
        (
            "QFPAY_VERIFY_RESPONSE_SIGNATURE",
            "yes",
            "QFPAY_VERIFY_RESPONSE_SIGNATURE must be true or false, got 'yes'",
        ),
        ("POLL_BACKOFF_FACTOR", "nan", "POLL_BACKOFF_FACTOR must be between 1 and 10, got nan"),
        ("POLL_BACKOFF_FACTOR", "inf", "POLL_BACKOFF_FACTOR must be between 1 and 10, got inf"),
    ],
)
def test_bad_number_is_reported(name, value, expected):
    assert expected in problems_of(cancel_settings, {**CANCEL_ENV, name: value})


def test_schedule_that_does_not_fit_is_reported():
    message = problems_of(
        cancel_settings, {**CANCEL_ENV, "POLL_FIRST_WAIT_SECONDS": "90", "POLL_MAX_WAIT_SECONDS": "30"}
    )
    assert "poll schedule needs 1 <= first_wait <= max_wait and factor >= 1" in message


def test_all_problems_are_reported_together():
    env = {
        "QFPAY_BASE_URL": "http://example.com",
        "POLL_FIRST_WAIT_SECONDS": "x",
        "POLL_DEADLINE_SECONDS": "0",
        "CLOSE_HTTP_METHOD": "PATCH",
    }
    message = problems_of(cancel_settings, env)
    assert "QFPAY_BASE_URL must use https" in message
    assert "POLL_FIRST_WAIT_SECONDS must be a number" in message
    assert "POLL_DEADLINE_SECONDS must be between 5 and 86400" in message
    assert "CLOSE_HTTP_METHOD must be GET or POST" in message
    for name in ("QFPAY_SECRET_ID", "EVENT_BUS_NAME", "STATE_MACHINE_ARN", "LEDGER_TABLE"):
        assert f"{name} is required" in message


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf"])
def test_non_finite_numbers_are_reported(value):
    message = problems_of(cancel_settings, {**CANCEL_ENV, "POLL_DEADLINE_SECONDS": value})
    assert "POLL_DEADLINE_SECONDS" in message


@pytest.mark.parametrize(
    ("value", "traced"),
    [
        (None, True),
        ("", True),
        ("false", True),
        ("0", True),
        ("true", False),
        ("1", False),
        (" TRUE ", False),
    ],
)
def test_call_tracing_follows_powertools_switch(value: str | None, traced: bool) -> None:
    env = {} if value is None else {"POWERTOOLS_TRACE_DISABLED": value}
    assert call_tracing(env) is traced


def test_call_tracing_refuses_a_value_it_cannot_read() -> None:
    with pytest.raises(
        ConfigurationError, match="POWERTOOLS_TRACE_DISABLED must be true or false, got 'maybe'"
    ):
        call_tracing({"POWERTOOLS_TRACE_DISABLED": "maybe"})


# --- QFPAY_BASE_URL: QFPay's own hosts only, unless explicitly overridden ----------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://openapi-sg.qfapi.com",
        "https://test-openapi-eur.qfapi.com",
        "https://openapi.qfpay.com",
        "https://openapi-test.qfpay.com/",
        "https://OPENAPI-HK.QFAPI.COM",
        "https://127.0.0.1:8443",
        "https://localhost",
    ],
)
def test_qfpay_hosts_and_loopback_are_accepted(url):
    assert check_base_url(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com",
        "https://qfapi.com",
        "https://openapi-hk.qfapi.com.example.com",
        "https://evil-openapi-hk.qfapi.com",
        "https://openapi-hk.qfapi.com.",
        "https://10.0.0.1",
    ],
)
def test_a_host_that_is_not_qfpays_is_refused_unless_overridden(url):
    problem = check_base_url(url)
    assert problem is not None
    assert "QFPay's hosts" in problem
    assert "QFPAY_ALLOW_ANY_HOST" in problem
    assert "QFPay's hosts" in problems_of(poll_settings, {**POLL_ENV, "QFPAY_BASE_URL": url})
    # The explicit override: a proxy or a new QFPay region, chosen on purpose.
    assert check_base_url(url, any_host=True) is None
    settings = poll_settings({**POLL_ENV, "QFPAY_BASE_URL": url, "QFPAY_ALLOW_ANY_HOST": "true"})
    assert settings.base_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://openapi-hk.qfapi.com/trade?mchid=1", "query"),
        ("https://openapi-hk.qfapi.com?", "query"),
        ("https://openapi-hk.qfapi.com#x", "fragment"),
        ("https://openapi-hk.qfapi.com/#", "fragment"),
        ("https://openapi-hk.qfapi.com/v2", "path"),
    ],
)
def test_a_query_fragment_or_path_is_refused_even_with_the_override(url, expected):
    for any_host in (False, True):
        problem = check_base_url(url, any_host=any_host)
        assert problem is not None, url
        assert expected in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://user:S3CR3TPASS@openapi-hk.qfapi.com",
        "https://S3CR3TPASS@openapi-hk.qfapi.com",
        "https://:S3CR3TPASS@example.com",
        "http://S3CR3TPASS@127.0.0.1:8080",
    ],
)
def test_userinfo_is_refused_without_repeating_it(url):
    for any_host in (False, True):
        problem = check_base_url(url, any_host=any_host)
        assert problem is not None
        assert "user name or password" in problem
        assert "S3CR3TPASS" not in problem
    message = problems_of(poll_settings, {**POLL_ENV, "QFPAY_BASE_URL": url, "QFPAY_ALLOW_ANY_HOST": "true"})
    assert "S3CR3TPASS" not in message


# --- how long a caller's message is held while its order's loop runs ---------------------------


def holds(start: float, deadline: float, receives_left: int, decided: float = math.inf) -> list[float]:
    """The times a held message is received again, until the loop has decided (or none is left)."""
    now, seen = start, []
    while receives_left > 0:
        now += caller_hold_seconds(now, start, deadline, receives_left)
        receives_left -= 1
        seen.append(now - start)
        if now - start >= decided:
            break
    return seen


def test_the_last_receive_comes_after_the_loop_has_certainly_decided():
    for receives_left in range(1, 6):
        times = holds(0, 900, receives_left)
        assert len(times) == receives_left
        assert times[-1] >= 900 + 30  # past the deadline, with the loop's last turn and publish
        assert all(b > a for a, b in itertools.pairwise(times))


def test_a_quick_decision_is_heard_quickly():
    # Four receives left (the message handed off on its first of five): a loop that decides
    # within ten seconds is heard at the second look, one that takes two minutes before 4 minutes.
    assert holds(0, 900, 4, decided=10)[-1] <= 20
    assert holds(0, 900, 4, decided=120)[-1] <= 240


def test_holds_stay_within_what_sqs_allows():
    assert caller_hold_seconds(0, 0, 86400, 1) == 43200
    assert caller_hold_seconds(1000, 0, 900, 4) == 5  # past the deadline: look again soon
    assert caller_hold_seconds(0, 0, 900, 0) == 930


def test_the_queue_s_max_receive_count_is_read():
    assert cancel_settings(CANCEL_ENV).max_receive_count == 5
    settings = cancel_settings({**CANCEL_ENV, "ORDER_QUEUE_MAX_RECEIVE_COUNT": "8"})
    assert settings.max_receive_count == 8
    assert "ORDER_QUEUE_MAX_RECEIVE_COUNT must be between 1 and 1000" in problems_of(
        cancel_settings, {**CANCEL_ENV, "ORDER_QUEUE_MAX_RECEIVE_COUNT": "0"}
    )
