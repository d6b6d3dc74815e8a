"""Settings that contradict each other stop the cancel function at start, naming them: a ledger
record must outlive everything that may still act on its order (the loop, and every redelivery of
its message), or a later attempt would not know that a cancel may have reached QFPay."""

from __future__ import annotations

import pytest
from cancellation.settings import ConfigurationError, cancel_settings

from tests.unit.test_schedule_and_settings import CANCEL_ENV


def test_a_ledger_record_expiring_before_the_loop_and_the_retries_end_is_refused():
    env = {**CANCEL_ENV, "IDEMPOTENCY_EXPIRY_SECONDS": "3600", "POLL_DEADLINE_SECONDS": "3000"}
    with pytest.raises(ConfigurationError) as caught:
        cancel_settings(env)
    message = str(caught.value)
    for name in (
        "IDEMPOTENCY_EXPIRY_SECONDS",
        "POLL_DEADLINE_SECONDS",
        "RETRY_MAX_DELAY_SECONDS",
        "ORDER_QUEUE_MAX_RECEIVE_COUNT",
    ):
        assert name in message
    assert "3600" in message
    assert "7500" in message  # 3000 + 900 x 5


def test_the_60_second_minimum_no_longer_lets_a_record_expire_mid_loop():
    with pytest.raises(ConfigurationError, match="IDEMPOTENCY_EXPIRY_SECONDS"):
        cancel_settings({**CANCEL_ENV, "IDEMPOTENCY_EXPIRY_SECONDS": "60"})


def test_the_defaults_and_a_record_that_outlives_them_are_accepted():
    assert cancel_settings(CANCEL_ENV).idempotency_expiry == 48 * 3600
    env = {**CANCEL_ENV, "IDEMPOTENCY_EXPIRY_SECONDS": "7501", "POLL_DEADLINE_SECONDS": "3000"}
    assert cancel_settings(env).idempotency_expiry == 7501
