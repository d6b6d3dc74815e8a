"""QFPay's per-merchant rate limits: the stand-in enforces them as QFPay documents (100/s, 400/min,
HTTP 429 beyond), and our client, told 429, backs the whole merchant off through the shared
budget (DynamoDB in moto), not just the one request."""

from __future__ import annotations

from typing import Any

import pytest
from cancellation.aws import BudgetSlots
from cancellation.budget import BudgetPolicy, MerchantBudget
from cancellation.qfpay import Credentials, QFPayClient, QFPayUnavailable, new_pool

from tests.local.qfpay_limits import MerchantRateLimits
from tests.local.qfpay_standin import Merchant, QFPayStandIn

MERCHANT = Merchant(app_code="LIMITAPP", client_key="LIMITKEY0000000000000000000000001")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_more_than_100_in_any_second_is_refused() -> None:
    clock = Clock()
    limits = MerchantRateLimits(clock=clock)
    assert all(limits.admit("M1") for _ in range(100))
    assert not limits.admit("M1")
    assert limits.admit("M2")  # another merchant has its own windows
    clock.now += 1.0001
    assert limits.admit("M1")
    assert limits.refused("M1") == 1
    assert limits.refused() == 1


def test_more_than_400_in_any_minute_is_refused_and_the_window_slides() -> None:
    clock = Clock()
    limits = MerchantRateLimits(clock=clock)
    for _ in range(400):
        assert limits.admit("M1")
        clock.now += 0.1  # 10/s: never the per-second limit
    assert not limits.admit("M1")  # 400 in the last 40 s
    clock.now = 100.0 + 60.05  # the first request has left the window, the second not yet
    assert limits.admit("M1")
    assert not limits.admit("M1")


def test_scaled_windows_hold_the_same_counts_in_shorter_spans() -> None:
    clock = Clock()
    limits = MerchantRateLimits(scale=0.1, clock=clock)
    for _ in range(400):
        assert limits.admit("M1")
        clock.now += 0.01
    assert not limits.admit("M1")
    clock.now = 100.0 + 6.005
    assert limits.admit("M1")


@pytest.fixture
def dynamodb(ledger_table: Any) -> Any:
    return ledger_table


def test_qfpays_429_holds_back_every_container_of_the_merchant(dynamodb: Any) -> None:
    """Another system spends the same merchant's limit: QFPay answers 429 to us although our
    budget had room. The next request of any container waits the pause instead of adding to it."""
    slept: list[float] = []
    with QFPayStandIn([MERCHANT], rate_limits=MerchantRateLimits(per_second=100, per_minute=3)) as qf:

        def container() -> QFPayClient:
            budget = MerchantBudget(
                BudgetPolicy(pause_after_429=2.0, margin=0.0),
                BudgetSlots("ledger", dynamodb=lambda: dynamodb),
                sleep=slept.append,
            )
            credentials = Credentials(app_code=MERCHANT.app_code, client_key=MERCHANT.client_key)
            return QFPayClient(qf.base_url, lambda _force: credentials, http=new_pool(), budget=budget)

        one, other = container(), container()
        for _ in range(3):
            one.enquiry({"syssn": "1"})
        with pytest.raises(QFPayUnavailable) as refused:
            one.enquiry({"syssn": "1"})
        assert refused.value.http_status == 429
        slept.clear()
        with pytest.raises(QFPayUnavailable):
            other.enquiry({"syssn": "1"})  # the stand-in still refuses: its minute is not over
    # ...but it was only sent after the merchant's pause, learnt from the first container's 429.
    assert len(slept) == 1
    assert 1.5 < slept[0] <= 2.0
    assert qf.rate_limits.refused() == 2
