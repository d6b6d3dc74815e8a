"""Deciding one order: send the reversal (or close) and read QFPay's answer.

The result is either a final outcome or a hand-off to the wait-and-poll loop. Nothing here touches
AWS; the caller publishes the decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from cancellation.budget import BudgetExhausted
from cancellation.enquiry import (
    ENQUIRY_WINDOW,
    Finding,
    enquire,
    enquiry_queries,
    merged,
    month_windows,
    read_enquiry,
)
from cancellation.orders import TXDTM_FORMAT, Order, valid_syssn
from cancellation.outcomes import QFPayAmount, Status, build_outcome, outcome_id
from cancellation.qfpay import CredentialsRejected, QFPayAmbiguous, QFPayClient, QFPayUnavailable
from cancellation.qfpay_steps import (
    answer_text,
    ask_enquiry,
    cancel_meaning,
    cancel_params,
    reversal_syssn_of,
    send_cancel,
    text_of,
)
from cancellation.respcd import Disposition, documented
from cancellation.routing import Routing
from cancellation.schedule import LoopPolicy
from cancellation.signing import signing_string

if TYPE_CHECKING:
    from cancellation.models import (
        Decision,
        Endpoint,
        Handoff,
        HandoffDecision,
        LoopClock,
        LoopState,
        OutcomeDecision,
    )


class RetryLater(Exception):
    """Nothing took effect at QFPay; the message is retried later. ``budget_free_at``: nothing was
    sent because the merchant's request budget is spent until then (not a failure of QFPay's)."""

    def __init__(self, reason: str, *, throttled: bool = False, budget_free_at: float | None = None) -> None:
        super().__init__(reason)
        self.throttled = throttled
        self.budget_free_at = budget_free_at


# QFPay refusing one request (REJECTED: the wrong amount, close not supported, a payment it does
# not know yet; UNKNOWN: bank risk control) says nothing certain about the
# payment: such a decision belongs to the message that made the request, never to the order.
REQUEST_STATUSES = frozenset({Status.REJECTED, Status.UNKNOWN})


class FirstLook(NamedTuple):
    """The Transaction Enquiry asked before anything is claimed or sent."""

    order: Order  # with QFPay's syssn filled in when the message named only out_trade_no
    # QFPay's answer, read again once it is known whether a cancel of ours may be pending.
    answer: Mapping[str, Any]


def first_look(qfpay: QFPayClient, order: Order) -> FirstLook:
    """Ask QFPay what it knows of the payment before anything else (read-only). Its record names
    the payment (its ``syssn``: one payment, one identity, however a message names it). Raises
    RetryLater if QFPay cannot be asked."""
    try:
        answer = enquire(qfpay.enquiry, enquiry_queries(order))
        return _looked(order, answer)
    except (QFPayUnavailable, ValueError) as exc:
        raise _look_failed(exc) from None


def _looked(order: Order, answer: Mapping[str, Any]) -> FirstLook:
    """The order with the syssn of its row in ``answer``; ValueError if the query failed."""
    syssn = (read_enquiry(answer, order).payment or {}).get("syssn")
    if order.syssn is None and valid_syssn(syssn):
        order = order._replace(syssn=syssn)
    return FirstLook(order, answer)


def _look_failed(exc: Exception) -> RetryLater:
    if isinstance(exc, BudgetExhausted):
        return _budget_spent(exc)
    if isinstance(exc, QFPayUnavailable):
        return RetryLater(f"Enquiry before the cancel: {exc}", throttled=exc.http_status == 429)
    return RetryLater(f"Enquiry before the cancel: {exc}")


# One look-up for several orders (QFPay's Enquiry takes comma-separated out_trade_no lists and up to
# 100 rows a page, within one calendar month; docs/qfpay.md).
LOOKUP_PAGE_SIZE = 100
LOOKUP_MAX_ORDERS = 20  # a page holds every row of each (the payment, its refunds) with room


class LookupQuery(NamedTuple):
    """One Enquiry of a look-up: the indexes of the orders it asks for, and its window, inside one
    calendar month."""

    members: list[int]
    start: datetime
    end: datetime


def batch_look(qfpay: QFPayClient, orders: Sequence[Order]) -> list[FirstLook | RetryLater | None]:
    """:func:`first_look` for several orders of one merchant (one ``mchid``, or none) named only by
    out_trade_no, with as few Enquiries as QFPay's limits allow (:func:`lookup_queries`): per
    order, its look from the rows of every query it was asked in, the RetryLater its look would
    have raised, or None where a query cannot be trusted to hold its rows (a full page may have
    more): that order looks for itself."""
    answers: list[list[Mapping[str, Any]]] = [[] for _ in orders]
    failed: dict[int, QFPayUnavailable] = {}
    unsure: set[int] = set()
    for query in lookup_queries(orders):
        chosen = [orders[i] for i in query.members]
        params = {
            "mchid": chosen[0].mchid,
            "out_trade_no": ",".join(sorted({str(o.out_trade_no) for o in chosen})),
            "start_time": query.start.strftime(TXDTM_FORMAT),
            "end_time": query.end.strftime(TXDTM_FORMAT),
            "page_size": str(LOOKUP_PAGE_SIZE),
        }
        try:
            answer = qfpay.enquiry(params)
        except QFPayUnavailable as exc:
            failed.update({i: failed.get(i, exc) for i in query.members})
            continue
        rows = answer.get("data")
        if isinstance(rows, list) and len(rows) >= LOOKUP_PAGE_SIZE:
            unsure.update(query.members)  # perhaps more on a next page
        for i in query.members:
            answers[i].append(answer)
    looks: list[FirstLook | RetryLater | None] = []
    for i, order in enumerate(orders):
        if i in failed:
            looks.append(_look_failed(failed[i]))
        elif i in unsure:
            looks.append(None)
        else:
            try:
                looks.append(_looked(order, merged(answers[i])))
            except ValueError as exc:
                looks.append(_look_failed(exc))
    return looks


def lookup_queries(orders: Sequence[Order]) -> list[LookupQuery]:
    """The Enquiries that look ``orders`` up: per calendar month their windows (ENQUIRY_WINDOW
    either side of each txdtm) touch, the orders whose window touches it, at most LOOKUP_MAX_ORDERS
    to a query, in a window around them cut to that month. Orders of one month cost one query;
    an order whose window crosses a month's end is asked in both months' queries."""
    by_month: dict[tuple[int, int], list[tuple[int, datetime, datetime]]] = {}
    for i in sorted(range(len(orders)), key=lambda i: orders[i].txdtm):
        placed = datetime.strptime(orders[i].txdtm, TXDTM_FORMAT)
        for start, end in month_windows(placed - ENQUIRY_WINDOW, placed + ENQUIRY_WINDOW):
            by_month.setdefault((start.year, start.month), []).append((i, start, end))
    queries: list[LookupQuery] = []
    for month in sorted(by_month):
        asked = by_month[month]
        for first in range(0, len(asked), LOOKUP_MAX_ORDERS):
            chunk = asked[first : first + LOOKUP_MAX_ORDERS]
            start, end = min(s for _, s, _ in chunk), max(e for _, _, e in chunk)
            queries.append(LookupQuery([i for i, _, _ in chunk], start, end))
    return queries


def disagreement(order: Order, finding: Finding) -> str | None:
    """How the message's figures disagree with QFPay's record of the payment, if they do."""
    problems: list[str] = []
    amount = finding.amount
    if amount is not None and amount.txamt != order.txamt:
        problems.append(f"txamt {order.txamt} disagrees with QFPay's record ({amount.txamt})")
    if amount is not None and order.txcurrcd is not None and amount.txcurrcd != order.txcurrcd:
        problems.append(f"txcurrcd {order.txcurrcd} disagrees with QFPay's record ({amount.txcurrcd})")
    recorded = (finding.payment or {}).get("out_trade_no")
    if order.out_trade_no and recorded and recorded != order.out_trade_no:
        problems.append("out_trade_no disagrees with QFPay's record of the syssn")
    return "; ".join(problems) or None


def execution_name(order: Order) -> str:
    """Deterministic per order: a repeated hand-off finds the execution already there."""
    return f"order-{outcome_id(order.identity)}"


def successor_name(handoff: Handoff) -> str:
    """The execution that follows an order's loop which ended without an outcome: named by the
    hand-off (its time), so each such hand-off has its own and a replay of it finds the same one."""
    return f"{handoff['name']}-{int(float(handoff['input']['started_at']))}"


def loop_clock(now: float, length: float) -> LoopClock:
    """When the loop starts and by when it must decide. Set when the hand-off is decided and again,
    by :func:`started_now`, when its loop is started."""
    return {"started_at": now, "deadline_at": now + length}


def started_now(state: LoopState, now: float) -> LoopState:
    """The hand-off's state for a loop started at ``now``: the loop's time counts from its start,
    so a hand-off delivered late (replayed after a crash, or from a dead letter) keeps its length,
    not a deadline mostly spent."""
    return {**state, **loop_clock(now, state["deadline_at"] - state["started_at"])}


def request_id(order: Order, endpoint: Endpoint | None) -> str:
    """One request to QFPay: the endpoint and everything signed. The ``outcome_id`` of QFPay's
    refusal of it, so that every message making the same bad request publishes one outcome."""
    request = f"{endpoint}?{signing_string(cancel_params(order))}"
    return outcome_id(f"{order.identity}|request={request}")


# QFPay's txdtm is the merchant's local time, which may run up to 14 h ahead of UTC (UTC+14).
MERCHANT_CLOCK_AHEAD = timedelta(hours=14)
# The ledger's memory is counted this much short: clocks (the merchant's, QFPay's, ours) disagree.
LEDGER_MEMORY_MARGIN = timedelta(hours=1)


def may_outlive_the_ledger(order: Order, now: float, ledger_expiry: float) -> bool:
    """The payment may be older than the decision ledger remembers: a record of an earlier attempt
    at it (written after the payment was made) may have expired and been swept, so that nothing
    here tells whether a cancel was sent for it. The payment is read as old as its txdtm allows."""
    placed = datetime.strptime(order.txdtm, TXDTM_FORMAT).replace(tzinfo=UTC) - MERCHANT_CLOCK_AHEAD
    return now - placed.timestamp() >= ledger_expiry - LEDGER_MEMORY_MARGIN.total_seconds()


# Cancel requests that may reach QFPay for one order, in total: the first, and at most one more,
# only when an Enquiry shows the payment still live and QFPay refused the first (nothing of ours
# can take effect), or the loop could not read the first's answer and QFPay has shown the payment
# live for its settle time since. Until then a cancel that may have reached QFPay unanswered
# forbids any other: QFPay shows a reversal it is still processing as a live payment
# (docs/qfpay.md).
CANCELS_PER_ORDER = 2


class CancelAttempt:
    """Deciding one order: send the cancel and read its answer. QFPay's record before the cancel is
    :class:`EnquiryFirst`'s to read, the decision :class:`OrderDecisions`' to write.
    ``redelivered``: an earlier attempt may already have reached QFPay. ``earlier_sends``: cancels
    that earlier attempts may have sent (their answers unknown here). ``count_send``: called just
    before the cancel leaves, to record that it may reach QFPay. ``ledger_expiry``: how long the
    decision ledger remembers an order (None: not known here, the payment's age is not looked at).
    ``forgotten``: the ledger held an expired record of the order (see :class:`EnquiryFirst`).
    (A plain class: a dataclass costs every cold start ~0.5 ms to create.)"""

    def __init__(
        self,
        order: Order,
        qfpay: QFPayClient,
        routing: Routing,
        loop: LoopPolicy,
        clock: Callable[[], float],
        *,
        redelivered: bool = False,
        earlier_sends: int = 0,
        first_attempt_at: float | None = None,
        seen: Mapping[str, Any] | None = None,
        count_send: Callable[[], None] | None = None,
        ledger_expiry: float | None = None,
        forgotten: bool = False,
    ) -> None:
        self.order = order
        self.qfpay = qfpay
        self.routing = routing
        self.redelivered = redelivered
        self.earlier_sends = earlier_sends
        self.count_send = count_send
        self.record = OrderRecord(qfpay, order)
        self.decisions = OrderDecisions(
            order, self.record, loop, clock, earlier_sends=earlier_sends, first_attempt_at=first_attempt_at
        )
        # The Enquiry asked just before this attempt claimed the order (first_look), if any.
        self.first = EnquiryFirst(
            order,
            self.record,
            self.decisions,
            earlier_sends=earlier_sends,
            seen=seen,
            ledger_expiry=ledger_expiry,
            forgotten=forgotten,
        )

    def decide(self) -> Decision:
        """``{"outcome": detail}`` or ``{"handoff": {"name": ..., "input": ...}}``; an outcome that
        belongs to this request only, not to the order, also has ``"request": True``."""
        endpoint = self.routing.endpoint_for(self.order.pay_type)
        # An attempt before this one (a crash, a redelivery) may have sent a cancel.
        earlier = self.redelivered or bool(self.earlier_sends)
        decided = self.first.decide(endpoint, earlier, now=self.decisions.clock())
        if decided is not None:
            return decided
        try:
            # Counted once the merchant's budget let it go, just before it leaves: from then on a
            # later attempt knows this cancel may have reached QFPay.
            answer = send_cancel(self.qfpay, self.routing, endpoint, self.order, before_send=self.count_send)
        except BudgetExhausted as spent:
            raise _budget_spent(spent) from None
        except QFPayUnavailable as exc:
            raise RetryLater(str(exc), throttled=exc.http_status == 429) from None
        except QFPayAmbiguous as exc:
            return self.decisions.handoff(endpoint, None, respcd=None, resperr=str(exc), pending=False)
        respcd = str(answer.get("respcd") or "")
        resperr = answer_text(answer)
        own_syssn = reversal_syssn_of(answer)
        payment_syssn = text_of(answer.get("orig_syssn"))
        if self.order.syssn is None and valid_syssn(payment_syssn):
            self.record.payment_syssn = payment_syssn
        meaning = cancel_meaning(endpoint, answer)
        facts = {"respcd": respcd, "resperr": resperr, "reversal_syssn": own_syssn}
        if meaning.disposition is Disposition.DONE:
            return self._confirm(endpoint, facts, pending=True)
        if meaning.disposition is Disposition.IN_PROGRESS:
            return self.decisions.handoff(endpoint, own_syssn, respcd=respcd, resperr=resperr, pending=True)
        if meaning.disposition is Disposition.RETRY_LATER:
            raise RetryLater(f"QFPay answered {respcd} ({meaning.text})")
        if meaning.status is Status.NOT_CHARGED:
            # QFPay's view at that instant, not proof: the customer may still pay. Our cancel was
            # refused, so nothing of ours is pending; the Enquiry decides.
            return self._confirm(endpoint, facts, pending=False, answered=meaning.text)
        if not documented(respcd):
            # No refusal we can read: the cancel may have taken effect, so its count stands and
            # no message may send another. The loop's Enquiry decides; it resends only once QFPay
            # has shown the payment live for its settle time.
            return self.decisions.handoff(
                endpoint, own_syssn, respcd=respcd or None, resperr=resperr, pending=False
            )
        status = meaning.status or Status.UNKNOWN
        decision = self.decisions.outcome(
            status, f"{endpoint} answered {respcd}: {meaning.text}", endpoint, attempts=1, **facts
        )
        if status in REQUEST_STATUSES:
            decision["request"] = True  # the message's own; see REQUEST_STATUSES
        return decision

    def _confirm(
        self, endpoint: Endpoint, facts: dict[str, Any], *, pending: bool, answered: str | None = None
    ) -> Decision:
        """QFPay's word is not proof: one Enquiry decides; anything it leaves open (not visible yet,
        still live, a row we cannot read, Enquiry unavailable, no budget for it now) goes to the
        loop to decide. ``pending``: our cancel may still take effect; ``answered``: what a
        refusal said."""
        try:
            finding = self.record.enquire(facts["reversal_syssn"], cancel_pending=pending)
        except BudgetExhausted:
            finding = None  # the loop asks when the merchant's budget allows
        except CredentialsRejected:
            # Our cancel left: failing now would hand its count back as if nothing had been sent.
            finding = None
        if finding is not None and finding.status is not None:
            reason = finding.reason
            if answered is not None:
                reason = f"{endpoint} answered {facts['respcd']} ({answered}); {reason}"
            return self.decisions.outcome(finding.status, reason, endpoint, attempts=1, **facts)
        return self.decisions.handoff(
            endpoint,
            facts["reversal_syssn"],
            respcd=facts["respcd"],
            resperr=facts["resperr"],
            pending=pending,
            may_take_effect=pending,
        )

    def give_up(self, reason: str) -> OutcomeDecision:
        """QFPay could not be asked for the whole retry horizon: an explained UNKNOWN outcome."""
        return self.decisions.outcome(Status.UNKNOWN, reason, self.routing.endpoint_for(self.order.pay_type))


class EnquiryFirst:
    """QFPay's record of the order read before its cancel (``seen``: an Enquiry already asked, or
    asked now): whether it decides the order without a cancel, and whether one may be sent."""

    def __init__(
        self,
        order: Order,
        record: OrderRecord,
        decisions: OrderDecisions,
        *,
        earlier_sends: int,
        seen: Mapping[str, Any] | None,
        ledger_expiry: float | None,
        forgotten: bool = False,
    ) -> None:
        self.order = order
        self.record = record
        self.decisions = decisions
        self.earlier_sends = earlier_sends
        self.seen = seen
        self.ledger_expiry = ledger_expiry
        self.forgotten = forgotten  # the ledger's record of the order had expired

    def decide(self, endpoint: Endpoint, earlier: bool, *, now: float) -> Decision | None:
        """A decision, or None: send one. ``earlier``: a crashed or timed-out earlier run may have
        cancelled already."""
        # Or one may have, longer ago than the ledger remembers (so nothing of it is still pending):
        # its record expired, or the payment is older than the ledger's memory.
        forgotten = not earlier and (
            self.forgotten
            or (
                self.ledger_expiry is not None and may_outlive_the_ledger(self.order, now, self.ledger_expiry)
            )
        )
        # QFPay's record is read before the cancel only where it is needed: an earlier attempt may
        # have cancelled, or the message named the payment by out_trade_no alone (looked up to learn
        # its syssn: ``seen``). A first message naming the syssn of a recent payment costs no extra
        # request; QFPay checks the cancel's txamt against the payment itself (1266).
        if not (earlier or forgotten or self.seen is not None or self.order.syssn is None):
            return None
        if self.seen is not None:
            finding = self.record.read(self.seen, None, cancel_pending=earlier)
        else:
            try:
                found = self.record.enquire(None, cancel_pending=earlier)
            except BudgetExhausted as spent:
                raise _budget_spent(spent) from None
            if found is None:
                raise RetryLater("QFPay's Enquiry before the cancel could not be read")
            finding = found
        disagrees = disagreement(self.order, finding)
        if disagrees is not None:
            # This message's claim, not the payment's state: refused before anything is sent, and
            # the message's own (REQUEST_STATUSES), so a genuine message is decided on its own.
            decision = self.decisions.outcome(
                Status.REJECTED, f"the message disagrees with QFPay's record: {disagrees}", endpoint
            )
            decision["request"] = True
            return decision
        if finding.status is not None and not finding.paid_untouched:
            return self.decisions.outcome(finding.status, finding.reason, endpoint, respcd=finding.respcd)
        if forgotten and finding.paid_untouched:
            # A paid row does not show that a cancel sent before the ledger's memory was refused;
            # only a live one clears a cancel. The Enquiry shows the refund case: none is sent.
            reason = (
                f"{finding.reason}; the payment is older than the decision ledger remembers, so a "
                "cancel may have been sent for it before: none is sent on a paid row"
            )
            return self.decisions.outcome(
                finding.status or Status.REFUND_REQUIRED, reason, endpoint, respcd=finding.respcd
            )
        if forgotten and finding.found and not finding.live:
            # A row we cannot read. Nothing of ours can still be pending after that long: the loop
            # asks, and may send the one cancel once QFPay shows the payment live.
            return self.decisions.handoff(
                endpoint,
                None,
                respcd=None,
                resperr=finding.reason,
                pending=False,
                may_take_effect=False,
                attempts=0,
            )
        # A completed payment nothing has cancelled or refunded (only read so when nothing of ours
        # is pending) still gets the first cancel: it may still undo it, and QFPay's answer decides.
        if earlier and finding.found and not finding.live:
            # Paid while the earlier cancel may still take effect, or a row we cannot read:
            # sending would decide nothing more; the loop decides by the Enquiry.
            return self.decisions.handoff(
                endpoint, None, respcd=None, resperr=finding.reason, pending=True, attempts=0
            )
        if self.earlier_sends and not finding.unknown_to_qfpay:
            # An earlier attempt's cancel may have reached QFPay, unanswered here: it may still be
            # processing (a processing reversal looks like a live payment). The loop decides.
            reason = f"{self.earlier_sends} earlier cancel requests may have reached QFPay"
            return self.decisions.handoff(
                endpoint, None, respcd=None, resperr=reason, pending=True, attempts=0
            )
        # Nothing of ours pending, or QFPay knows nothing of the payment after our earlier cancels
        # left (it answers a cancel of a payment it does not know 1268 and does nothing): send.
        return None


class OrderRecord:
    """QFPay's record of one order through the Transaction Enquiry; keeps QFPay's figures of the
    payment (``amount``) once seen, for the outcome."""

    def __init__(self, qfpay: QFPayClient, order: Order) -> None:
        self.qfpay = qfpay
        self.order = order
        self.amount: QFPayAmount | None = None
        # The payment's syssn as the cancel's answer named it (orig_syssn), for an order named by
        # out_trade_no alone: asked by syssn, QFPay searches every date, not a window.
        self.payment_syssn: str | None = None

    def enquire(self, reversal_syssn: str | None, *, cancel_pending: bool) -> Finding | None:
        """None: no answer we can read. :class:`BudgetExhausted` passes: the caller decides when
        to ask again."""
        try:
            asked = ask_enquiry(
                self.qfpay,
                self.order,
                reversal_syssn=reversal_syssn,
                cancel_pending=cancel_pending,
                payment_syssn=self.payment_syssn,
            )
        except ValueError:  # a request that could not be made is no answer either
            return None
        if asked.finding is not None:
            self.amount = asked.finding.amount or self.amount
        return asked.finding

    def read(self, answer: Mapping[str, Any], reversal_syssn: str | None, *, cancel_pending: bool) -> Finding:
        finding = read_enquiry(
            answer, self.order, reversal_syssn=reversal_syssn, cancel_pending=cancel_pending
        )
        self.amount = finding.amount or self.amount
        return finding


class OrderDecisions:
    """What an attempt decides for its order, written out: an outcome, or the hand-off to the
    wait-and-poll loop with the loop's starting state (docs/contracts.md)."""

    def __init__(
        self,
        order: Order,
        record: OrderRecord,
        loop: LoopPolicy,
        clock: Callable[[], float],
        *,
        earlier_sends: int,
        first_attempt_at: float | None,
    ) -> None:
        self.order = order
        self.record = record
        self.loop = loop
        self.clock = clock
        self.earlier_sends = earlier_sends
        # When the order was first attempted (its message's first receive): the loop's deadline may
        # move for QFPay being unreachable only until that time plus the retry horizon.
        self.first_attempt_at = first_attempt_at

    def outcome(
        self, status: Status, reason: str, endpoint: Endpoint, *, attempts: int = 0, **facts: Any
    ) -> OutcomeDecision:
        order = self.order
        detail = build_outcome(
            order.to_dict(),
            order.identity,
            status,
            reason,
            now=self.clock(),
            decided_by="cancel-function",
            endpoint=endpoint,
            attempts=attempts,
            amount=self.record.amount,
            **facts,
        )
        return {"outcome": detail}

    def handoff(
        self,
        endpoint: Endpoint,
        reversal_syssn: str | None,
        *,
        respcd: str | None,
        resperr: str | None,
        pending: bool,
        may_take_effect: bool = True,
        attempts: int = 1,
    ) -> HandoffDecision:
        now = self.clock()
        schedule = self.loop.schedule
        clock = loop_clock(now, self.loop.deadline_seconds)
        state: LoopState = {
            # Lets the state machine describe an outcome by itself if the poll function is broken.
            "outcome_id": outcome_id(self.order.identity),
            # No task token: the execution history keeps its input for 90 days, readable by anyone
            # with states:GetExecutionHistory. The caller is answered from its own message.
            "order": {name: value for name, value in self.order.to_dict().items() if name != "task_token"},
            "endpoint": endpoint,
            "reversal_syssn": reversal_syssn,
            "respcd": respcd,
            "resperr": resperr,
            # True when QFPay answered our cancel in progress or done; False when it did not
            # answer (it may still have received it) or refused it.
            "reversal_pending": pending,
            # False when QFPay refused our cancel: until then a paid row is not a refund case, and
            # a live-looking row may be our reversal processing, so the loop does not resend before
            # QFPay's settle time has passed (docs/contracts.md).
            "cancel_may_take_effect": may_take_effect,
            "attempts": attempts,
            "polls": 0,
            # A cancel of an earlier attempt may have reached QFPay too: this order's one further
            # cancel is spent, so the loop never resends (see CANCELS_PER_ORDER).
            "resent": self.earlier_sends > 0,
            "started_at": clock["started_at"],
            "deadline_at": clock["deadline_at"],
            "unreachable_allowance": self._unreachable_allowance(now),
            "wait_seconds": schedule.wait_after(0),
            "schedule": schedule.to_dict(),
            "status": "IN_PROGRESS",
        }
        if self.record.payment_syssn is not None:
            state["payment_syssn"] = self.record.payment_syssn
        return {"handoff": {"name": execution_name(self.order), "input": state}}

    def _unreachable_allowance(self, now: float) -> int:
        """What is left of the order's retry horizon: the loop gets no more time for an outage than
        the order would have had in the queue."""
        first = self.first_attempt_at if self.first_attempt_at is not None else now
        return max(
            0, min(self.loop.unreachable_allowance, math.floor(first + self.loop.unreachable_allowance - now))
        )


def _budget_spent(spent: BudgetExhausted) -> RetryLater:
    return RetryLater(str(spent), budget_free_at=spent.next_free_at)
