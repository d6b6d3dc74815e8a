"""Delivering a decision: publish the outcome, or hand the order to the enquiry loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cancellation.aws import EnquiryLoopStarter, LoopResult, OutcomePublisher
from cancellation.cancel import started_now, successor_name
from cancellation.observability import count, count_kind, logger

if TYPE_CHECKING:
    from cancellation.models import Decision, Handoff, LoopState


class Delivery:
    def __init__(
        self,
        publisher: OutcomePublisher,
        loops: EnquiryLoopStarter,
        clock: Callable[[], float],
    ) -> None:
        self.publisher = publisher
        self.loops = loops
        self.clock = clock

    def deliver(self, decision: Decision) -> str:
        if "handoff" in decision:
            handoff = decision["handoff"]
            state = started_now(handoff["input"], self.clock())
            started = self.loops.start(handoff["name"], state)
            if not started:
                loop = self.loops.result(handoff["name"])
                if loop.status != "RUNNING":
                    return self._after_finished_loop(handoff, state, loop)
            count("HandedToEnquiryLoop")
            logger.info("cancellation in progress: handed to the enquiry loop", extra={"started": started})
            return "IN_PROGRESS"
        detail = decision["outcome"]
        self.publisher.publish(detail)
        count_kind("Outcome", detail["status"])
        logger.info(
            "outcome",
            extra={
                "status": detail["status"],
                "respcd": detail["respcd"],
                "reason": detail["reason"],
            },
        )
        return str(detail["status"])

    def _after_finished_loop(self, handoff: Handoff, state: LoopState, loop: LoopResult) -> str:
        """The order's loop has ended already (its ledger record expired, and a new message came):
        what it decided is delivered again, under the same outcome_id. A loop that left no outcome
        we can read is followed by a new one of its own name, which asks the Enquiry again and
        never resends (the old one may have)."""
        if loop.outcome is not None:
            self.publisher.publish(loop.outcome)
            count_kind("Outcome", str(loop.outcome["status"]))
            logger.info("the order's loop had decided it already", extra={"status": loop.outcome["status"]})
            return str(loop.outcome["status"])
        name = successor_name(handoff)
        self.loops.start(name, {**state, "resent": True})
        count("HandedToEnquiryLoop")
        logger.info("the order's loop ended without an outcome; a new one asks again", extra={"loop": name})
        return "IN_PROGRESS"
