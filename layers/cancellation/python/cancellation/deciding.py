"""Deciding an order for one of its messages: the cancel attempt, given what earlier attempts may
have done, and what becomes of it past the retry horizon or when QFPay refused the request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cancellation.aws import Claim, DecisionLedger
from cancellation.batch import QueueMessage
from cancellation.cancel import CancelAttempt, RetryLater, request_id
from cancellation.observability import count_kind
from cancellation.orders import Order
from cancellation.qfpay import QFPayClient
from cancellation.respcd import meaning_of
from cancellation.settings import CancelSettings

if TYPE_CHECKING:
    from cancellation.exactly_once import SendCount
    from cancellation.models import Decision


class OrderDecider:
    def __init__(
        self,
        settings: CancelSettings,
        qfpay: QFPayClient,
        ledger: DecisionLedger,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.qfpay = qfpay
        self.ledger = ledger
        self.clock = clock

    def past_horizon(self, message: QueueMessage, exc: RetryLater) -> bool:
        """QFPay has been unreachable since the message's first attempt for longer than the retry
        horizon (our own spent budget never counts: it is no failure of QFPay's)."""
        first = message.first_attempt_at
        if exc.budget_free_at is not None or first is None:
            return False
        return self.clock() - first >= self.settings.retry_horizon

    def decide(
        self,
        order: Order,
        message_key: str,
        claim: Claim | None,
        message: QueueMessage,
        *,
        seen: Mapping[str, Any] | None,
        sends: SendCount | None,
    ) -> Decision:
        # An attempt before this one may have reached QFPay, even when this message is a first
        # delivery (a duplicate can arrive after the earlier attempt died).
        receive_count = message.receive_count
        redelivered = receive_count > 1 or (claim is not None and claim.earlier_attempt)
        if receive_count > 1:
            # QFPay may have refused this very message already: never ask it again.
            own = self.ledger.decision_of(f"cancel#{message_key}")
            if own is not None and own.get("request"):
                return own
        attempt = CancelAttempt(
            order=order,
            qfpay=self.qfpay,
            routing=self.settings.qfpay.routing,
            loop=self.settings.loop,
            clock=self.clock,
            redelivered=redelivered,
            earlier_sends=claim.earlier_sends if claim is not None else 0,
            first_attempt_at=message.first_attempt_at,
            seen=seen,
            count_send=sends,
        )
        try:
            decision = attempt.decide()
        except RetryLater as exc:
            if not self.past_horizon(message, exc):
                raise
            # Retried by time, not by count: past the horizon the order ends, explained.
            hours = self.settings.retry_horizon / 3600
            decision = attempt.give_up(
                f"QFPay could not be reached for {hours:g} h since the first attempt ({exc}); "
                "not known whether the payment is cancelled: a person must look"
            )
        if "outcome" in decision and decision.get("request"):
            # Named by the request: consumers drop repeats by outcome_id, and must neither drop the
            # order's outcome, yet to come, nor see one bad request sent twice as two refusals.
            outcome = decision["outcome"]
            refused = request_id(order, outcome["endpoint"])
            decision = {"outcome": {**outcome, "outcome_id": refused}, "request": True}
        # Counted here, where QFPay answered, not when a duplicate replays the stored decision.
        if "handoff" in decision:
            respcd = decision["handoff"]["input"]["respcd"]
        else:
            respcd = decision["outcome"]["respcd"]
        answer = meaning_of(respcd).disposition.value if respcd else "no_answer"
        count_kind("QFPayAnswer", answer)
        return decision
