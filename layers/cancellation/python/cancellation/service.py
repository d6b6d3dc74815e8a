"""The cancel function's work on one SQS batch: validate, decide once, deliver the decision once.

Orders of one batch run concurrently (bounded by ``batch_concurrency``) over one HTTP connection pool.
Each order is decided (:mod:`~cancellation.deciding`) and its decision delivered
(:mod:`~cancellation.delivery`) exactly once (:mod:`~cancellation.exactly_once`); Step Functions
callers are answered once per task token (:mod:`~cancellation.callers`); a message that must wait
goes back to SQS (:mod:`~cancellation.backoff`). This class only orchestrates them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from cancellation.aws import (
    CallerNotifier,
    DecisionLedger,
    EnquiryLoopStarter,
    OrderBusy,
    OutcomePublisher,
    RedeliveryDelay,
)
from cancellation.backoff import Backoff
from cancellation.batch import QueueMessage, process_batch, queue_messages
from cancellation.callers import AwaitingLoop, CallerAnswers, caller_hold_seconds
from cancellation.cancel import FirstLook, RetryLater
from cancellation.deciding import OrderDecider, look_up_together
from cancellation.delivery import Delivery
from cancellation.enquiry_round import EnquiryRound, current_round
from cancellation.exactly_once import ExactlyOnce
from cancellation.invocation import spend_until
from cancellation.observability import count, logger
from cancellation.orders import InvalidOrder, parse_order_message
from cancellation.outcomes import outcome_id, rejection_of
from cancellation.qfpay import CredentialsRejected, CredentialsUnreadable, QFPayClient
from cancellation.settings import CancelSettings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from cancellation.models import OutcomeDecision


class CancelDependencies(NamedTuple):
    """What the service talks to; tests and the local run pass real clients pointed at stand-ins."""

    publisher: OutcomePublisher
    loop_starter: EnquiryLoopStarter
    notifier: CallerNotifier
    redelivery: RedeliveryDelay
    ledger: DecisionLedger
    clock: Callable[[], float] = time.time


class CancelService:
    def __init__(self, settings: CancelSettings, deps: CancelDependencies, qfpay: QFPayClient) -> None:
        self.settings = settings
        self.deps = deps
        self.once = ExactlyOnce(deps.ledger, deps.clock)
        self.delivery = Delivery(deps.publisher, deps.loop_starter, deps.clock)
        self.callers = CallerAnswers(self.once, deps.notifier, deps.loop_starter)
        self.backoff = Backoff(settings, deps.redelivery, deps.clock)
        self.decider = OrderDecider(settings, qfpay, deps.ledger, deps.clock)
        # As wide as the batch may run at once: the bound that keeps QFPay's rate limits.
        self._pool = ThreadPoolExecutor(max_workers=settings.batch_concurrency, thread_name_prefix="order")

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        # An order's lease lasts as long as this invocation may: then it is known to have died.
        lease_until = self.deps.clock() + context.get_remaining_time_in_millis() / 1000
        # A request must start early enough to be answered (read timeout) and recorded in time;
        # the orders' threads inherit this context.
        spend_until.set(lease_until - self.settings.qfpay.timeouts.read - 2)

        messages = queue_messages(event)
        looks = look_up_together(self.decider.qfpay, messages)
        # The orders' confirming Enquiries, asked together where they can be (one request, not ten).
        shared = EnquiryRound(len(messages), self.settings.batch_concurrency, self.settings.enquiry_round)

        def process(message: QueueMessage) -> str:
            try:
                return self.process_record(message, lease_until, looks.get(message.message_id))
            finally:
                shared.finished()

        asking_together = current_round.set(shared if self.settings.enquiry_round > 0 else None)
        try:
            return process_batch(messages, process, self._pool)
        finally:
            current_round.reset(asking_together)

    def process_record(
        self, message: QueueMessage, lease_until: float, look: FirstLook | RetryLater | None = None
    ) -> str:
        """One message; returns the status it ended in, raises to have SQS deliver it again.
        ``look``: its order's look-up, made with others of the batch (or why it failed)."""
        logger.thread_safe_append_keys(message_id=message.message_id)
        try:
            return self._process(message, lease_until, look)
        except _RETRIED:
            raise  # logged where it was understood
        except Exception:
            logger.exception("order failed unexpectedly; SQS will deliver it again")
            raise
        finally:
            # Threads are reused across orders: no key may outlive its message.
            logger.thread_safe_remove_keys(["message_id", "order", "correlation_id", "caller"])

    def _process(
        self, message: QueueMessage, lease_until: float, looked: FirstLook | RetryLater | None
    ) -> str:
        try:
            order = parse_order_message(message.body)
        except InvalidOrder as invalid:
            return self._reject(message, invalid, lease_until)
        receive_count = message.receive_count
        try:
            order, seen = self.decider.named_by_qfpay(order, message, looked)
            # Where a decision that belongs to this message alone is kept (see
            # cancel.REQUEST_STATUSES). The message, not its content: the same fields sent before
            # QFPay knew the payment (1268) and again after must not share that refusal.
            message_key = f"{order.identity}|message={message.key_id}"
            # The outcome_id is the order's correlation id in both functions' logs and in the event.
            logger.thread_safe_append_keys(order=order.identity, correlation_id=outcome_id(order.identity))
            decision, status = self.once.run_once(
                order.identity,
                lease_until,
                self.delivery.deliver,
                # An attempt recorded before this one may have sent a cancel (or been refused)
                # after that look: then it is stale, and the attempt looks again. One whose record
                # counts neither sent nothing since: the look still holds, figures and all.
                lambda claim, sends: self.decider.decide(
                    order,
                    message_key,
                    claim,
                    message,
                    seen=None if claim is not None and claim.reached_qfpay else seen,
                    sends=sends,
                ),
                message_key=message_key,
            )
            if order.task_token:
                owner = message_key if decision.get("request") else order.identity
                last_receive = receive_count >= self.settings.max_receive_count
                self.callers.answer_once(owner, order.task_token, decision, lease_until, last_receive)
            return status
        except AwaitingLoop as waiting:
            # The caller's token stays in its message, and nowhere else, until the loop decides.
            hold = caller_hold_seconds(
                self.deps.clock(),
                waiting.started_at,
                waiting.deadline_at,
                self.backoff.receives_left(message),
            )
            self.backoff.delay(message, hold)
            logger.info("caller waits for the enquiry loop", extra={"hold_seconds": hold})
            raise
        except RetryLater as exc:
            return self.backoff.retry_later(message, exc)
        except OrderBusy as busy:
            # Another attempt holds this order (a duplicate in this batch or another poller's).
            return self.backoff.wait_for_holder(message, busy)
        except CredentialsRejected as refused:
            # A configuration error must not drop orders: retried slowly, then the DLQ, and alarmed.
            unreadable = isinstance(refused, CredentialsUnreadable)
            if not unreadable:
                count("SignatureRejected")
            self.backoff.back_off(message, receive_count, throttled=False)
            if unreadable:
                logger.error(
                    "the merchant's secret could not be read; nothing was sent",
                    extra={"reason": str(refused)},
                )
            else:
                logger.error("QFPay rejected our signature after the secret was re-read")
            raise

    def _reject(self, message: QueueMessage, invalid: InvalidOrder, lease_until: float) -> str:
        ids = invalid.identifiers
        detail = rejection_of(invalid, now=self.deps.clock(), message_id=message.message_id)
        logger.warning("order rejected", extra={"reason": invalid.reason})
        # Delivered once per outcome_id, like any decision: a redelivered message is not rejected twice.
        decision: OutcomeDecision = {"outcome": detail}
        key = f"rejected:{detail['outcome_id']}"
        _, status = self.once.run_once(
            key, lease_until, self.delivery.deliver, lambda *_: decision, known=True
        )
        if ids.get("task_token"):
            self.callers.answer_once(key, ids["task_token"], decision, lease_until)
        return status


# Raised to have SQS deliver the message again, after being logged where they were understood.
_RETRIED = (RetryLater, OrderBusy, CredentialsRejected, AwaitingLoop)
