"""The merchants' shared request budget against DynamoDB (moto), with the table template.yaml
declares: every container takes slots from one record per merchant, so QFPay's per-merchant
limits hold however many containers run, and a 429 backs off the whole merchant."""

from __future__ import annotations

from typing import Any

import pytest
from cancellation.aws import BudgetSlots
from cancellation.budget import BudgetExhausted, BudgetPolicy, MerchantBudget
from cancellation.invocation import spend_until

APP = "APPCODE-1"
DEFAULT_POLICY = BudgetPolicy()


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_795_600_000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client(ledger_table: Any) -> Any:
    return ledger_table


def containers(
    client: Any, time: FakeTime, n: int, policy: BudgetPolicy = DEFAULT_POLICY
) -> list[MerchantBudget]:
    """``n`` containers' budgets, each with its own store client object, one table."""
    return [
        MerchantBudget(
            policy, BudgetSlots("ledger", dynamodb=lambda: client), clock=time.clock, sleep=time.sleep
        )
        for _ in range(n)
    ]


def test_requests_of_many_containers_are_spaced_to_keep_qfpays_minute_limit(client: Any) -> None:
    time = FakeTime()
    budgets = containers(client, time, 5)
    starts = []
    for i in range(600):
        budgets[i % 5].acquire("MCH1", APP)
        starts.append(time.now)
    # No 60 s window holds more than QFPay's 400 (393 with the 2% margin), none more than 100 in 1 s.
    assert max(sum(1 for t in starts if s <= t < s + 60) for s in starts) <= 393
    assert max(sum(1 for t in starts if s <= t < s + 1) for s in starts) <= 100
    # ...and the budget is used: 600 requests take 599 intervals, not more.
    assert starts[-1] - starts[0] == pytest.approx(599 * BudgetPolicy().interval, rel=1e-3)


def test_an_idle_merchant_is_served_at_once(client: Any) -> None:
    time = FakeTime()
    (budget,) = containers(client, time, 1)
    budget.acquire("MCH1", APP)
    assert time.now == 1_795_600_000.0
    time.now += 5
    before = time.now
    budget.acquire("MCH1", APP)
    assert time.now == before


def test_a_slot_later_than_the_invocation_can_wait_for_is_not_taken(client: Any) -> None:
    time = FakeTime()
    first, second = containers(client, time, 2)
    interval = BudgetPolicy().interval
    for _ in range(20):  # 20 slots taken at once (no one sleeps): the next is 20 intervals away
        first._store.reserve("mchid:MCH1", time.now, interval, float("inf"))
    token = spend_until.set(time.now + 1)
    try:
        with pytest.raises(BudgetExhausted) as spent:
            second.acquire("MCH1", APP)
    finally:
        spend_until.reset(token)
    assert spent.value.next_free_at == pytest.approx(time.now + 20 * interval)
    assert time.now == 1_795_600_000.0  # nothing slept
    # Nothing was taken: the next caller gets exactly that slot.
    first.acquire("MCH1", APP)
    assert time.now == pytest.approx(spent.value.next_free_at)


def test_qfpays_429_pauses_every_container_of_the_merchant(client: Any) -> None:
    time = FakeTime()
    one, other = containers(client, time, 2, BudgetPolicy(pause_after_429=2.0))
    one.acquire("MCH1", APP)
    one.throttled("MCH1", APP)
    before = time.now
    other.acquire("MCH1", APP)
    assert time.now - before == pytest.approx(2.0)


def test_merchants_have_budgets_of_their_own(client: Any) -> None:
    time = FakeTime()
    (budget,) = containers(client, time, 1)
    for _ in range(50):
        budget.acquire("MCH1", APP)
    busy_until = time.now
    time.now = 1_795_600_000.0  # back to the start: MCH2's first request does not wait for MCH1's
    budget.acquire("MCH2", APP)
    assert time.now == 1_795_600_000.0 < busy_until


def test_without_mchid_the_budget_is_keyed_by_a_hash_of_the_app_code(client: Any) -> None:
    time = FakeTime()
    (budget,) = containers(client, time, 1)
    budget.acquire(None, APP)
    keys = [item["id"]["S"] for item in client.scan(TableName="ledger")["Items"]]
    assert len(keys) == 1
    assert keys[0].startswith("budget#app:")
    assert APP not in keys[0]


def test_scaled_windows_scale_the_interval() -> None:
    assert BudgetPolicy(window_scale=0.1).interval == pytest.approx(BudgetPolicy().interval / 10)
    assert BudgetPolicy().interval == pytest.approx(60 / (400 * 0.98))


class _SilentFirstUpdate:
    """A DynamoDB client whose first successful UpdateItem returns no attributes, as moto's
    in-process backend sometimes does when several threads update one item at once."""

    class exceptions:
        class ConditionalCheckFailedException(Exception):
            pass

    def __init__(self, real: Any) -> None:
        self._real = real
        self.silent = 1

    def update_item(self, **kwargs: Any) -> Any:
        answer = self._real.update_item(**kwargs)
        if self.silent and "Attributes" in answer:
            self.silent -= 1
            return {}
        return answer


def test_a_slot_taken_without_its_time_returned_is_not_an_error(client: Any) -> None:
    now = 1_795_600_000.0
    BudgetSlots("ledger", dynamodb=lambda: client).reserve(
        "M1", now, 0.5, now + 60
    )  # the merchant is busy now
    silent = _SilentFirstUpdate(client)
    silent.exceptions = client.exceptions
    slot = BudgetSlots("ledger", dynamodb=lambda: silent).reserve("M1", now, 0.5, now + 60)
    # The silent slot (now + 0.5) is wasted, never reused: the next one is taken instead.
    assert slot == now + 1.0
    assert silent.silent == 0
