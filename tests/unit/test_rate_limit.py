"""The per-container share of QFPay's rate limits (100 requests/s, 400/min per merchant)."""

from __future__ import annotations

import pytest
from cancellation.qfpay import QFPayUnavailable, RateLimit


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def limit(per_second: int, per_minute: int, max_wait: float = 1.0) -> tuple[RateLimit, FakeTime]:
    time = FakeTime()
    return RateLimit(per_second, per_minute, max_wait=max_wait, clock=time.clock, sleep=time.sleep), time


def test_requests_under_the_limit_never_wait():
    rate, time = limit(5, 100)
    for _ in range(5):
        rate.acquire()
    assert time.slept == []


def test_the_request_over_the_per_second_limit_waits_for_the_window():
    rate, time = limit(3, 100)
    for _ in range(3):
        rate.acquire()
        time.now += 0.1
    rate.acquire()  # the first of the three was 0.3 s ago: wait until it is 1 s old
    assert time.slept == [pytest.approx(0.7)]


def test_sustained_load_is_held_to_the_per_second_rate():
    rate, time = limit(10, 10_000, max_wait=5)
    started = time.now
    for _ in range(50):
        rate.acquire()
    # 50 requests at 10/s: the 50th may start 4 s after the first, not earlier.
    assert time.now - started == pytest.approx(4.0)


def test_a_wait_longer_than_allowed_is_refused_as_throttled():
    rate, time = limit(100, 4, max_wait=1.0)
    for _ in range(4):
        rate.acquire()
    with pytest.raises(QFPayUnavailable) as refused:
        rate.acquire()  # the per-minute budget is spent: ~60 s to wait
    assert refused.value.http_status == 429
    assert "rate limit" in str(refused.value)
    time.now += 60.01
    rate.acquire()  # a minute later the window has room again
