"""The one explained outcome every order ends in, and the event that carries it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    from cancellation.models import DecidedBy, Endpoint, OutcomeDetail
    from cancellation.orders import InvalidOrder

OUTCOME_SOURCE = "qfpay.cancellation"
OUTCOME_DETAIL_TYPE = "Payment Cancellation Outcome"
# Corrections (revision 2, 3, ...) travel under a DetailType of their own: a consumer whose rule
# names only OUTCOME_DETAIL_TYPE never receives one, so it cannot drop it as a repeat.
CORRECTION_DETAIL_TYPE = "Payment Cancellation Outcome Correction"


class Status(StrEnum):
    CANCELLED = "CANCELLED"  # reversal/close confirmed: the customer is not charged
    NOT_CHARGED = "NOT_CHARGED"  # the payment had already failed, closed or expired
    REFUND_REQUIRED = "REFUND_REQUIRED"  # the payment completed; a reversal cannot undo it
    REJECTED = "REJECTED"  # the request itself is invalid or unsupported
    UNKNOWN = "UNKNOWN"  # not confirmed by the deadline: a person must look


# A task-token caller hears SendTaskSuccess for these, SendTaskFailure for the others.
CALLER_SUCCESS_STATUSES = frozenset({Status.CANCELLED, Status.NOT_CHARGED, Status.REFUND_REQUIRED})
CALLER_ERRORS = {Status.REJECTED: "Cancellation.Rejected", Status.UNKNOWN: "Cancellation.Unknown"}


def outcome_id(identity: str) -> str:
    """The same for every outcome of one order, so consumers can drop repeats."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def utc_now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QFPayAmount(NamedTuple):
    """What QFPay's record of the payment says was charged (from a Transaction Enquiry row), and
    the numbers it records for it (so that an outcome of a message that named the payment one way
    still names it for a caller that sent the other)."""

    txamt: int
    txcurrcd: str
    out_trade_no: str | None = None
    syssn: str | None = None


def build_outcome(
    subject: Mapping[str, Any],
    identity: str,
    status: Status,
    reason: str,
    *,
    now: float,
    decided_by: DecidedBy,
    endpoint: Endpoint | None = None,
    respcd: str | None = None,
    resperr: str | None = None,
    reversal_syssn: str | None = None,
    attempts: int = 0,
    polls: int = 0,
    resent: bool = False,
    amount: QFPayAmount | None = None,
) -> OutcomeDetail:
    """The outcome detail; ``subject`` gives the order's fields (only those that validated).

    ``txamt``/``txcurrcd`` are QFPay's figures (``amount``, from the Enquiry row; null when QFPay
    showed none): a message's own figures are only its claim, published beside them."""
    return {
        "outcome_id": outcome_id(identity),
        "out_trade_no": subject.get("out_trade_no") or (amount.out_trade_no if amount else None),
        "syssn": subject.get("syssn") or (amount.syssn if amount else None),
        "mchid": subject.get("mchid"),
        "pay_type": subject.get("pay_type"),
        "txamt": amount.txamt if amount else None,
        "txcurrcd": amount.txcurrcd if amount else None,
        "message_txamt": subject.get("txamt"),
        "message_txcurrcd": subject.get("txcurrcd"),
        "status": status.value,
        "reason": reason,
        "endpoint": endpoint,
        "respcd": respcd,
        "resperr": resperr,
        "reversal_syssn": reversal_syssn or None,
        "attempts": attempts,
        "polls": polls,
        "resent": resent,
        "decided_by": decided_by,
        "decided_at": utc_now_iso(now),
        "revision": 1,
    }


def corrected_outcome(
    previous: Mapping[str, Any],
    status: Status,
    reason: str,
    *,
    now: float,
    decided_by: DecidedBy,
    respcd: str | None = None,
) -> OutcomeDetail:
    """The next revision of an outcome: same ``outcome_id`` and order, the status QFPay (or a
    person) has now shown, and ``supersedes`` naming the status it replaces. Consumers keep the
    highest revision of an ``outcome_id``."""
    # ``previous`` is an outcome this service published, read back from the ledger or the bus.
    return cast(
        "OutcomeDetail",
        {
            **previous,
            "status": status.value,
            "reason": reason,
            "respcd": respcd if respcd is not None else previous.get("respcd"),
            "decided_by": decided_by,
            "decided_at": utc_now_iso(now),
            "revision": revision_of(previous) + 1,
            "supersedes": previous["status"],
        },
    )


def revision_of(outcome: Mapping[str, Any]) -> int:
    """An outcome published before revisions existed (or by the loop's broken-loop path) is 1."""
    revision = outcome.get("revision")
    return revision if isinstance(revision, int) and revision >= 1 else 1


def rejected_outcome(
    reason: str,
    *,
    now: float,
    out_trade_no: str | None = None,
    syssn: str | None = None,
    mchid: str | None = None,
    message_id: str | None = None,
) -> OutcomeDetail:
    """The outcome of a message that is not a valid order: only identifiers that validated are kept.

    Keyed by the message, not the order: every invalid message gets its own explained outcome (two
    different bad messages naming one order are two rejections), a redelivery of the same message
    does not, and a later valid message for the order is never dropped as a repeat of a rejection.
    """
    named = f"out_trade_no={out_trade_no}" if out_trade_no else f"syssn={syssn}" if syssn else ""
    identity = f"rejected|message={message_id}" if message_id else f"rejected|{mchid or ''}|{named}"
    subject = {"out_trade_no": out_trade_no, "syssn": syssn, "mchid": mchid}
    return build_outcome(subject, identity, Status.REJECTED, reason, now=now, decided_by="cancel-function")


def rejection_of(invalid: InvalidOrder, *, now: float, message_id: str) -> OutcomeDetail:
    """The REJECTED outcome of a message that is not a valid order, keyed by the message, with
    the identifiers that did validate."""
    ids = invalid.identifiers
    return rejected_outcome(
        invalid.reason,
        now=now,
        out_trade_no=ids.get("out_trade_no"),
        syssn=ids.get("syssn"),
        mchid=ids.get("mchid"),
        message_id=message_id,
    )
