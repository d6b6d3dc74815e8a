"""The cancel function's work on one SQS batch: validate, decide once, deliver the decision once.

Orders of one batch run concurrently (bounded by ``batch_concurrency``) over one HTTP connection pool.
Each order goes through one record of the :class:`~cancellation.aws.DecisionLedger`, keyed on its
identity: deciding (the only stage that talks to QFPay), then delivering (publishing the outcome
or starting the loop). A failed delivery is retried by SQS and delivers the stored decision, so
QFPay is never asked to cancel twice for one order. Step Functions callers are answered once per
task token, through a record of their own.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from cancellation.aws import (
    CallerNotifier,
    Claim,
    DecisionLedger,
    EnquiryLoopStarter,
    LedgerStage,
    LoopResult,
    OrderBusy,
    OutcomePublisher,
    RedeliveryDelay,
)
from cancellation.batch import QueueMessage, process_batch, queue_messages
from cancellation.budget import spend_until
from cancellation.cancel import CancelAttempt, RetryLater, first_look, request_id, successor_name
from cancellation.observability import count, count_kind, logger
from cancellation.orders import InvalidOrder, Order, parse_order_message
from cancellation.outcomes import outcome_id, rejected_outcome
from cancellation.qfpay import CredentialsRejected, QFPayClient
from cancellation.respcd import meaning_of
from cancellation.settings import CancelSettings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from cancellation.models import Decision, Handoff, LoopState, OutcomeDecision


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
        self.qfpay = qfpay
        # As wide as the batch may run at once: the bound that keeps QFPay's rate limits.
        self._pool = ThreadPoolExecutor(max_workers=settings.batch_concurrency, thread_name_prefix="order")

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        # An order's lease lasts as long as this invocation may: then it is known to have died.
        lease_until = self.deps.clock() + context.get_remaining_time_in_millis() / 1000
        # A request must start early enough to be answered (read timeout) and recorded in time;
        # the orders' threads inherit this context.
        spend_until.set(lease_until - self.settings.qfpay.timeouts.read - 2)

        def process(message: QueueMessage) -> str:
            return self.process_record(message, lease_until)

        return process_batch(queue_messages(event), process, self._pool)

    def process_record(self, message: QueueMessage, lease_until: float) -> str:
        """One message; returns the status it ended in, raises to have SQS deliver it again."""
        logger.thread_safe_append_keys(message_id=message.message_id)
        try:
            return self._process(message, lease_until)
        except _RETRIED:
            raise  # logged where it was understood
        except Exception:
            logger.exception("order failed unexpectedly; SQS will deliver it again")
            raise
        finally:
            # Threads are reused across orders: no key may outlive its message.
            logger.thread_safe_remove_keys(["message_id", "order", "correlation_id", "caller"])

    def _process(self, message: QueueMessage, lease_until: float) -> str:
        try:
            order = parse_order_message(message.body)
        except InvalidOrder as invalid:
            return self._reject(message, invalid, lease_until)
        receive_count = message.receive_count
        try:
            seen: Mapping[str, Any] | None = None
            if order.syssn is None:
                # Named by out_trade_no alone: QFPay's record names the payment (its syssn), so
                # that every naming of one payment is one order. Read-only, before anything is held.
                try:
                    look = first_look(self.qfpay, order)
                    order, seen = look.order, look.answer
                except RetryLater as exc:
                    if not self._past_horizon(message, exc):
                        raise
                    # QFPay unreachable for the whole horizon: the attempt asks once more and
                    # ends the order, explained (CancelAttempt.give_up).
            # Where a decision that belongs to this message alone is kept (see
            # cancel.REQUEST_STATUSES). The message, not its content: the same fields sent before
            # QFPay knew the payment (1268) and again after must not share that refusal.
            message_key = f"{order.identity}|message={message.message_id}"
            # The outcome_id is the order's correlation id in both functions' logs and in the event.
            logger.thread_safe_append_keys(order=order.identity, correlation_id=outcome_id(order.identity))
            decision, status = self._once(
                order.identity,
                lease_until,
                self._deliver,
                # An attempt recorded before this one may have sent a cancel after that look: then
                # it is stale, and the attempt looks again.
                lambda claim, sends: self._decide_order(
                    order,
                    message_key,
                    claim,
                    message,
                    seen=None
                    if claim is not None and (claim.earlier_attempt or claim.earlier_sends)
                    else seen,
                    sends=sends,
                ),
                message_key=message_key,
            )
            if order.task_token:
                owner = message_key if decision.get("request") else order.identity
                last_receive = receive_count >= self.settings.max_receive_count
                self._answer_caller_once(owner, order.task_token, decision, lease_until, last_receive)
            return status
        except AwaitingLoop as waiting:
            # The caller's token stays in its message, and nowhere else, until the loop decides.
            hold = caller_hold_seconds(
                self.deps.clock(), waiting.started_at, waiting.deadline_at, self._receives_left(message)
            )
            self._delay(message, hold)
            logger.info("caller waits for the enquiry loop", extra={"hold_seconds": hold})
            raise
        except RetryLater as exc:
            return self._retry_later(message, exc)
        except OrderBusy:
            # Another attempt holds this order (a duplicate in this batch or another poller's).
            self._back_off(message, receive_count, throttled=False)
            logger.info("order already being cancelled elsewhere; will look again")
            raise
        except CredentialsRejected:
            # A configuration error must not drop orders: retried slowly, then the DLQ, and alarmed.
            count("SignatureRejected")
            self._back_off(message, receive_count, throttled=False)
            logger.error("QFPay rejected our signature after the secret was re-read")
            raise

    def _once(
        self,
        key: str,
        lease_until: float,
        deliver: Callable[[Decision], str],
        decide: Callable[[Claim | None, SendCount | None], Decision],
        *,
        known: bool = False,
        message_key: str | None = None,
    ) -> tuple[Decision, str]:
        """The decision recorded under ``key`` and what ``deliver`` made of it. Decided here by
        ``decide`` (given the claim: what earlier attempts may have done, and the count to call
        just before a cancel leaves) unless stored;
        delivered here unless it was already. ``known``: ``decide`` asks nothing of QFPay, so its
        decision is recorded with the claim. ``message_key``: where a decision that belongs to the
        message (``"request"`` in it) is recorded and delivered instead; the order is then handed
        back undecided, for other messages to decide."""
        ledger_key, holder = f"cancel#{key}", os.urandom(16).hex()  # this attempt, as the lease's holder
        claim = self.deps.ledger.claim(
            ledger_key, holder, self.deps.clock(), lease_until, decide(None, None) if known else None
        )
        sends = SendCount(self.deps.ledger, ledger_key, holder)
        if claim.stage == LedgerStage.DELIVERED and claim.decision is not None:
            return claim.decision, str(claim.result)
        try:
            decision = claim.decision
            if decision is None:
                decision = decide(claim, sends)
                if message_key is not None and decision.get("request"):
                    own = decision
                    answered = self._once(message_key, lease_until, deliver, lambda *_: own, known=True)
                    # QFPay refused the request itself: this attempt's cancel, if any, did nothing.
                    self._release(ledger_key, holder, sent_nothing=sends.counted)
                    return answered
                self.deps.ledger.record_decision(ledger_key, holder, decision)
            result = deliver(decision)
        except (RetryLater, CredentialsRejected):
            # QFPay showed that nothing happened: this attempt's cancel is not counted.
            self._release(ledger_key, holder, sent_nothing=sends.counted)
            raise
        except Exception:
            self._release(ledger_key, holder)
            raise
        self.deps.ledger.record_delivered(ledger_key, holder, result)
        return decision, result

    def _release(self, key: str, holder: str, *, sent_nothing: bool = False) -> None:
        try:
            self.deps.ledger.release(key, holder, sent_nothing=sent_nothing)
        except Exception:  # the lease then runs out with the invocation; the retry waits for it
            logger.exception("could not release the order after a failed attempt")

    def _retry_later(self, message: QueueMessage, exc: RetryLater) -> str:
        """Send the message back to the queue, due when it may succeed, without spending one of
        its receives: the DLQ is for messages that cannot be processed, not for a merchant's
        spent budget or a QFPay outage (those are bounded by time, ``retry_horizon``)."""
        now = self.deps.clock()
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
        first = message.first_attempt_at if message.first_attempt_at is not None else now
        try:
            self.deps.redelivery.requeue(message.queue_arn, message.body, delay, first, requeues)
        except Exception:
            logger.exception("could not send the message back; SQS delivers it again")
            self._back_off(message, message.receive_count, throttled=exc.throttled)
            raise exc from None
        logger.warning(
            "cancel will be retried",
            extra={"reason": str(exc), "retry_in_seconds": delay, "requeues": requeues},
        )
        return "RETRY_LATER"

    def _past_horizon(self, message: QueueMessage, exc: RetryLater) -> bool:
        """QFPay has been unreachable since the message's first attempt for longer than the retry
        horizon (our own spent budget never counts: it is no failure of QFPay's)."""
        first = message.first_attempt_at
        if exc.budget_free_at is not None or first is None:
            return False
        return self.deps.clock() - first >= self.settings.retry_horizon

    def _decide_order(
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
            own = self.deps.ledger.decision_of(f"cancel#{message_key}")
            if own is not None and own.get("request"):
                return own
        attempt = CancelAttempt(
            order=order,
            qfpay=self.qfpay,
            routing=self.settings.qfpay.routing,
            loop=self.settings.loop,
            clock=self.deps.clock,
            redelivered=redelivered,
            earlier_sends=claim.earlier_sends if claim is not None else 0,
            first_attempt_at=message.first_attempt_at,
            seen=seen,
            count_send=sends,
        )
        try:
            decision = attempt.decide()
        except RetryLater as exc:
            if not self._past_horizon(message, exc):
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

    def _deliver(self, decision: Decision) -> str:
        if "handoff" in decision:
            handoff = decision["handoff"]
            # The loop's time counts from the hand-off, not from the decision: a decision replayed
            # after a crash must not start a loop with its deadline mostly spent.
            now = self.deps.clock()
            state: LoopState = {
                **handoff["input"],
                "started_at": now,
                "deadline_at": now + self.settings.loop.deadline_seconds,
            }
            started = self.deps.loop_starter.start(handoff["name"], state)
            if not started:
                loop = self.deps.loop_starter.result(handoff["name"])
                if loop.status != "RUNNING":
                    return self._after_finished_loop(handoff, state, loop)
            count("HandedToEnquiryLoop")
            logger.info("cancellation in progress: handed to the enquiry loop", extra={"started": started})
            return "IN_PROGRESS"
        detail = decision["outcome"]
        self.deps.publisher.publish(detail)
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
            self.deps.publisher.publish(loop.outcome)
            count_kind("Outcome", str(loop.outcome["status"]))
            logger.info("the order's loop had decided it already", extra={"status": loop.outcome["status"]})
            return str(loop.outcome["status"])
        name = successor_name(handoff)
        self.deps.loop_starter.start(name, {**state, "resent": True})
        count("HandedToEnquiryLoop")
        logger.info("the order's loop ended without an outcome; a new one asks again", extra={"loop": name})
        return "IN_PROGRESS"

    def _receives_left(self, message: QueueMessage) -> int:
        return max(0, self.settings.max_receive_count - message.receive_count)

    def _answer_caller_once(
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
        self._once(
            f"{order_key}|caller={caller}",
            lease_until,
            lambda recorded: str(self._answer_caller(task_token, recorded, last_receive)),
            lambda *_: decision,
            known=True,
        )

    def _answer_caller(self, token: str, decision: Decision, last_receive: bool) -> bool:
        if "outcome" in decision:
            return self.deps.notifier.notify(token, decision["outcome"])
        handoff = decision["handoff"]
        if handoff["input"]["order"].get("task_token") == token:
            # A loop started before tokens were kept out of its state answers this caller itself.
            return True
        loop = self._loop_of(handoff)
        if loop.outcome is not None:
            return self.deps.notifier.notify(token, loop.outcome)
        if loop.status == "RUNNING":
            if not last_receive and loop.started_at is not None and loop.deadline_at is not None:
                raise AwaitingLoop(loop.started_at, loop.deadline_at)
            # Explicit, so the caller can retry later; a later message gets the decided outcome.
            cause = "this order is still being decided by the enquiry loop; retry later"
            return self.deps.notifier.fail(token, "Cancellation.InProgress", cause)
        # Ended without an outcome we can read: never claim more than "not confirmed".
        return self.deps.notifier.fail(token, "Cancellation.Unknown", loop.cause or loop.status)

    def _loop_of(self, handoff: Handoff) -> LoopResult:
        """The loop deciding this hand-off: the execution of the order's name, or, when that one had
        ended without an outcome before this hand-off (see :meth:`_after_finished_loop`), the one
        started after it."""
        loop = self.deps.loop_starter.result(handoff["name"])
        if loop.outcome is not None or loop.status == "RUNNING":
            return loop
        successor = self.deps.loop_starter.find(successor_name(handoff))
        return successor if successor is not None else loop

    def _reject(self, message: QueueMessage, invalid: InvalidOrder, lease_until: float) -> str:
        ids = invalid.identifiers
        detail = rejected_outcome(
            invalid.reason,
            now=self.deps.clock(),
            out_trade_no=ids.get("out_trade_no"),
            syssn=ids.get("syssn"),
            mchid=ids.get("mchid"),
            message_id=message.message_id,
        )
        logger.warning("order rejected", extra={"reason": invalid.reason})
        # Delivered once per outcome_id, like any decision: a redelivered message is not rejected twice.
        decision: OutcomeDecision = {"outcome": detail}
        key = f"rejected:{detail['outcome_id']}"
        _, status = self._once(key, lease_until, self._deliver, lambda *_: decision, known=True)
        if ids.get("task_token"):
            self._answer_caller_once(key, ids["task_token"], decision, lease_until)
        return status

    def _back_off(self, message: QueueMessage, receive_count: int, *, throttled: bool) -> None:
        """Exponential backoff with full jitter, by receive count; QFPay's 429 backs off harder."""
        base = self.settings.retry_base_delay * (4 if throttled else 1)
        ceiling = min(self.settings.retry_max_delay, base * 2 ** min(receive_count - 1, 16))
        self._delay(message, math.ceil(random.uniform(ceiling / 2, ceiling)))  # noqa: S311 - jitter

    def _delay(self, message: QueueMessage, delay: int) -> None:
        try:
            self.deps.redelivery.delay(message.queue_arn, message.receipt_handle, delay)
        except Exception:
            logger.exception("could not delay the retry; the queue's visibility timeout applies")


class SendCount:
    """Counts this attempt's cancel in the ledger just before it leaves (see
    :meth:`DecisionLedger.count_send`), and remembers that it did."""

    def __init__(self, ledger: DecisionLedger, key: str, holder: str) -> None:
        self._ledger, self._key, self._holder = ledger, key, holder
        self.counted = False

    def __call__(self) -> None:
        self._ledger.count_send(self._key, self._holder)
        self.counted = True


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


# Raised to have SQS deliver the message again, after being logged where they were understood.
_RETRIED = (RetryLater, OrderBusy, CredentialsRejected, AwaitingLoop)
