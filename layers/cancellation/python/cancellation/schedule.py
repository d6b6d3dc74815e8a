"""When the wait-and-poll loop asks the Transaction Enquiry again.

Waits grow geometrically from ``first_wait`` by ``factor`` up to ``max_wait``: early answers are
noticed quickly (QFPay suggests re-querying after 3-5 s) while a long-running cancellation costs few
state transitions. The schedule travels in the execution input so a test can shorten it without
touching the state machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PollSchedule:
    first_wait: int = 3
    max_wait: int = 60
    factor: float = 2.0

    def __post_init__(self) -> None:
        if (
            not math.isfinite(self.factor)
            or self.first_wait < 1
            or self.max_wait < self.first_wait
            or self.factor < 1
        ):
            raise ValueError("poll schedule needs 1 <= first_wait <= max_wait and factor >= 1")

    def wait_after(self, polls: int) -> int:
        """Seconds to wait after ``polls`` enquiries (0 = before the first one)."""
        # Cap the exponent: past the cap the wait is max_wait anyway, and factor**polls can overflow.
        steps = min(polls, self._steps_to_cap)
        return int(min(self.max_wait, round(self.first_wait * self.factor**steps)))

    @property
    def _steps_to_cap(self) -> int:
        if self.factor == 1:
            return 0
        return math.ceil(math.log(self.max_wait / self.first_wait, self.factor)) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PollSchedule:
        return cls(int(data["first_wait"]), int(data["max_wait"]), float(data["factor"]))
