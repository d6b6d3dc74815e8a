"""One turn of the wait-and-poll loop: ask the Transaction Enquiry and say what comes next.

The state machine carries the state (see docs/contracts.md); this step returns it updated with
``status`` (``IN_PROGRESS`` or final), the next ``wait_seconds`` and, when final, ``outcome``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cancellation.budget import BudgetExhausted
from cancellation.enquiry import Finding
from cancellation.invocation import spend_until
from cancellation.observability import count_kind
from cancellation.orders import InvalidOrder, Order, valid_syssn, validate_loop_order
from cancellation.outcomes import QFPayAmount, Status, build_outcome
from cancellation.qfpay import (
    QFPayAmbiguous,
    QFPayClient,
    QFPayUnavailable,
)
from cancellation.qfpay_steps import answer_text, ask_enquiry, cancel_meaning, reversal_syssn_of, send_cancel
from cancellation.respcd import Disposition, documented
from cancellation.routing import Routing
from cancellation.schedule import (
    DEFAULT_SETTLE_SECONDS,
    MAX_DEADLINE_SECONDS,
    MAX_RETRY_HORIZON_SECONDS,
    SETTLE_ENQUIRIES,
    PollSchedule,
)

IN_PROGRESS = "IN_PROGRESS"


class EnquiryStep:
    """One turn of the loop: read the Enquiry and say what comes next. The resend rule is
    :class:`LoopResend`'s, the deadline's moves :func:`loop_deadline`'s, the outcome
    :func:`conclude`'s. (A plain class: a dataclass costs every cold start ~0.5 ms to create.)"""

    def __init__(
        self,
        qfpay: QFPayClient,
        routing: Routing,
        clock: Callable[[], float],
        resend_seconds: float = 0.0,
        *,
        read_timeout: float = 10.0,
        patience: float = 1.0,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    ) -> None:
        self.qfpay = qfpay
        self.clock = clock
        self.resend = LoopResend(qfpay, routing, clock, resend_seconds, settle_seconds=settle_seconds)
        self.read_timeout = read_timeout
        # Cancels come before the loop's Enquiries: a turn takes a slot of the merchant's budget
        # only if one is free within this many seconds, unless the loop's deadline is near.
        self.patience = patience

    def run(
        self, state: dict[str, Any], remaining_seconds: Callable[[], float] | None = None
    ) -> dict[str, Any]:
        """One turn. ``remaining_seconds``: what is left of this invocation (Lambda's context)."""
        state = dict(state)
        state.pop("throttled", None)  # the state machine's note that Lambda throttled a turn
        # Anyone who may start the state machine chooses this input: checked before any request.
        order, schedule = read_loop_state(state, self.clock())
        if state.get("task_error"):
            return after_failed_turn(state, order, schedule, self.clock())
        deadline = loop_deadline(state)
        started = self.clock()
        urgent = deadline - started <= 2 * schedule.max_wait
        left = remaining_seconds() if remaining_seconds is not None else 15.0
        horizon = left - self.read_timeout - 1 if urgent else self.patience
        budget_token = spend_until.set(started + max(0.0, horizon))
        try:
            return self._turn(state, order, schedule, deadline, remaining_seconds)
        except BudgetExhausted as spent:
            # Nothing was asked: our own budget is no reason to conclude, not even past the deadline.
            wait = math.ceil(spent.next_free_at - self.clock())
            if not urgent:
                wait = max(wait, schedule.wait_after(int(state.get("polls", 0))))
            state["wait_seconds"] = max(1, wait)
            state["last_reason"] = "waiting for the merchant's QFPay request budget"
            state["status"] = IN_PROGRESS
            return state
        finally:
            spend_until.reset(budget_token)

    def _turn(
        self,
        state: dict[str, Any],
        order: Order,
        schedule: PollSchedule,
        deadline: float,
        remaining_seconds: Callable[[], float] | None,
    ) -> dict[str, Any]:
        finding, reached = self._enquire(order, state)
        state["polls"] = int(state.get("polls", 0)) + 1
        if finding.status is not None:
            return conclude(
                state,
                order,
                finding.status,
                finding.reason,
                now=self.clock(),
                respcd=finding.respcd,
                amount=finding.amount,
            )
        settled = False
        read_at = self.clock()
        if not finding.live:
            # The settle time counts unbroken live readings only.
            state.pop("live_since", None)
            state.pop("live_readings", None)
        elif cancel_may_take_effect(state):
            settled = self.resend.settled(state, read_at)
            if settled:
                finding = finding._replace(
                    reason=f"{finding.reason}; QFPay has shown it live for "
                    f"{int(read_at - state['live_since'])} s, longer than it takes to settle a "
                    "cancel it received, so ours did nothing"
                )
            else:
                # QFPay shows a reversal it is still processing as a live payment: not resent yet.
                finding = finding._replace(
                    reason=f"{finding.reason}; a cancel of ours may still be processing at QFPay, "
                    "so none is sent again",
                    live=False,
                )
        state["last_reason"] = finding.reason
        if finding.payment is not None and not state.get("payment_syssn") and not order.syssn:
            # Named by syssn from now on, the Enquiry also returns our cancel's own row.
            state["payment_syssn"] = _syssn_or_none(finding.payment.get("syssn"))
        now = self.clock()
        if not reached:
            deadline = _give_back_unreachable_time(state, now)
        state["asked_at"] = now
        if now >= deadline:
            reason = f"not confirmed by the deadline: {finding.reason}"
            if not reached and state.get("unreachable_allowance"):
                reason = (
                    f"QFPay could not be reached until the loop's deadline, moved "
                    f"{int(state['unreachable_seconds'])} s for the outage: {finding.reason}"
                )
            return conclude(state, order, Status.UNKNOWN, reason, now=self.clock(), amount=finding.amount)
        if finding.live and self.resend.allowed(state, remaining_seconds):
            decided = self.resend.send(state, order, finding.amount, first_did_nothing=settled)
            if decided is not None:
                return decided
        wait = schedule.wait_after(state["polls"])
        state["wait_seconds"] = max(1, min(wait, int(deadline - now) + 1))
        state["status"] = IN_PROGRESS
        return state

    def _enquire(self, order: Order, state: dict[str, Any]) -> tuple[Finding, bool]:
        """What the Enquiry says, and whether QFPay was reached (answered at all)."""
        asked = ask_enquiry(
            self.qfpay,
            order,
            reversal_syssn=state.get("reversal_syssn"),
            cancel_pending=cancel_may_take_effect(state),
            payment_syssn=state.get("payment_syssn"),
        )
        if asked.finding is None:
            return Finding(None, f"Enquiry unavailable ({asked.problem})", found=False), asked.reached
        return asked.finding, True


class LoopResend:
    """The loop's one further cancel of an order (see cancel.CANCELS_PER_ORDER): sent only when the
    Enquiry shows the payment still live and no cancel of ours can still take effect."""

    def __init__(
        self,
        qfpay: QFPayClient,
        routing: Routing,
        clock: Callable[[], float],
        resend_seconds: float,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        settle_enquiries: int = SETTLE_ENQUIRIES,
    ) -> None:
        self.qfpay = qfpay
        self.routing = routing
        self.clock = clock
        # The longest one cancel request can take (with its 1108 re-read): a resend starts only if
        # the invocation has that long left, so a turn never times out half-way through one.
        self.resend_seconds = resend_seconds
        self.settle_seconds = settle_seconds
        self.settle_enquiries = settle_enquiries

    def settled(self, state: dict[str, Any], now: float) -> bool:
        """On a reading that shows the payment live while a cancel of ours may take effect: whether
        that cancel has had QFPay's settle time to show. Only one whose answer we could not read
        (an outage's 5xx, a lost answer, a code QFPay does not document): once QFPay has shown the
        payment live at every Enquiry for that long, it did nothing. One QFPay answered in progress
        or done (``reversal_pending``) is QFPay's own word that it is under way: never. Nor once
        the order's one resend is spent: that one may be processing now."""
        if state.get("reversal_pending") or state.get("resent"):
            return False
        since = float(state.setdefault("live_since", now))
        state["live_readings"] = readings = int(state.get("live_readings", 0)) + 1
        return now - since >= self.settle_seconds and readings >= self.settle_enquiries

    def allowed(self, state: dict[str, Any], remaining_seconds: Callable[[], float] | None) -> bool:
        """Nothing of ours pending, the order's one resend unspent, and time for it in this turn."""
        has_time = remaining_seconds is None or remaining_seconds() >= self.resend_seconds
        return not state.get("reversal_pending") and not state.get("resent") and has_time

    def send(
        self,
        state: dict[str, Any],
        order: Order,
        amount: QFPayAmount | None,
        *,
        first_did_nothing: bool = False,
    ) -> dict[str, Any] | None:
        """Send it; the final state if QFPay's answer decides the order, else None (the next
        Enquiry decides). ``first_did_nothing``: the settle time showed that the earlier cancel,
        whose answer was not read, did nothing."""
        endpoint = state["endpoint"]
        try:
            answer = send_cancel(self.qfpay, self.routing, endpoint, order)
        except BudgetExhausted:
            return None  # not sent: the next turn may try again
        except QFPayUnavailable:
            return None  # certainly not sent: the next turn may try again
        except QFPayAmbiguous:
            state.update(resent=True, attempts=int(state.get("attempts", 1)) + 1, cancel_may_take_effect=True)
            return None
        respcd = str(answer.get("respcd") or "")
        meaning = cancel_meaning(endpoint, answer)
        if meaning.disposition is Disposition.RETRY_LATER:
            return None  # nothing happened at QFPay: the next turn may try again
        if first_did_nothing:
            state["cancel_may_take_effect"] = False  # until this answer says otherwise (below)
        state.update(
            resent=True,
            attempts=int(state.get("attempts", 1)) + 1,
            respcd=respcd,
            resperr=answer_text(answer),
            reversal_syssn=reversal_syssn_of(answer) or state.get("reversal_syssn"),
        )
        if not documented(respcd):
            # No refusal we can read: the resend may have taken effect; the next Enquiry decides.
            state.update(cancel_may_take_effect=True)
            return None
        if meaning.disposition is Disposition.FINAL and meaning.status not in (None, Status.NOT_CHARGED):
            reason = f"resent {endpoint} answered {respcd}: {meaning.text}"
            status = meaning.status or Status.UNKNOWN
            return conclude(state, order, status, reason, now=self.clock(), respcd=respcd, amount=amount)
        if meaning.disposition is not Disposition.FINAL:
            # 0000 or in progress: our cancel may take effect; the next Enquiry decides.
            state.update(reversal_pending=True, cancel_may_take_effect=True)
        # A refusal ("not charged") changes nothing of ours: the next Enquiry decides.
        return None


def after_failed_turn(
    state: dict[str, Any], order: Order, schedule: PollSchedule, now: float
) -> dict[str, Any]:
    """The last turn failed (the poll function timed out or crashed). Until the deadline the
    loop asks again: our own failure is no reason to give up on the order."""
    task_error = state.pop("task_error")
    error = task_error.get("Error", "error") if isinstance(task_error, dict) else "error"
    deadline = loop_deadline(state)
    if now >= deadline:
        return conclude(
            state, order, Status.UNKNOWN, f"the enquiry loop failed ({error}); a person must look", now=now
        )
    if not state.get("reversal_pending") and not state.get("resent"):
        # The failed turn may have died after sending the loop's one resend: spent.
        state["resent"] = True
    state["last_reason"] = f"a turn of the loop failed ({error}); asking again"
    wait = schedule.wait_after(int(state.get("polls", 0)))
    state["wait_seconds"] = max(1, min(wait, int(deadline - now) + 1))
    state["status"] = IN_PROGRESS
    return state


def conclude(
    state: dict[str, Any],
    order: Order,
    status: Status,
    reason: str,
    *,
    now: float,
    respcd: str | None = None,
    amount: QFPayAmount | None = None,
) -> dict[str, Any]:
    """The loop's final state: ``status`` and the outcome it publishes."""
    state["status"] = status.value
    count_kind("Outcome", status.value)
    state["outcome"] = build_outcome(
        state["order"],
        order.identity,
        status,
        reason,
        now=now,
        decided_by="poll-loop",
        endpoint=state.get("endpoint"),
        respcd=respcd or state.get("respcd"),
        resperr=state.get("resperr"),
        reversal_syssn=state.get("reversal_syssn"),
        attempts=int(state.get("attempts", 1)),
        polls=int(state.get("polls", 0)),
        resent=bool(state.get("resent")),
        amount=amount,
    )
    state.pop("task_error", None)
    return state


class InvalidLoopState(ValueError):
    """The loop's input is not one this service could have written; nothing is sent to QFPay."""


ENDPOINTS = ("reversal", "close")


def loop_deadline(state: dict[str, Any]) -> float:
    """``deadline_at`` moved by the time the loop spent unable to reach QFPay."""
    return float(state["deadline_at"]) + float(state.get("unreachable_seconds", 0))


def _give_back_unreachable_time(state: dict[str, Any], now: float) -> float:
    """A turn found QFPay unreachable: the time since the previous turn (or the hand-off) does not
    count toward the deadline, up to ``unreachable_allowance`` in all. Returns the moved deadline."""
    since = _seconds_or_none(state.get("asked_at")) or _seconds_or_none(state.get("started_at"))
    gap = max(0.0, now - since) if since is not None else 0.0
    allowance = float(state.get("unreachable_allowance", 0))
    state["unreachable_seconds"] = round(min(allowance, float(state.get("unreachable_seconds", 0)) + gap), 3)
    return loop_deadline(state)


def _seconds_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def cancel_may_take_effect(state: dict[str, Any]) -> bool:
    """A cancel of ours may still take effect: it answered in progress or success, or reached QFPay
    unanswered. Only a refusal rules that out (states written before this field: assume it may)."""
    return bool(state.get("cancel_may_take_effect", True))


def read_loop_state(state: dict[str, Any], now: float) -> tuple[Order, PollSchedule]:
    """The order validated exactly as the cancel function validates a message, and the schedule and
    deadline within the bounds the cancel function's settings allow; raises InvalidLoopState."""
    problems: list[str] = []
    order: Order | None = None
    try:
        order = validate_loop_order(state.get("order"))
    except InvalidOrder as invalid:
        problems.append(f"order: {invalid.reason}")
    schedule: PollSchedule | None = None
    try:
        schedule = PollSchedule.from_dict(state["schedule"])
        schedule.check_bounds()
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        problems.append(f"schedule: {exc}")
    problems += _clock_problems(state, now)
    if state.get("endpoint") not in ENDPOINTS:
        problems.append("endpoint must be reversal or close")
    for name in ("reversal_syssn", "payment_syssn"):
        if state.get(name) is not None and not valid_syssn(state[name]):
            problems.append(f"{name} must be a QFPay syssn")
    for name in ("unreachable_allowance", "unreachable_seconds"):
        value = state.get(name, 0)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_RETRY_HORIZON_SECONDS
        ):
            problems.append(f"{name} must be seconds between 0 and {MAX_RETRY_HORIZON_SECONDS}")
    for name in ("polls", "attempts", "live_readings"):
        value = state.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
            problems.append(f"{name} must be a small whole number")
    if problems or order is None or schedule is None:
        raise InvalidLoopState("invalid enquiry loop state: " + "; ".join(problems))
    return order, schedule


def _clock_problems(state: dict[str, Any], now: float) -> list[str]:
    """The loop's times: a deadline not too far ahead, a live clock (``live_since``) not ahead."""
    problems: list[str] = []
    deadline = _seconds_or_none(state.get("deadline_at"))
    if deadline is None:
        problems.append("deadline_at must be a number of seconds")
    elif deadline > now + MAX_DEADLINE_SECONDS:
        problems.append(f"deadline_at is more than {MAX_DEADLINE_SECONDS} s away")
    if "live_since" in state:
        live, started = _seconds_or_none(state["live_since"]), _seconds_or_none(state.get("started_at"))
        if live is None or started is None or not started <= live <= now:
            problems.append("live_since must be a time between the hand-off (started_at) and now")
    return problems


def _syssn_or_none(value: Any) -> str | None:
    return value if valid_syssn(value) else None
