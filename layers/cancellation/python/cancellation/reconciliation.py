"""Reconciliation: orders whose outcome was UNKNOWN are re-checked by the Transaction Enquiry on a
schedule until QFPay shows a final status (published as a corrected outcome, the next revision of
the same ``outcome_id``) or the schedule runs out (the order then needs a person).

Reconciliation never sends a cancel: it only reads. A payment the Enquiry still shows live stays
UNKNOWN, so the rule "never send a cancel unless the Enquiry shows the payment live and no cancel
of ours can be in flight" holds trivially here; a person settles such an order (see the CLI).

The due list and the needs-attention list are records of their own in the ledger table
(:class:`~cancellation.aws.ReconciliationLedger`). Outcomes reach it through a queue that an
EventBridge rule on the outcome bus fills with every UNKNOWN and REFUND_REQUIRED outcome; each pass
enrols what is in that queue first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, cast

from cancellation.aws import (
    OutcomeIntake,
    OutcomePublisher,
    ReconciliationBusy,
    ReconciliationLedger,
    ReconciliationRecord,
    ReconciliationStage,
)
from cancellation.enquiry import Finding, enquire, enquiry_queries, read_enquiry
from cancellation.models import OutcomeDetail
from cancellation.observability import count, count_kind, logger
from cancellation.orders import TXDTM_FORMAT, Order
from cancellation.outcomes import OUTCOME_DETAIL_TYPE, Status, corrected_outcome
from cancellation.qfpay import QFPayClient, QFPayError, Timeouts
from cancellation.respcd import Disposition, meaning_of
from cancellation.schedule import DEFAULT_RECONCILE_SCHEDULE, ReconcileSchedule

if TYPE_CHECKING:
    pass

# A record being checked is hidden from other passes this long (longer than one check can take).
CHECK_LEASE_SECONDS = 300
# Without the payment's syssn the Enquiry searches by out_trade_no in a time window (at most a
# month); the outcome does not carry the order's txdtm, and the order was placed before its
# cancellation was decided, so the window ends a day after the decision and starts a week before.
WINDOW_BEFORE = timedelta(days=7)
WINDOW_AFTER = timedelta(days=1)
# Outcomes that need a person or a later look; the rest are final as published.
ENROLLED_STATUSES = frozenset({Status.UNKNOWN, Status.REFUND_REQUIRED})
OPERATOR_STATUSES = frozenset({Status.CANCELLED, Status.NOT_CHARGED, Status.REFUND_REQUIRED, Status.REJECTED})


class PassSummary(TypedDict):
    checked: int
    resolved: int
    still_unknown: int


class InvalidIntake(ValueError):
    """A message in the intake queue that is not an outcome event this service published."""


def order_of(outcome: Mapping[str, Any]) -> Order:
    """The order named by an outcome, enough to ask the Enquiry about it."""
    decided = datetime.fromisoformat(str(outcome["decided_at"]).replace("Z", "+00:00"))
    txamt = outcome.get("txamt")
    return Order(
        txamt=txamt if isinstance(txamt, int) else 0,
        txdtm=decided.strftime(TXDTM_FORMAT),
        out_trade_no=outcome.get("out_trade_no"),
        syssn=outcome.get("syssn"),
        pay_type=outcome.get("pay_type"),
        mchid=outcome.get("mchid"),
        txcurrcd=outcome.get("txcurrcd"),
    )


def reconciliation_enquiry(outcome: Mapping[str, Any]) -> list[dict[str, str | None]]:
    """The Enquiry's queries: by syssn (the payment's and the reversal's) when known, otherwise
    by out_trade_no in a window around the decision (one query per calendar month it touches)."""
    return enquiry_queries(
        order_of(outcome),
        outcome.get("reversal_syssn"),
        window_before=WINDOW_BEFORE,
        window_after=WINDOW_AFTER,
    )


def cancel_may_take_effect(outcome: Mapping[str, Any]) -> bool:
    """Whether a cancel of ours may still take effect after this outcome: one was sent and QFPay
    did not refuse it for good (it answered in progress or success, or never answered). A paid row
    then decides nothing until that cancel's own row shows it failed."""
    if int(outcome.get("attempts") or 0) == 0:
        return False
    respcd = outcome.get("respcd")
    return not respcd or meaning_of(str(respcd)).disposition is not Disposition.FINAL


def qfpay_enquirer(qfpay: QFPayClient) -> Callable[[Mapping[str, Any]], Finding]:
    """What QFPay's Enquiry shows for an outcome's order; an answer we cannot read is "not decided"."""

    def finding_of(outcome: Mapping[str, Any]) -> Finding:
        try:
            return read_enquiry(
                enquire(qfpay.enquiry, reconciliation_enquiry(outcome)),
                order_of(outcome),
                reversal_syssn=outcome.get("reversal_syssn"),
                cancel_pending=cancel_may_take_effect(outcome),
            )
        except (QFPayError, ValueError) as exc:
            return Finding(None, f"Enquiry unavailable ({exc})", found=False)

    return finding_of


def outcome_in(body: str) -> OutcomeDetail:
    """The outcome detail inside an intake message (the whole EventBridge event)."""
    try:
        event = json.loads(body)
    except ValueError:
        raise InvalidIntake("not JSON") from None
    if not isinstance(event, dict) or event.get("detail-type") != OUTCOME_DETAIL_TYPE:
        raise InvalidIntake(f"not a {OUTCOME_DETAIL_TYPE!r} event")
    detail = event.get("detail")
    if not isinstance(detail, dict) or not isinstance(detail.get("outcome_id"), str):
        raise InvalidIntake("the event's detail has no outcome_id")
    if detail.get("status") not in {s.value for s in ENROLLED_STATUSES}:
        raise InvalidIntake(f"status {detail.get('status')!r} needs no reconciliation")
    if not isinstance(detail.get("decided_at"), str):
        raise InvalidIntake("the outcome has no decided_at")
    # Delivered by our own rule from our own bus: an outcome this service published.
    return cast(OutcomeDetail, detail)


def revision_entry(outcome: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "revision": int(outcome.get("revision") or 1),
        "status": outcome["status"],
        "reason": outcome.get("reason"),
        "decided_by": outcome.get("decided_by"),
        "decided_at": outcome.get("decided_at"),
    }


@dataclass
class Reconciler:
    """The reconcile function's work: a pass over the due outcomes (or one of them), a person's
    resolution. Enrolling outcomes is :class:`Enrolment`'s job, checking one :class:`OutcomeCheck`'s."""

    ledger: ReconciliationLedger
    publisher: OutcomePublisher
    enquire: Callable[[Mapping[str, Any]], Finding]
    intake: OutcomeIntake | None = None
    schedule: ReconcileSchedule = DEFAULT_RECONCILE_SCHEDULE
    batch_limit: int = 200
    clock: Callable[[], float] = time.time
    enrolment: Enrolment = field(init=False)
    check: OutcomeCheck = field(init=False)

    def __post_init__(self) -> None:
        self.enrolment = Enrolment(self.ledger, self.intake, self.schedule, self.clock)
        self.check = OutcomeCheck(self.ledger, self.publisher, self.enquire, self.schedule, self.clock)

    def handle(self, event: Any, time_left: Callable[[], float]) -> dict[str, Any]:
        """The function's event: a pass or one order (:meth:`run`), or ``{"resolve": {"outcome_id",
        "status", "note", "who"}}``, a person's resolution (published by this function's role, the
        only one besides the deciders that may publish outcomes)."""
        if isinstance(event, dict) and isinstance(event.get("resolve"), dict):
            request = event["resolve"]
            outcome = resolve_by_hand(
                self.ledger,
                publisher=self.publisher,
                outcome_id=str(request.get("outcome_id") or ""),
                status=Status(str(request.get("status"))),
                note=str(request.get("note") or ""),
                who=str(request.get("who") or "unknown"),
                now=self.clock(),
            )
            return dict(outcome)
        return dict(self.run(event, time_left))

    def run(self, event: Any, time_left: Callable[[], float]) -> PassSummary:
        """One pass (a scheduled or empty event), or one order (``{"outcome_id": ...}``) checked now
        whatever its due time. ``time_left``: seconds before the invocation must stop starting checks."""
        if isinstance(event, dict) and isinstance(event.get("outcome_id"), str):
            return self.check_one(event["outcome_id"])
        self.enrolment.enrol_waiting(time_left)
        summary = PassSummary(checked=0, resolved=0, still_unknown=0)
        for record in self.ledger.due(self.clock(), self.batch_limit):
            if time_left() <= 0:
                break  # the next scheduled pass carries on; nothing is lost
            self._count(summary, self.check.run(record))
        logger.info("reconciliation pass", extra=dict(summary))
        return summary

    def check_one(self, outcome_id: str) -> PassSummary:
        summary = PassSummary(checked=0, resolved=0, still_unknown=0)
        record = self.ledger.get(outcome_id)
        if record is None:
            raise LookupError(f"no reconciliation record for outcome_id {outcome_id}")
        if record.stage == ReconciliationStage.RESOLVED:
            raise ValueError(f"outcome {outcome_id} is already resolved ({record.outcome['status']})")
        self._count(summary, self.check.run(record))
        return summary

    @staticmethod
    def _count(summary: PassSummary, result: str) -> None:
        if result == "skipped":
            return
        summary["checked"] += 1
        summary["resolved" if result == "resolved" else "still_unknown"] += 1


class Enrolment:
    """Outcomes to reconcile, from the intake queue onto the due list (or a person's attention)."""

    def __init__(
        self,
        ledger: ReconciliationLedger,
        intake: OutcomeIntake | None,
        schedule: ReconcileSchedule,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.intake = intake
        self.schedule = schedule
        self.clock = clock

    def enrol_waiting(self, time_left: Callable[[], float]) -> int:
        """Move every outcome waiting in the intake queue onto the due (or attention) list."""
        enrolled = 0
        while self.intake is not None and time_left() > 0:
            messages = self.intake.receive()
            if not messages:
                break
            for receipt, body in messages:
                try:
                    enrolled += self.enrol(outcome_in(body))
                except InvalidIntake as exc:
                    # Not ours to reconcile, and it will never become so: said once, then dropped.
                    logger.error("intake message dropped", extra={"reason": str(exc)})
                self.intake.delete(receipt)  # only after it is enrolled (or known unusable)
        return enrolled

    def enrol(self, outcome: OutcomeDetail) -> bool:
        """False if already enrolled (the same outcome seen twice)."""
        now = self.clock()
        unknown = outcome["status"] == Status.UNKNOWN
        first = self.schedule.next_due(now, 0)
        stage = (
            ReconciliationStage.DUE if unknown and first is not None else ReconciliationStage.NEEDS_ATTENTION
        )
        record = ReconciliationRecord(
            outcome_id=outcome["outcome_id"],
            stage=stage,
            due_at=first if stage == ReconciliationStage.DUE and first is not None else now,
            checks=0,
            outcome=outcome,
            history=[revision_entry(outcome)],
            enrolled_at=now,
            version=0,
        )
        added = self.ledger.enrol(record)
        if added and stage == ReconciliationStage.NEEDS_ATTENTION:
            count("NeedsAttention")
        return added


class OutcomeCheck:
    """One Enquiry for one enrolled outcome, and what it changes: a correction published, or the
    next check scheduled (or a person's attention)."""

    def __init__(
        self,
        ledger: ReconciliationLedger,
        publisher: OutcomePublisher,
        enquire: Callable[[Mapping[str, Any]], Finding],
        schedule: ReconcileSchedule,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.publisher = publisher
        self.enquire = enquire
        self.schedule = schedule
        self.clock = clock

    def run(self, record: ReconciliationRecord) -> str:
        """One Enquiry for one record: 'resolved', 'unknown', or 'skipped' (someone else has it)."""
        logger.append_keys(correlation_id=record.outcome_id)
        try:
            now = self.clock()
            # Claimed by pushing its due time past this check: another pass now skips it.
            claimed = self.ledger.save(record._replace(due_at=now + CHECK_LEASE_SECONDS))
            finding = self.enquire(record.outcome)
            status, reason = finding.status, finding.reason
            current = Status(record.outcome["status"])
            checks = record.checks + 1
            if status is not None and status is not current:
                return self._correct(claimed, status, reason, finding.respcd, checks)
            return self._undecided(claimed, reason, checks)
        except ReconciliationBusy:
            logger.info("reconciliation record taken by another pass")
            return "skipped"
        finally:
            logger.remove_keys(["correlation_id"])

    def _correct(
        self, record: ReconciliationRecord, status: Status, reason: str, respcd: str | None, checks: int
    ) -> str:
        now = self.clock()
        outcome = corrected_outcome(
            record.outcome,
            status,
            f"reconciled: {reason}",
            now=now,
            decided_by="reconciliation",
            respcd=respcd,
        )
        self.publisher.publish(outcome)  # before the record: a crash here re-publishes the same revision
        count_kind("Reconciled", status.value)
        # A payment that completed still needs a person to refund it.
        stage = (
            ReconciliationStage.NEEDS_ATTENTION
            if status is Status.REFUND_REQUIRED
            else ReconciliationStage.RESOLVED
        )
        self.ledger.save(
            record._replace(
                stage=stage,
                due_at=now,
                checks=checks,
                outcome=outcome,
                history=[*record.history, revision_entry(outcome)],
                last_finding=reason,
            )
        )
        if stage == ReconciliationStage.NEEDS_ATTENTION:
            count("NeedsAttention")
        logger.info(
            "outcome corrected",
            extra={"status": status.value, "revision": outcome["revision"], "reason": reason},
        )
        return "resolved"

    def _undecided(self, record: ReconciliationRecord, reason: str, checks: int) -> str:
        now = self.clock()
        due = self.schedule.next_due(record.enrolled_at, checks)
        if record.stage == ReconciliationStage.NEEDS_ATTENTION or due is None:
            stage, due_at = ReconciliationStage.NEEDS_ATTENTION, now
            if record.stage != ReconciliationStage.NEEDS_ATTENTION:
                count("NeedsAttention")
                logger.warning(
                    "still not decided after the last check: needs attention", extra={"reason": reason}
                )
        else:
            stage, due_at = ReconciliationStage.DUE, due
        self.ledger.save(record._replace(stage=stage, due_at=due_at, checks=checks, last_finding=reason))
        return "unknown"


def resolve_by_hand(
    ledger: ReconciliationLedger,
    *,
    publisher: OutcomePublisher,
    outcome_id: str,
    status: Status,
    note: str,
    who: str,
    now: float,
) -> OutcomeDetail:
    """A person settles an order: recorded with who/when/why, published as the next revision."""
    if status not in OPERATOR_STATUSES:
        raise ValueError(f"a person may resolve to {sorted(OPERATOR_STATUSES)}, not {status.value}")
    if not note.strip():
        raise ValueError("a resolution needs a note saying what was done")
    record = ledger.get(outcome_id)
    if record is None:
        raise LookupError(f"no order needing attention has outcome_id {outcome_id}")
    if record.stage == ReconciliationStage.RESOLVED:
        raise ValueError(f"outcome {outcome_id} is already resolved ({record.outcome['status']})")
    outcome = corrected_outcome(
        record.outcome, status, f"resolved by {who}: {note}", now=now, decided_by="operator"
    )
    publisher.publish(outcome)
    ledger.save(
        record._replace(
            stage=ReconciliationStage.RESOLVED,
            due_at=now,
            outcome=outcome,
            history=[*record.history, revision_entry(outcome)],
            resolved_by=who,
            resolved_at=now,
            note=note,
        )
    )
    return outcome


def summarise_revisions(history: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"revision {h['revision']}: {h['status']} ({h.get('decided_by')}, {h.get('decided_at')}): "
        f"{h.get('reason')}"
        for h in history
    ]


def time_left_in(context: Any, timeouts: Timeouts) -> Callable[[], float]:
    """Seconds left for starting another check: the invocation's remaining time less what one
    Enquiry may take (connect + read, twice for a re-read after a rotated key) and a margin."""
    reserve = 2 * (timeouts.connect + timeouts.read) + 2
    return lambda: context.get_remaining_time_in_millis() / 1000 - reserve
