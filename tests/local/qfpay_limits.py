"""QFPay's documented rate limits, as the stand-in enforces them: per merchant, 100 requests per
second and 400 per minute; a request beyond either gets HTTP 429 and takes no effect.

Written from QFPay's documentation, not from our client: the windows slide (any 1 s and any
60 s span, the strictest reading of "per second" and "per minute"), a merchant is the ``mchid``
sent or, without one, the app code, and a refused request does not count toward the windows
(QFPay does not say; counting them would only make a client that backs off wait longer).

``scale`` shortens both windows for quick local runs (0.1: 100 per 0.1 s and 400 per 6 s); the
functions' budget must then be given the same scale (``QFPAY_LIMIT_WINDOW_SCALE``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class MerchantRateLimits:
    """Sliding windows per merchant. Thread-safe."""

    def __init__(
        self,
        per_second: int = 100,
        per_minute: int = 400,
        *,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second < 1 or per_minute < 1 or scale <= 0:
            raise ValueError("limits must be positive")
        self.per_second, self.per_minute, self.scale = per_second, per_minute, scale
        self._clock = clock
        self._served: dict[str, deque[float]] = {}
        self._refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, merchant: str) -> bool:
        """True if a request of ``merchant`` arriving now is served (and counted); False: 429."""
        now = self._clock()
        minute, second = 60 * self.scale, self.scale
        with self._lock:
            served = self._served.setdefault(merchant, deque())
            while served and served[0] <= now - minute:
                served.popleft()
            in_last_second = len(served) - _first_after(served, now - second)
            if len(served) >= self.per_minute or in_last_second >= self.per_second:
                self._refused[merchant] = self._refused.get(merchant, 0) + 1
                return False
            served.append(now)
            return True

    def refused(self, merchant: str | None = None) -> int:
        """HTTP 429 answers given (to ``merchant``, or to all)."""
        with self._lock:
            if merchant is not None:
                return self._refused.get(merchant, 0)
            return sum(self._refused.values())


def _first_after(times: deque[float], moment: float) -> int:
    """Index of the first time after ``moment`` (times are in order); the last second is short."""
    index = len(times)
    while index > 0 and times[index - 1] > moment:
        index -= 1
    return index


class Outage:
    """QFPay down: while ``active``, every request is answered HTTP 503 and takes no effect."""

    def __init__(self) -> None:
        self.active = False
        self.refused = 0
