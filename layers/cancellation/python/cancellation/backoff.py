"""Sending a message back to SQS for later: requeued by time while QFPay took nothing (a spent
budget, an outage), or delayed by receive count while another attempt holds its order."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from cancellation.aws import OrderBusy, RedeliveryDelay
from cancellation.batch import QueueMessage
from cancellation.cancel import RetryLater
from cancellation.observability import count, logger
from cancellation.settings import CancelSettings


class Backoff:
    def __init__(
        self, settings: CancelSettings, redelivery: RedeliveryDelay, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.redelivery = redelivery
        self.clock = clock

    def retry_later(self, message: QueueMessage, exc: RetryLater) -> str:
        """Send the message back to the queue, due when it may succeed, without spending one of
        its receives: the DLQ is for messages that cannot be processed, not for a merchant's
        spent budget or a QFPay outage (those are bounded by time, ``retry_horizon``)."""
        now = self.clock()
        if exc.budget_free_at is not None:
            count("QFPayBudgetWait")
            # Spread over a second, so that orders sent back together do not all return at once.
            delay = math.ceil(max(0.0, exc.budget_free_at - now) + random.uniform(0, 1))  # noqa: S311
            requeues = message.requeues
        else:
            count("QFPayRetryLater")
            base = self.settings.retry_base_delay * (4 if exc.throttled else 1)
            ceiling = min(self.settings.retry_max_delay, 900, base * 2 ** min(message.requeues, 16))
            delay = math.ceil(random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter, not security
            requeues = message.requeues + 1
        self._requeue(message, delay, requeues, exc, throttled=exc.throttled)
        logger.warning(
            "cancel will be retried",
            extra={"reason": str(exc), "retry_in_seconds": delay, "requeues": requeues},
        )
        return "RETRY_LATER"

    def wait_for_holder(self, message: QueueMessage, busy: OrderBusy) -> str:
        """Another attempt holds the order: send the message back, without spending one of its
        receives, to look again after a growing, jittered delay that never runs past the holder's
        lease. Waiting for a duplicate is not a failure of this message (a holder waiting for the
        merchant's budget, or one that died holding its lease, can outlast five backoffs), and
        most holders finish in seconds, long before their lease ends."""
        now = self.clock()
        step = min(
            self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** min(message.requeues, 16)
        )
        lease_left = busy.held_until - now if busy.held_until is not None else step
        wait = max(0.0, min(step, lease_left))
        delay = math.ceil(wait + random.uniform(0, 1))  # noqa: S311 - jitter, not security
        self._requeue(message, delay, message.requeues + 1, busy, throttled=False)
        logger.info("order held by another attempt; looking again", extra={"retry_in_seconds": delay})
        return "RETRY_LATER"

    def _requeue(
        self, message: QueueMessage, delay: int, requeues: int, reason: Exception, *, throttled: bool
    ) -> None:
        """Send the message again as a new one (its receives unspent); if SQS refuses, fall back to
        a backoff by receive count and raise ``reason``, so the original is delivered again."""
        first = message.first_attempt_at if message.first_attempt_at is not None else self.clock()
        try:
            self.redelivery.requeue(
                message.queue_arn, message.body, delay, first, requeues, message_id=message.key_id
            )
        except Exception:
            logger.exception("could not send the message back; SQS delivers it again")
            self.back_off(message, message.receive_count, throttled=throttled)
            raise reason from None

    def receives_left(self, message: QueueMessage) -> int:
        return max(0, self.settings.max_receive_count - message.receive_count)

    def back_off(self, message: QueueMessage, receive_count: int, *, throttled: bool) -> None:
        """Exponential backoff with full jitter, by receive count; QFPay's 429 backs off harder."""
        base = self.settings.retry_base_delay * (4 if throttled else 1)
        ceiling = min(self.settings.retry_max_delay, base * 2 ** min(receive_count - 1, 16))
        self.delay(message, math.ceil(random.uniform(ceiling / 2, ceiling)))  # noqa: S311 - jitter

    def delay(self, message: QueueMessage, delay: int) -> None:
        try:
            self.redelivery.delay(message.queue_arn, message.receipt_handle, delay)
        except Exception:
            logger.exception("could not delay the retry; the queue's visibility timeout applies")
