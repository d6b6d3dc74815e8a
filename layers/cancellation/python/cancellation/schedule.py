"""When the wait-and-poll loop asks the Transaction Enquiry again.

The rule: a short fast phase, then waits proportional to the time already waited.

- The first enquiry comes ``first_wait`` seconds after the hand-off (QFPay suggests asking again
  after 3-5 s), and the waits grow from there by ``factor``: most in-progress cancellations are
  decided within seconds and are noticed within seconds.
- No wait is longer than ``max(late_floor, late_fraction * elapsed)``, ``elapsed`` being the
  scheduled time since the hand-off. A decision QFPay makes ``T`` seconds after the hand-off is
  therefore noticed at most ``max(late_floor, late_fraction * T)`` seconds late (plus one enquiry's
  latency): with the defaults, within 20 s up to 100 s, and within 20 % of ``T`` after that.
- No wait is longer than ``max_wait`` and none shorter than ``first_wait``.

With the defaults (3 s, factor 2, 20 s, 20 %) the enquiries come at 3, 9, 21, 41, 61, 81, 101, 121,
145, 174, ... s. Why this shape: Standard Step Functions bill per state transition, and each turn of
the loop is three (wait, enquiry, choice), so the cost is the number of enquiries. A fixed 3 s poll
spends about one transition per second; a pure geometric backoff (the previous rule: 3 s doubling up
to 60 s) is cheap but, right after a long wait, notices a decision up to 100 % late (a decision at
50 s is seen at 93 s). Waits proportional to the elapsed time make lateness relative by
construction, and make the number of enquiries grow with the logarithm of the time instead of
linearly: a cancellation decided after 120 s costs 8 enquiries (40 with a fixed 3 s poll; with the
state machine's closing states, 23 % of its transitions) and is noticed at 121 s; one decided after
600 s costs 19 enquiries (200) with ``max_wait`` 60. Keeping lateness within 20 % from the first
seconds on (``late_floor`` = ``first_wait``) would cost 17 enquiries by 120 s (45 % of a fixed 3 s
poll's transitions): ``late_floor`` trades those early enquiries for a bounded absolute lateness.
``tests/local/bench.py`` measures all this on the real state machine (``make bench``).

The schedule travels in the execution input (``to_dict``), so a test can shorten it without
touching the state machine. ``late_fraction`` and ``late_floor`` are left out of that dict while
they have their default values, so the execution input keeps its documented shape (and an execution
started with the defaults follows the defaults of the code that polls it). ``late_fraction=0`` with
``late_floor >= max_wait`` gives the plain geometric backoff.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

DEFAULT_LATE_FRACTION = 0.2
DEFAULT_LATE_FLOOR = 20
# The largest values the cancel function's settings allow; the poll function refuses larger ones.
MAX_FIRST_WAIT_SECONDS = 300
MAX_WAIT_SECONDS = 3600
MAX_FACTOR = 10.0
MAX_DEADLINE_SECONDS = 86400
MAX_RETRY_HORIZON_SECONDS = 4 * 86400
# How long QFPay may take to show a cancel it received (QFPAY_SETTLE_SECONDS): it advises
# cancelling a payment still in progress after about two minutes, so a cancel of ours that QFPay
# received shows in its Enquiry within that long. Past it, a payment still live shows that a cancel
# whose answer we could not read did nothing (docs/deciding.md).
DEFAULT_SETTLE_SECONDS = 120
# ...and only if QFPay was asked this many times in it, every answer showing the payment live:
# QFPay may move a payment's state along when asked (its Enquiry is how it tells a merchant to
# follow an order in progress), so time with few Enquiries in it proves little.
SETTLE_ENQUIRIES = 6


class _PollScheduleFields(NamedTuple):
    first_wait: int = 3
    max_wait: int = 60
    factor: float = 2.0
    late_fraction: float = DEFAULT_LATE_FRACTION
    late_floor: int = DEFAULT_LATE_FLOOR


class PollSchedule(_PollScheduleFields):
    """Validated when made (a NamedTuple, not a frozen dataclass: it is created at every cold start,
    see ``cancellation/__init__.py``)."""

    __slots__ = ()

    def __new__(
        cls,
        first_wait: int = 3,
        max_wait: int = 60,
        factor: float = 2.0,
        late_fraction: float = DEFAULT_LATE_FRACTION,
        late_floor: int = DEFAULT_LATE_FLOOR,
    ) -> PollSchedule:
        schedule = super().__new__(cls, first_wait, max_wait, factor, late_fraction, late_floor)
        schedule._validate()
        return schedule

    def _validate(self) -> None:
        if (
            not math.isfinite(self.factor)
            or self.first_wait < 1
            or self.max_wait < self.first_wait
            or self.factor < 1
        ):
            raise ValueError("poll schedule needs 1 <= first_wait <= max_wait and factor >= 1")
        if not math.isfinite(self.late_fraction) or not 0 <= self.late_fraction <= 1 or self.late_floor < 1:
            raise ValueError("poll schedule needs 0 <= late_fraction <= 1 and late_floor >= 1")

    def check_bounds(self) -> None:
        """Within what the settings allow: a schedule from outside (the loop's input) may not make
        the loop ask at a rate or over a span that no configuration of ours would."""
        if (
            self.first_wait > MAX_FIRST_WAIT_SECONDS
            or self.max_wait > MAX_WAIT_SECONDS
            or self.factor > MAX_FACTOR
            or self.late_floor > MAX_WAIT_SECONDS
        ):
            raise ValueError(
                f"poll schedule needs first_wait <= {MAX_FIRST_WAIT_SECONDS}, max_wait and late_floor"
                f" <= {MAX_WAIT_SECONDS} and factor <= {MAX_FACTOR}"
            )

    def wait_after(self, polls: int) -> int:
        """Seconds to wait after ``polls`` enquiries (0 = before the first one)."""
        wait = 0
        for step, wait in enumerate(self._sequence()):
            if step >= polls or wait >= self.max_wait or self.factor == 1:
                break  # waits never shrink: past max_wait (or with no growth) they stay as they are
        return wait

    def _sequence(self) -> Iterator[int]:
        elapsed = 0
        for step in itertools.count():
            wait = self._wait(step, elapsed)
            yield wait
            elapsed += wait

    def _wait(self, step: int, elapsed: int) -> int:
        # Cap the exponent: past the cap the term exceeds max_wait anyway, and factor**step can overflow.
        geometric = round(self.first_wait * self.factor ** min(step, self._steps_to_cap))
        allowed_lateness = max(self.late_floor, math.floor(self.late_fraction * elapsed))
        return int(min(self.max_wait, max(self.first_wait, min(geometric, allowed_lateness))))

    @property
    def _steps_to_cap(self) -> int:
        if self.factor == 1:
            return 0
        return math.ceil(math.log(self.max_wait / self.first_wait, self.factor)) + 1

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "first_wait": self.first_wait,
            "max_wait": self.max_wait,
            "factor": self.factor,
        }
        if self.late_fraction != DEFAULT_LATE_FRACTION:
            data["late_fraction"] = float(self.late_fraction)
        if self.late_floor != DEFAULT_LATE_FLOOR:
            data["late_floor"] = self.late_floor
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PollSchedule:
        return cls(
            int(data["first_wait"]),
            int(data["max_wait"]),
            float(data["factor"]),
            float(data.get("late_fraction", DEFAULT_LATE_FRACTION)),
            int(data.get("late_floor", DEFAULT_LATE_FLOOR)),
        )


class LoopPolicy(NamedTuple):
    """The wait-and-poll loop an order is handed to: its schedule and how long it may run."""

    schedule: PollSchedule
    deadline_seconds: int
    # How far the loop's deadline may move while QFPay cannot be reached (the retry horizon): an
    # outage is no reason to conclude, any more than it is for an order still in the queue.
    unreachable_allowance: int = 0


# About 5 minutes, 1 hour, then once a day for 5 days after the UNKNOWN outcome.
DEFAULT_CHECKS_AFTER_SECONDS = (300, 3600, 86400, 2 * 86400, 3 * 86400, 4 * 86400, 5 * 86400)


class ReconcileSchedule(NamedTuple):
    """When each check is due, in seconds after the order was enrolled (its UNKNOWN outcome)."""

    checks_after: tuple[int, ...] = DEFAULT_CHECKS_AFTER_SECONDS

    @classmethod
    def parse(cls, text: str) -> ReconcileSchedule:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ValueError(
                f"RECONCILE_CHECKS_AFTER_SECONDS must be whole seconds, comma-separated: {text!r}"
            ) from None
        if not values or any(v < 0 for v in values) or list(values) != sorted(values):
            raise ValueError(f"RECONCILE_CHECKS_AFTER_SECONDS must be rising seconds >= 0: {text!r}")
        return cls(values)

    def next_due(self, enrolled_at: float, checks_done: int) -> float | None:
        """When check number ``checks_done + 1`` is due; None once every check was made."""
        if checks_done >= len(self.checks_after):
            return None
        return enrolled_at + self.checks_after[checks_done]


DEFAULT_RECONCILE_SCHEDULE = ReconcileSchedule()
