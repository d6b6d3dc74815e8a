"""What flows between the functions, the decision ledger and the state machine, typed as
docs/contracts.md and the outcome's JSON Schema (events/schemas/) describe it: an outcome, a
decision (an outcome, or a hand-off to the loop) and the loop's state."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, final

Endpoint = Literal["reversal", "close"]
DecidedBy = Literal["cancel-function", "poll-loop", "reconciliation", "operator"]


class OrderFields(TypedDict):
    """A validated order as the loop's state carries it (never a task token)."""

    out_trade_no: str | None
    syssn: str | None
    txamt: int | None
    txdtm: str | None
    pay_type: str | None
    mchid: str | None
    udid: str | None
    txcurrcd: str | None


class OutcomeDetail(TypedDict):
    """The outcome event's detail (payment-cancellation-outcome.schema.json)."""

    outcome_id: str
    out_trade_no: str | None
    syssn: str | None
    mchid: str | None
    pay_type: str | None
    txamt: int | None  # QFPay's figures, from its Enquiry row (None when none was read)
    txcurrcd: str | None
    message_txamt: int | None  # what the message claimed, beside QFPay's
    message_txcurrcd: str | None
    status: str  # a Status value
    reason: str
    endpoint: Endpoint | None
    respcd: str | None
    resperr: str | None
    reversal_syssn: str | None
    attempts: int
    polls: int
    resent: bool
    decided_by: DecidedBy
    decided_at: str
    revision: int
    supersedes: NotRequired[str]  # corrections only: the status of the revision replaced


class ScheduleFields(TypedDict):
    """A PollSchedule as the loop's state carries it (PollSchedule.to_dict)."""

    first_wait: int
    max_wait: int
    factor: float
    late_fraction: NotRequired[float]
    late_floor: NotRequired[int]


class LoopClock(TypedDict):
    """When the loop started and by when it must decide (cancel.loop_clock sets both)."""

    started_at: float
    deadline_at: float


class LoopState(TypedDict):
    """The loop's execution input, and the state the poll function receives and returns
    (docs/contracts.md, "Hand-off to the wait-and-poll loop")."""

    outcome_id: str
    order: dict[str, Any]  # OrderFields, as validated again by the poll function
    endpoint: Endpoint
    reversal_syssn: str | None
    respcd: str | None
    resperr: str | None
    reversal_pending: bool
    cancel_may_take_effect: bool
    attempts: int
    polls: int
    resent: bool
    started_at: float
    deadline_at: float
    unreachable_allowance: NotRequired[int]
    wait_seconds: int
    schedule: dict[str, Any]  # ScheduleFields, checked against the settings' bounds
    status: str  # IN_PROGRESS, or a final Status value
    # Added by the loop's turns:
    payment_syssn: NotRequired[str]
    last_reason: NotRequired[str]
    asked_at: NotRequired[float]
    live_since: NotRequired[float]  # the first of the unbroken readings showing the payment live
    unreachable_seconds: NotRequired[float]
    task_error: NotRequired[dict[str, Any]]  # the state machine's Catch: the last turn failed
    outcome: NotRequired[OutcomeDetail]  # once final


class Handoff(TypedDict):
    """Start the order's loop: the execution's name and input."""

    name: str
    input: LoopState


@final  # so that `"handoff" in decision` tells the two kinds of Decision apart
class HandoffDecision(TypedDict):
    handoff: Handoff


@final
class OutcomeDecision(TypedDict):
    outcome: OutcomeDetail
    # The outcome belongs to this message's request only, not to the order (a refusal of it).
    request: NotRequired[bool]


#: What the cancel function decides for an order, stored in the ledger and then delivered.
Decision = OutcomeDecision | HandoffDecision
