"""Deciding an order for one of its messages: the cancel attempt, given what earlier attempts may
have done, and what becomes of it past the retry horizon or when QFPay refused the request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cancellation.aws import Claim, DecisionLedger
from cancellation.batch import QueueMessage
from cancellation.cancel import CancelAttempt, FirstLook, RetryLater, batch_look, request_id
from cancellation.naming import PaymentNaming
from cancellation.observability import count_kind, logger
from cancellation.orders import Order, parse_order_message
from cancellation.qfpay import QFPayClient
from cancellation.respcd import documented, meaning_of
from cancellation.settings import CancelSettings

if TYPE_CHECKING:
    from cancellation.exactly_once import SendCount
    from cancellation.models import Decision


def look_up_together(qfpay: QFPayClient, messages: list[QueueMessage]) -> dict[str, FirstLook | RetryLater]:
    """The orders of this batch named only by out_trade_no, looked up with one Enquiry per
    merchant (``batch_look``) rather than one each: by message id. An order left out (alone
    for its merchant, or its query could not hold its rows) looks for itself."""
    by_merchant: dict[str | None, list[tuple[str, Order]]] = {}
    for message in messages:
        try:
            order = parse_order_message(message.body)
        except Exception:  # noqa: S112 - its own thread rejects it (or fails it alone)
            continue
        if order.syssn is None and order.out_trade_no:
            by_merchant.setdefault(order.mchid, []).append((message.message_id, order))
    looks: dict[str, FirstLook | RetryLater] = {}
    for named in by_merchant.values():
        if len(named) < 2:
            continue  # its own look is the same one request
        try:
            found = batch_look(qfpay, [order for _, order in named])
        except Exception:  # never the batch's failure: each order then looks for itself
            logger.exception("the batch's look-up failed; each order looks itself up")
            continue
        for (message_id, _), look in zip(named, found, strict=True):
            if look is not None:
                looks[message_id] = look
    return looks


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
        self.naming = PaymentNaming(qfpay, ledger.names, clock)

    def named_by_qfpay(
        self, order: Order, message: QueueMessage, looked: FirstLook | RetryLater | None
    ) -> tuple[Order, Mapping[str, Any] | None]:
        """The order named as its payment's identity names it (:mod:`cancellation.naming`), with the
        Enquiry's answer when one was asked. Read-only towards QFPay, before anything is held.
        ``looked``: the batch's look-up (or why it failed). QFPay unreachable for the whole horizon:
        the attempt asks once more and ends the order, explained (CancelAttempt.give_up)."""
        return self.naming.name(order, looked, lambda exc: self.past_horizon(message, exc))

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
        # delivery (a duplicate can arrive after the earlier attempt died): SQS delivered this
        # message before (an attempt of it may have died under another identity), or the order's
        # record counts a cancel that may have reached QFPay, or one QFPay refused. A record taken
        # over with nothing counted has nothing of ours to look for: its earlier attempts sent
        # nothing, or QFPay showed it did nothing (a spent budget, 429, "try later"), and an
        # Enquiry first would only spend the merchant's budget again on every requeued attempt.
        receive_count = message.receive_count
        redelivered = receive_count > 1 or (claim is not None and claim.reached_qfpay)
        if receive_count > 1 or message.sent_back:
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
            ledger_expiry=self.settings.ledger_expiry,
            forgotten=claim is not None and claim.forgotten,
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
        if not respcd:
            answer = "no_answer"
        elif not documented(respcd):
            answer = "undocumented"  # an operator's cue: QFPay answered a code it does not document
        else:
            answer = meaning_of(respcd).disposition.value
        count_kind("QFPayAnswer", answer)
        return decision
