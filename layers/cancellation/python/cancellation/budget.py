"""One request budget per merchant, shared by every container that calls QFPay.

QFPay allows each merchant 100 requests/s and 400/min and answers HTTP 429 beyond. A static split
per container wastes what idle containers do not use, so every request instead takes the next
free *slot* of its merchant from one shared record (:class:`SlotStore`; DynamoDB when deployed):
slots are ``interval`` apart, the interval being the tighter of QFPay's two limits less a safety
margin, so no 60 s (or 1 s) window can hold more requests than QFPay allows, however many
containers run. A request sleeps until its slot; a slot later than the caller can wait for
(its invocation would end first) is not taken, and :class:`BudgetExhausted` says when the next
free one is, so the order can come back then without counting as a failed attempt.

When QFPay answers 429 anyway (another system spends the same merchant's limit), the whole
merchant backs off: its next slot moves ``pause_after_429`` into the future for every container.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from cancellation.invocation import spend_until
from cancellation.qfpay import QFPayUnavailable


class BudgetExhausted(QFPayUnavailable):
    """No slot of the merchant's budget before the caller's ``spend_until``: nothing was sent."""

    def __init__(self, merchant: str, next_free_at: float) -> None:
        super().__init__(f"merchant's QFPay budget spent until {next_free_at:.3f}")
        self.merchant = merchant
        self.next_free_at = next_free_at


class BudgetPolicy(NamedTuple):
    """QFPay's per-merchant limits and how much of them this service may use."""

    per_second: int = 100
    per_minute: int = 400
    margin: float = 0.02  # kept free: clocks and network jitter move requests a little
    pause_after_429: float = 1.0  # seconds every container of the merchant waits after a 429
    window_scale: float = 1.0  # local runs only: QFPay's windows shortened by this factor

    @property
    def interval(self) -> float:
        """Seconds between two slots: neither window can then hold more than its limit."""
        usable = 1 - self.margin
        return self.window_scale * max(1 / (self.per_second * usable), 60 / (self.per_minute * usable))

    @property
    def pause(self) -> float:
        return self.pause_after_429 * self.window_scale


class SlotFull(Exception):
    """The store's answer when the next free slot is later than the caller's ``latest``."""

    def __init__(self, next_free_at: float) -> None:
        super().__init__(f"next free slot at {next_free_at:.3f}")
        self.next_free_at = next_free_at


class SlotStore(Protocol):
    def reserve(self, merchant: str, now: float, interval: float, latest: float) -> float:
        """Take the merchant's next free slot (>= ``now``) if it starts by ``latest``; return its
        start. Raises :class:`SlotFull` otherwise, taking nothing."""

    def hold_until(self, merchant: str, until: float) -> None:
        """No slot of the merchant starts before ``until``."""


def merchant_key(mchid: str | None, app_code: str) -> str:
    """The budget's key: the mchid, or (for a merchant's own credentials) a hash of the app code,
    which is part of the credentials and never stored or logged as it is."""
    if mchid:
        return f"mchid:{mchid}"
    return "app:" + hashlib.sha256(app_code.encode("utf-8")).hexdigest()[:24]


class MerchantBudget:
    """What the QFPay client asks before every request, and tells after a 429."""

    def __init__(
        self,
        policy: BudgetPolicy,
        store: SlotStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self._store = store
        self._clock = clock
        self._sleep = sleep

    def acquire(self, mchid: str | None, app_code: str) -> None:
        """Wait for the merchant's next slot, or raise :class:`BudgetExhausted` if it starts
        after ``spend_until`` (no limit set: wait as long as it takes)."""
        merchant = merchant_key(mchid, app_code)
        now = self._clock()
        latest = spend_until.get()
        try:
            slot = self._store.reserve(
                merchant, now, self.policy.interval, float("inf") if latest is None else latest
            )
        except SlotFull as full:
            raise BudgetExhausted(merchant, full.next_free_at) from None
        wait = slot - self._clock()
        if wait > 0:
            self._sleep(wait)

    def throttled(self, mchid: str | None, app_code: str) -> None:
        """QFPay answered 429: every container of this merchant pauses."""
        self._store.hold_until(merchant_key(mchid, app_code), self._clock() + self.policy.pause)
