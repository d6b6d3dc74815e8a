"""Step Functions callers (task tokens): each is answered once per token, through a ledger record
of its own, with its order's outcome, or held while the order's loop decides."""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

from cancellation.aws import CallerNotifier, EnquiryLoopStarter, LoopResult
from cancellation.cancel import successor_name
from cancellation.exactly_once import ExactlyOnce
from cancellation.observability import logger

if TYPE_CHECKING:
    from cancellation.models import Decision, Handoff


class CallerAnswers:
    def __init__(self, once: ExactlyOnce, notifier: CallerNotifier, loops: EnquiryLoopStarter) -> None:
        self.once = once
        self.notifier = notifier
        self.loops = loops

    def answer_once(
        self,
        order_key: str,
        task_token: str,
        decision: Decision,
        lease_until: float,
        last_receive: bool = False,
    ) -> None:
        """Answer one Step Functions caller, once per task token: every caller of an order hears
        its outcome, not only the first one."""
        # Stored and logged only as its hash: whoever reads a token can answer its task.
        caller = hashlib.sha256(task_token.encode("utf-8")).hexdigest()
        logger.thread_safe_append_keys(caller=caller)
        self.once.run_once(
            f"{order_key}|caller={caller}",
            lease_until,
            lambda recorded: str(self._answer(task_token, recorded, last_receive)),
            lambda *_: decision,
            known=True,
        )

    def _answer(self, token: str, decision: Decision, last_receive: bool) -> bool:
        if "outcome" in decision:
            return self.notifier.notify(token, decision["outcome"])
        handoff = decision["handoff"]
        if handoff["input"]["order"].get("task_token") == token:
            # A loop started before tokens were kept out of its state answers this caller itself.
            return True
        loop = self._loop_of(handoff)
        if loop.outcome is not None:
            return self.notifier.notify(token, loop.outcome)
        if loop.status == "RUNNING":
            if not last_receive and loop.started_at is not None and loop.deadline_at is not None:
                raise AwaitingLoop(loop.started_at, loop.deadline_at)
            # Explicit, so the caller can retry later; a later message gets the decided outcome.
            cause = "this order is still being decided by the enquiry loop; retry later"
            return self.notifier.fail(token, "Cancellation.InProgress", cause)
        # Ended without an outcome we can read: never claim more than "not confirmed".
        return self.notifier.fail(token, "Cancellation.Unknown", loop.cause or loop.status)

    def _loop_of(self, handoff: Handoff) -> LoopResult:
        """The loop deciding this hand-off: the execution of the order's name, or, when that one had
        ended without an outcome before this hand-off (see :meth:`Delivery._after_finished_loop`), the one
        started after it."""
        loop = self.loops.result(handoff["name"])
        if loop.outcome is not None or loop.status == "RUNNING":
            return loop
        successor = self.loops.find(successor_name(handoff))
        return successor if successor is not None else loop


class AwaitingLoop(Exception):
    """A caller's order is being decided by the enquiry loop: its message is held until then."""

    def __init__(self, started_at: float, deadline_at: float) -> None:
        super().__init__("the enquiry loop is still deciding")
        self.started_at = started_at
        self.deadline_at = deadline_at


# The loop's last turn comes within a second of its deadline; then it publishes.
HOLD_PAST_DEADLINE = 30
MIN_HOLD, MAX_HOLD = 5, 43200  # 43200 s: the most SQS allows a message to stay invisible


def caller_hold_seconds(now: float, started_at: float, deadline_at: float, receives_left: int) -> int:
    """How long a caller's message is held while its order's loop runs. The holds grow
    geometrically from the time the loop has already taken to just past its deadline, so that the
    caller hears a quick decision quickly and the message's last receive (``receives_left`` from
    now) comes when the loop has certainly decided: a held message is never dead-lettered."""
    end = deadline_at + HOLD_PAST_DEADLINE
    taken = max(float(MIN_HOLD), now - started_at)
    if receives_left <= 1 or now + MIN_HOLD >= end:
        hold = end - now
    else:
        hold = taken * (((end - started_at) / taken) ** (1 / receives_left) - 1)
    return int(min(MAX_HOLD, max(MIN_HOLD, math.ceil(hold))))
