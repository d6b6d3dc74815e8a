"""The poll schedule and the functions' environment."""

from __future__ import annotations

import pytest
from cancellation.cancel import LoopPolicy
from cancellation.qfpay import Timeouts
from cancellation.routing import Routing
from cancellation.schedule import PollSchedule
from cancellation.settings import (
    CancelSettings,
    ConfigurationError,
    QFPaySettings,
    cancel_settings,
    check_base_url,
    poll_settings,
)

# --- PollSchedule ------------------------------------------------------------------------------


def test_default_schedule_doubles_from_3_seconds_up_to_60():
    schedule = PollSchedule()
    assert [schedule.wait_after(n) for n in range(8)] == [3, 6, 12, 24, 48, 60, 60, 60]


def test_waits_grow_by_the_factor_and_cap_at_max_wait():
    schedule = PollSchedule(first_wait=5, max_wait=100, factor=3.0)
    assert [schedule.wait_after(n) for n in range(5)] == [5, 15, 45, 100, 100]


def test_factor_one_keeps_a_constant_wait():
    schedule = PollSchedule(first_wait=4, max_wait=4, factor=1.0)
    assert {schedule.wait_after(n) for n in range(50)} == {4}


def test_waits_never_shrink_and_are_whole_seconds():
    schedule = PollSchedule(first_wait=2, max_wait=45, factor=1.7)
    waits = [schedule.wait_after(n) for n in range(30)]
    assert waits == sorted(waits)
    assert all(type(w) is int for w in waits)
    assert waits[0] == 2
    assert waits[-1] == 45


@pytest.mark.parametrize(
    ("first_wait", "max_wait", "factor"),
    [(0, 60, 2.0), (-1, 60, 2.0), (10, 5, 2.0), (3, 60, 0.5), (3, 60, 0.0), (3, 60, -2.0)],
)
def test_bad_schedules_are_rejected(first_wait, max_wait, factor):
    with pytest.raises(ValueError, match="first_wait <= max_wait and factor >= 1"):
        PollSchedule(first_wait, max_wait, factor)


def test_schedule_round_trips_through_its_dict():
    schedule = PollSchedule(first_wait=2, max_wait=30, factor=1.5)
    assert schedule.to_dict() == {"first_wait": 2, "max_wait": 30, "factor": 1.5}
    assert PollSchedule.from_dict(schedule.to_dict()) == schedule
    # As the state machine may hand numbers back (JSON has no int/float distinction).
    assert PollSchedule.from_dict({"first_wait": 2.0, "max_wait": 30.0, "factor": 2}) == PollSchedule(
        2, 30, 2.0
    )


@pytest.mark.parametrize(("schedule", "polls"), [(PollSchedule(), 1100), (PollSchedule(1, 5, 10.0), 400)])
def test_wait_after_many_polls_stays_at_max_wait(schedule, polls):
    assert schedule.wait_after(polls) == schedule.max_wait


# --- settings ----------------------------------------------------------------------------------

CANCEL_ENV = {
    "QFPAY_BASE_URL": "https://test-openapi-hk.qfapi.com",
    "QFPAY_SECRET_ID": "qfpay/credentials",
    "EVENT_BUS_NAME": "payment-outcomes",
    "STATE_MACHINE_ARN": "arn:aws:states:ap-east-1:123456789012:stateMachine:cancellation-poll",
    "IDEMPOTENCY_TABLE": "cancellation-idempotency",
}
POLL_ENV = {k: CANCEL_ENV[k] for k in ("QFPAY_BASE_URL", "QFPAY_SECRET_ID")}


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
        ),
        event_bus_name="payment-outcomes",
        state_machine_arn=CANCEL_ENV["STATE_MACHINE_ARN"],
        idempotency_table="cancellation-idempotency",
        loop=LoopPolicy(PollSchedule(3, 60, 2.0), 900),
        idempotency_expiry=48 * 3600,
        retry_base_delay=10,
        retry_max_delay=900,
        batch_concurrency=10,
    )


def test_poll_settings_defaults():
    settings = poll_settings(POLL_ENV)
    assert settings.base_url == "https://test-openapi-hk.qfapi.com"
    assert settings.secret_id == "qfpay/credentials"
    assert settings.routing == Routing()
    assert settings.timeouts == Timeouts()


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
    }
    settings = cancel_settings(env)
    assert settings.qfpay.routing == Routing(frozenset({"800201", "800212"}), "POST")
    assert settings.loop == LoopPolicy(PollSchedule(5, 120, 1.5), 1800)
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
        "IDEMPOTENCY_TABLE",
    ):
        assert f"{name} is required" in message
    assert message.count("is required") == 5


def test_every_missing_poll_variable_is_reported_in_one_error():
    message = problems_of(poll_settings, {"EVENT_BUS_NAME": "x"})
    assert "QFPAY_BASE_URL is required" in message
    assert "QFPAY_SECRET_ID is required" in message
    assert message.count("is required") == 2


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
    for name in ("QFPAY_SECRET_ID", "EVENT_BUS_NAME", "STATE_MACHINE_ARN", "IDEMPOTENCY_TABLE"):
        assert f"{name} is required" in message


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf"])
def test_non_finite_numbers_are_reported(value):
    message = problems_of(cancel_settings, {**CANCEL_ENV, "POLL_DEADLINE_SECONDS": value})
    assert "POLL_DEADLINE_SECONDS" in message
