"""Settings that contradict each other stop the functions at start, naming them: a ledger record
must outlive everything that may still act on its order (retries until the horizon, the loop, every
redelivery of its message), or a later attempt would not know that a cancel may have reached QFPay;
and the QFPay requests one invocation may make must fit the function's timeout, or a timeout could
kill it after a cancel went out and before its answer was read."""

from __future__ import annotations

import pytest
from cancellation.settings import ConfigurationError, cancel_settings, dead_letter_settings, poll_settings

from tests.unit.test_schedule_and_settings import CANCEL_ENV, POLL_ENV


def test_a_ledger_record_expiring_before_the_loop_and_the_retries_end_is_refused():
    env = {**CANCEL_ENV, "LEDGER_EXPIRY_SECONDS": "3600", "POLL_DEADLINE_SECONDS": "3000"}
    with pytest.raises(ConfigurationError) as caught:
        cancel_settings(env)
    message = str(caught.value)
    for name in (
        "LEDGER_EXPIRY_SECONDS",
        "RETRY_HORIZON_SECONDS",
        "POLL_DEADLINE_SECONDS",
        "RETRY_MAX_DELAY_SECONDS",
        "ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS",
        "ORDER_QUEUE_MAX_RECEIVE_COUNT",
    ):
        assert name in message
    assert "3600" in message
    assert "30150" in message  # 21600 + 900 + 3000 + max(930, 900) x 5


def test_the_60_second_minimum_no_longer_lets_a_record_expire_mid_loop():
    with pytest.raises(ConfigurationError, match="LEDGER_EXPIRY_SECONDS"):
        cancel_settings({**CANCEL_ENV, "LEDGER_EXPIRY_SECONDS": "60"})


def test_the_defaults_and_a_record_that_outlives_them_are_accepted():
    assert cancel_settings(CANCEL_ENV).ledger_expiry == 48 * 3600
    env = {**CANCEL_ENV, "LEDGER_EXPIRY_SECONDS": "30151", "POLL_DEADLINE_SECONDS": "3000"}
    assert cancel_settings(env).ledger_expiry == 30151


def test_a_record_expiring_before_the_retry_horizon_is_refused():
    """Retried by time: an order QFPay keeps answering "try later" is attempted for 6 h; a record
    of 5.6 h would be gone while its attempts (and their possible cancels) go on."""
    env = {**CANCEL_ENV, "LEDGER_EXPIRY_SECONDS": "20000"}
    with pytest.raises(ConfigurationError, match="RETRY_HORIZON_SECONDS") as caught:
        cancel_settings(env)
    assert "LEDGER_EXPIRY_SECONDS (20000)" in str(caught.value)
    assert "= 28050" in str(caught.value)  # 21600 + 900 + 900 + 930 x 5
    assert cancel_settings({**env, "RETRY_HORIZON_SECONDS": "3600"}).ledger_expiry == 20000


def test_a_record_expiring_before_its_message_stops_being_redelivered_is_refused():
    """A message comes back a visibility timeout after each failed receive, up to the queue's
    maxReceiveCount: its record must still be there on the last one."""
    env = {
        **CANCEL_ENV,
        "RETRY_HORIZON_SECONDS": "0",
        "LEDGER_EXPIRY_SECONDS": "19000",
        "ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "3600",
    }
    with pytest.raises(ConfigurationError, match="ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS") as caught:
        cancel_settings(env)
    assert "= 19800" in str(caught.value)  # 0 + 900 + 900 + 3600 x 5
    assert cancel_settings({**env, "ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "570"}).visibility_timeout == 570


def test_a_cancel_function_timeout_shorter_than_one_orders_requests_is_refused():
    """One order may make ten QFPay requests in one invocation (the Enquiry asked first, the
    cancel, the confirming Enquiry; an Enquiry by out_trade_no is two where its window touches two
    calendar months; each re-sent once after 1108): at the default timeouts they need
    10 x (3.05 + 10 + 1) + 3 = 143.5 s, which the old 90 s timeout cut short."""
    with pytest.raises(ConfigurationError) as caught:
        cancel_settings({**CANCEL_ENV, "FUNCTION_TIMEOUT_SECONDS": "90"})
    message = str(caught.value)
    names = ("FUNCTION_TIMEOUT_SECONDS (90)", "QFPAY_CONNECT_TIMEOUT_SECONDS", "QFPAY_READ_TIMEOUT_SECONDS")
    for name in names:
        assert name in message
    assert "= 143.5 s" in message
    assert cancel_settings({**CANCEL_ENV, "FUNCTION_TIMEOUT_SECONDS": "150"}).function_timeout == 150


def test_a_longer_qfpay_read_timeout_must_come_with_a_longer_function_timeout():
    env = {**CANCEL_ENV, "QFPAY_READ_TIMEOUT_SECONDS": "20", "FUNCTION_TIMEOUT_SECONDS": "150"}
    with pytest.raises(ConfigurationError, match=r"= 243\.5 s"):  # 10 x (3.05 + 20 + 1) + 3
        cancel_settings(env)
    assert cancel_settings({**env, "FUNCTION_TIMEOUT_SECONDS": "250"}).qfpay.timeouts.read == 20


def test_a_poll_function_timeout_shorter_than_one_turn_is_refused():
    """One turn: the Enquiry (two requests by out_trade_no where its window touches two calendar
    months) and the loop's one resend, each re-sent once after 1108."""
    with pytest.raises(ConfigurationError) as caught:
        poll_settings({**POLL_ENV, "FUNCTION_TIMEOUT_SECONDS": "60"})
    message = str(caught.value)
    assert "FUNCTION_TIMEOUT_SECONDS (60)" in message
    assert "one turn of the loop" in message
    assert "= 87.3 s" in message  # 6 x (3.05 + 10 + 1) + 3
    assert poll_settings({**POLL_ENV, "FUNCTION_TIMEOUT_SECONDS": "90"}).timeouts.read == 10


def test_the_dead_letter_functions_look_up_must_fit_its_timeout():
    """It asks QFPay one Enquiry (two requests where its window touches two calendar months, each
    re-sent once after 1108) to name a payment given by out_trade_no."""
    settings = dead_letter_settings({**CANCEL_ENV, "ORDER_QUEUE_MAX_RECEIVE_COUNT": "7"})
    assert (settings.event_bus_name, settings.max_receive_count) == ("payment-outcomes", 7)
    assert settings.qfpay.secret_id == CANCEL_ENV["QFPAY_SECRET_ID"]
    with pytest.raises(ConfigurationError) as caught:
        dead_letter_settings({**CANCEL_ENV, "FUNCTION_TIMEOUT_SECONDS": "30"})
    assert "one dead letter's look-up" in str(caught.value)
    assert "= 59.2 s" in str(caught.value)  # 4 x (3.05 + 10 + 1) + 3
    assert dead_letter_settings({**CANCEL_ENV, "FUNCTION_TIMEOUT_SECONDS": "60"}).max_receive_count == 5
    with pytest.raises(ConfigurationError, match="LEDGER_TABLE is required"):
        dead_letter_settings({k: v for k, v in CANCEL_ENV.items() if k != "LEDGER_TABLE"})
