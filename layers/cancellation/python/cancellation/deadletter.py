"""The dead-letter queue's consumer: an order message that could not be processed (it failed on
every receive the order queue allows) still ends in an explained outcome, and its task-token
caller is answered.

It never sends a cancel. A message naming the payment only by ``out_trade_no`` is named as the
cancel function names it (:mod:`cancellation.naming`: the identity the ledger bound its
out_trade_no to, else one Transaction Enquiry, read-only, for the payment's ``syssn``), so that
its outcome has the identity its other messages have; if QFPay cannot be asked, or its record
disagrees with the message, the order keeps the name the message gives (``mchid`` +
``out_trade_no``), and the reason says why.

It then reads what the decision ledger knows of the order. A decision recorded for the order is
the order's one outcome: delivered here if its delivery was abandoned (published, or its loop
started), and the caller answered from it. An order nobody decided gets an ``UNKNOWN`` outcome
of this message's own (an ``outcome_id`` of its own, recorded under the message, like QFPay
refusing one message's request): reconciliation re-checks it with the Transaction Enquiry, and
the order stays open, so a message sent again once the cause is fixed is decided as usual. The
dead message is then consumed: everything in it but the task token is in the outcome, its message
id in the reason.
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
    LedgerStage,
    OrderBusy,
    OutcomePublisher,
)
from cancellation.batch import QueueMessage, process_batch, queue_messages
from cancellation.callers import CallerAnswers
from cancellation.cancel import RetryLater, disagreement, started_now
from cancellation.enquiry import read_enquiry
from cancellation.exactly_once import ExactlyOnce
from cancellation.invocation import spend_until
from cancellation.models import Decision, OutcomeDecision
from cancellation.naming import PaymentNaming
from cancellation.observability import count, logger
from cancellation.orders import InvalidOrder, Order, parse_order_message
from cancellation.outcomes import Status, build_outcome, outcome_id, rejection_of
from cancellation.qfpay import QFPayClient, QFPayError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from cancellation.settings import DeadLetterSettings


class DeadLetterDependencies(NamedTuple):
    publisher: OutcomePublisher
    loop_starter: EnquiryLoopStarter
    notifier: CallerNotifier
    ledger: DecisionLedger
    clock: Callable[[], float] = time.time


# Dead letters settled at once (the batch size): each may wait for one Enquiry.
DEAD_LETTER_CONCURRENCY = 10


class DeadLetterService:
    def __init__(
        self, settings: DeadLetterSettings, deps: DeadLetterDependencies, qfpay: QFPayClient
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.qfpay = qfpay  # the look-up's Enquiry only
        self.naming = PaymentNaming(qfpay, deps.ledger.names, deps.clock)
        self._orders = DeadOrders(settings, deps)
        self._pool = ThreadPoolExecutor(max_workers=DEAD_LETTER_CONCURRENCY, thread_name_prefix="dead-letter")

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        lease_until = self.deps.clock() + context.get_remaining_time_in_millis() / 1000
        # A look-up must start early enough to be answered and the message settled in time.
        spend_until.set(lease_until - self.settings.qfpay.timeouts.read - 2)

        def process(message: QueueMessage) -> str:
            return self.process_record(message, lease_until)

        return process_batch(queue_messages(event), process, self._pool)

    def process_record(self, message: QueueMessage, lease_until: float) -> str:
        """The status the message's order ended in; raises to have the message received again
        (another attempt holds the order right now, or AWS failed)."""
        logger.thread_safe_append_keys(message_id=message.message_id)
        try:
            count("DeadLettered")
            try:
                order = parse_order_message(message.body)
            except InvalidOrder as invalid:
                return self._invalid(message, invalid)
            order, unnamed = self._named(order)
            logger.thread_safe_append_keys(order=order.identity, correlation_id=outcome_id(order.identity))
            return self._orders.settle(order, message, lease_until, unnamed)
        except OrderBusy:
            logger.info("order held by another attempt; the dead letter is looked at again")
            raise
        except Exception:
            logger.exception("dead letter not settled; it is received again")
            raise
        finally:
            logger.thread_safe_remove_keys(["message_id", "order", "correlation_id", "caller"])

    def _named(self, order: Order) -> tuple[Order, str | None]:
        """The order named as the cancel function names it (:mod:`cancellation.naming`); if the
        message names only out_trade_no and that look-up fails, as the message names it (and the
        out_trade_no bound so), with why (for the outcome's reason)."""
        failed: list[RetryLater] = []

        def give_up(exc: RetryLater) -> bool:
            failed.append(exc)
            return True  # a dead letter is settled now, named or not

        try:
            named, answer = self.naming.name(order, None, give_up)
        except QFPayError as exc:
            return order, f"QFPay's Enquiry could not be asked ({exc})"
        except Exception as exc:  # the look-up only names the order
            # The merchant's secret unreadable (missing, not JSON, its key refusing us) is a common
            # reason a message dead-lettered: the look-up needs the same secret, and must never
            # keep the dead letter from settling. Only the error's type is told (it came from the
            # credentials' path).
            logger.warning("dead letter's look-up failed", extra={"error": type(exc).__name__})
            return order, f"QFPay's Enquiry could not be asked ({type(exc).__name__})"
        if failed:
            return named, f"QFPay's Enquiry could not be asked ({failed[0]})"
        if answer is not None:
            disagrees = disagreement(order, read_enquiry(answer, order))
            if disagrees is not None:
                return order, f"the message disagrees with QFPay's record ({disagrees})"
        return named, None

    def _invalid(self, message: QueueMessage, invalid: InvalidOrder) -> str:
        """Not an order: its rejection (keyed by the message) is published again, and a caller
        whose token could be read is told."""
        ids = invalid.identifiers
        detail = rejection_of(invalid, now=self.deps.clock(), message_id=message.message_id)
        self.deps.publisher.publish(detail)
        if ids.get("task_token"):
            self.deps.notifier.notify(ids["task_token"], detail)
        return str(detail["status"])


class DeadOrders:
    """Settling a dead-lettered order through the decision ledger: its recorded decision (delivered
    here if its delivery was abandoned), else the message's own UNKNOWN; its caller answered."""

    def __init__(self, settings: DeadLetterSettings, deps: DeadLetterDependencies) -> None:
        self.settings = settings
        self.deps = deps
        self._once = ExactlyOnce(deps.ledger, deps.clock)
        self._callers = CallerAnswers(self._once, deps.notifier, deps.loop_starter)

    def settle(self, order: Order, message: QueueMessage, lease_until: float, unnamed: str | None) -> str:
        now = self.deps.clock()
        order_key = f"cancel#{order.identity}"
        found = self.deps.ledger.stage_of(order_key, now)
        if found is not None and found[1] and found[0] != LedgerStage.DELIVERED:
            raise OrderBusy(f"another attempt holds the order ({found[0]})")
        if found is not None and found[0] in (LedgerStage.DECIDED, LedgerStage.DELIVERED):
            # The order is decided: that decision is its one outcome, and this caller's answer.
            owner, decision, status = order.identity, *self._order_decision(order, lease_until)
        else:
            # Nobody decided the order: the dead message's own UNKNOWN (see module docstring).
            owner = f"{order.identity}|message={message.key_id}"
            decision, status = self._message_unknown(order, message, owner, lease_until, unnamed)
        logger.warning("dead-lettered order settled", extra={"status": status})
        if order.task_token:
            # Once per token, as the cancel function answers (it may have answered this one already);
            # an order still in its loop: Cancellation.InProgress (this is the message's last word).
            self._callers.answer_once(owner, order.task_token, decision, lease_until, last_receive=True)
        return status

    def _order_decision(self, order: Order, lease_until: float) -> tuple[Decision, str]:
        """The order's recorded decision, delivered here if its delivery was abandoned."""

        def recorded(*_: object) -> Decision:  # a decided record always holds its decision
            raise OrderBusy("the order's record holds no decision")

        return self._once.run_once(order.identity, lease_until, self._deliver, recorded)

    def _message_unknown(
        self, order: Order, message: QueueMessage, owner: str, lease_until: float, unnamed: str | None
    ) -> tuple[Decision, str]:
        reason = (
            f"the order's message {message.message_id} could not be processed in "
            f"{self.settings.max_receive_count} receives and was dead-lettered (the cancel "
            "function's logs say why, under its message_id); not known whether the payment is "
            "cancelled: reconciliation re-checks it with the Transaction Enquiry, and the order "
            "stays open for a message sent again"
        )
        if unnamed is not None:
            reason += (
                f"; the payment could not be looked up by its out_trade_no: {unnamed}, so this "
                "outcome names the order by mchid and out_trade_no"
            )
        unknown = build_outcome(
            order.to_dict(),
            owner,
            Status.UNKNOWN,
            reason,
            now=self.deps.clock(),
            decided_by="cancel-function",
        )
        own: OutcomeDecision = {"outcome": unknown}
        return self._once.run_once(owner, lease_until, self._deliver, lambda *_: own, known=True)

    def _deliver(self, decision: Decision) -> str:
        if "outcome" in decision:
            # Published again if it was already: consumers drop repeats by outcome_id.
            self.deps.publisher.publish(decision["outcome"])
            return str(decision["outcome"]["status"])
        # A hand-off whose delivery was abandoned: its loop, started or not, decides (the loop
        # follows its own resend rule; this function sends nothing).
        handoff = decision["handoff"]
        if self.deps.loop_starter.find(handoff["name"]) is None:
            self.deps.loop_starter.start(handoff["name"], started_now(handoff["input"], self.deps.clock()))
        return "IN_PROGRESS"
