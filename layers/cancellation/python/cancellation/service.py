"""The cancel function's work on one SQS batch: validate, decide once, deliver the decision once.

Orders of one batch run concurrently (bounded by ``batch_concurrency``) over one HTTP connection pool.
Idempotency is two steps keyed on the order identity: deciding (the only step that talks to
QFPay) and delivering (publishing the outcome or starting the loop). A failed delivery is retried
by SQS and replays the stored decision, so QFPay is never asked to cancel twice for one order.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

from cancellation.aws import (
    CallerNotifier,
    CancelIntentLog,
    EnquiryLoopStarter,
    LazyClient,
    OutcomePublisher,
    QFPayCredentials,
    RedeliveryDelay,
)
from cancellation.batch import QueueMessage, process_batch, queue_messages
from cancellation.cancel import CancelAttempt, RetryLater
from cancellation.observability import count, count_kind, logger
from cancellation.orders import InvalidOrder, Order, parse_order_message
from cancellation.outcomes import outcome_id, rejected_outcome
from cancellation.qfpay import CredentialsRejected, QFPayClient
from cancellation.respcd import meaning_of
from cancellation.settings import CancelSettings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


class CancelDependencies(NamedTuple):
    """What the service talks to; tests and the local run pass real clients pointed at stand-ins."""

    publisher: OutcomePublisher
    loop_starter: EnquiryLoopStarter
    notifier: CallerNotifier
    credentials: QFPayCredentials
    redelivery: RedeliveryDelay
    intents: CancelIntentLog
    dynamodb: Callable[[], Any]
    clock: Callable[[], float] = time.time

    @classmethod
    def for_settings(cls, settings: CancelSettings) -> CancelDependencies:
        sfn = LazyClient("stepfunctions")
        dynamodb = LazyClient("dynamodb")
        return cls(
            publisher=OutcomePublisher(settings.event_bus_name),
            loop_starter=EnquiryLoopStarter(settings.state_machine_arn, sfn),
            notifier=CallerNotifier(sfn),
            credentials=QFPayCredentials(settings.qfpay.secret_id, settings.qfpay.secret_max_age),
            redelivery=RedeliveryDelay(),
            intents=CancelIntentLog(settings.idempotency_table, settings.idempotency_expiry, dynamodb),
            dynamodb=dynamodb,
        )


class CancelService:
    def __init__(self, settings: CancelSettings, deps: CancelDependencies) -> None:
        self.settings = settings
        self.deps = deps
        self.qfpay = QFPayClient.for_settings(settings.qfpay, deps.credentials, settings.batch_concurrency)
        self.idempotency = IdempotencyConfig(
            event_key_jmespath="order_key",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=settings.idempotency_expiry,
        )
        self._decide = self._once(self._decide_order, "cancel-decision")
        self._deliver = self._once(self._deliver_decision, "cancel-delivery")
        self._answer = self._once(self._answer_caller, "cancel-caller")
        # As wide as the batch may run at once: the bound that keeps QFPay's rate limits.
        self._pool = ThreadPoolExecutor(max_workers=settings.batch_concurrency, thread_name_prefix="order")

    def _once(self, step: Callable[..., Any], key_prefix: str) -> Callable[..., Any]:
        """``step`` made idempotent on ``request["order_key"]``. One persistence layer per step:
        Powertools keeps the key prefix on the layer, and the steps run concurrently."""
        persistence = DynamoDBPersistenceLayer(
            table_name=self.settings.idempotency_table, boto3_client=self.deps.dynamodb()
        )
        wrapped: Callable[..., Any] = idempotent_function(
            step,
            data_keyword_argument="request",
            persistence_store=persistence,
            config=self.idempotency,
            key_prefix=key_prefix,
        )
        return wrapped

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        self.idempotency.register_lambda_context(context)
        return process_batch(queue_messages(event), self.process_record, self._pool)

    def process_record(self, message: QueueMessage) -> str:
        """One message; returns the status it ended in, raises to have SQS deliver it again."""
        logger.thread_safe_append_keys(message_id=message.message_id)
        try:
            return self._process(message)
        except _RETRIED:
            raise  # logged where it was understood
        except Exception:
            logger.exception("order failed unexpectedly; SQS will deliver it again")
            raise
        finally:
            # Threads are reused across orders: no key may outlive its message.
            logger.thread_safe_remove_keys(["message_id", "order", "correlation_id"])

    def _process(self, message: QueueMessage) -> str:
        try:
            order = parse_order_message(message.body)
        except InvalidOrder as invalid:
            return self._reject(message, invalid)
        # The outcome_id is the order's correlation id in both functions' logs and in the event.
        logger.thread_safe_append_keys(order=order.identity, correlation_id=outcome_id(order.identity))
        receive_count = message.receive_count
        request = {
            "order_key": order.identity,
            "order": order.to_dict(),
            "redelivered": receive_count > 1,
        }
        try:
            decision = self._decide(request=request)
            status = str(self._deliver(request={"order_key": order.identity, "decision": decision}))
            if order.task_token:
                self._answer(request=_caller_request(order.identity, order.task_token, decision))
            return status
        except RetryLater as exc:
            count("QFPayRetryLater")
            self._back_off(message, receive_count, throttled=exc.throttled)
            logger.warning(
                "cancel will be retried", extra={"reason": str(exc), "receive_count": receive_count}
            )
            raise
        except IdempotencyAlreadyInProgressError:
            # A duplicate of this order is being decided right now (same batch or another poller).
            self._back_off(message, receive_count, throttled=False)
            logger.info("order already being cancelled elsewhere; will look again")
            raise
        except CredentialsRejected:
            # A configuration error must not drop orders: retried slowly, then the DLQ, and alarmed.
            count("SignatureRejected")
            self._back_off(message, receive_count, throttled=False)
            logger.error("QFPay rejected our signature after the secret was re-read")
            raise

    def _decide_order(self, request: dict[str, Any]) -> dict[str, Any]:
        order = Order.from_dict(request["order"])
        # A first delivery of this message is not enough: an attempt for the same order may have
        # died after sending (a duplicate message can arrive after its lock expired).
        first = self.deps.intents.first_intent(order.identity, self.deps.clock())
        attempt = CancelAttempt(
            order=order,
            qfpay=self.qfpay,
            routing=self.settings.qfpay.routing,
            loop=self.settings.loop,
            clock=self.deps.clock,
            redelivered=bool(request["redelivered"]) or not first,
        )
        decision = attempt.decide()
        # Counted here, where QFPay answered, not when a duplicate replays the stored decision.
        handoff = decision.get("handoff")
        respcd = handoff["input"]["respcd"] if handoff else decision["outcome"]["respcd"]
        answer = meaning_of(respcd).disposition.value if respcd else "no_answer"
        count_kind("QFPayAnswer", answer)
        return decision

    def _deliver_decision(self, request: dict[str, Any]) -> str:
        decision = request["decision"]
        if "handoff" in decision:
            handoff = decision["handoff"]
            # The loop's time counts from the hand-off, not from the decision: a decision replayed
            # after a crash must not start a loop with its deadline mostly spent.
            now = self.deps.clock()
            state = {
                **handoff["input"],
                "started_at": now,
                "deadline_at": now + self.settings.loop.deadline_seconds,
            }
            started = self.deps.loop_starter.start(handoff["name"], state)
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

    def _answer_caller(self, request: dict[str, Any]) -> bool:
        """Answer one Step Functions caller, once per task token: every caller of an order hears
        its outcome, not only the first one."""
        token, decision = request["task_token"], request["decision"]
        if "outcome" in decision:
            return self.deps.notifier.notify(token, decision["outcome"])
        handoff = decision["handoff"]
        if handoff["input"]["order"].get("task_token") == token:
            return True  # the loop answers the caller whose message started it
        loop = self.deps.loop_starter.result(handoff["name"])
        if loop.outcome is not None:
            return self.deps.notifier.notify(token, loop.outcome)
        if loop.status == "RUNNING":
            # Explicit, so the caller can retry later; a later message gets the decided outcome.
            cause = "another message for this order is being decided by the enquiry loop; retry later"
            return self.deps.notifier.fail(token, "Cancellation.InProgress", cause)
        return self.deps.notifier.fail(token, loop.error or "Cancellation.Unknown", loop.cause or loop.status)

    def _reject(self, message: QueueMessage, invalid: InvalidOrder) -> str:
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
        key = f"rejected:{detail['outcome_id']}"
        status = str(self._deliver(request={"order_key": key, "decision": {"outcome": detail}}))
        if ids.get("task_token"):
            self._answer(request=_caller_request(key, ids["task_token"], {"outcome": detail}))
        return status

    def _back_off(self, message: QueueMessage, receive_count: int, *, throttled: bool) -> None:
        """Exponential backoff with full jitter, by receive count; QFPay's 429 backs off harder."""
        base = self.settings.retry_base_delay * (4 if throttled else 1)
        ceiling = min(self.settings.retry_max_delay, base * 2 ** min(receive_count - 1, 16))
        delay = math.ceil(random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter, not security
        try:
            self.deps.redelivery.delay(message.queue_arn, message.receipt_handle, delay)
        except Exception:
            logger.exception("could not delay the retry; the queue's visibility timeout applies")


# Raised to have SQS deliver the message again, after being logged where they were understood.
_RETRIED = (RetryLater, IdempotencyAlreadyInProgressError, CredentialsRejected)


def _caller_request(order_key: str, task_token: str, decision: dict[str, Any]) -> dict[str, Any]:
    # Keyed by order and caller; the token itself is not a secret but is long, so it is hashed.
    caller = hashlib.sha256(task_token.encode("utf-8")).hexdigest()
    return {"order_key": f"{order_key}|caller={caller}", "task_token": task_token, "decision": decision}
