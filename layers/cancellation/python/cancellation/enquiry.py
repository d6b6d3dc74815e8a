"""Reading QFPay's Transaction Enquiry: is the payment still live, cancelled, paid or failed?

QFPay's advice: a reversal's 0000 does not prove the customer was not charged; always confirm here.
The row's ``respcd`` is the transaction's own status; ``cancel`` non-zero means it is no longer a live
payment (current docs: 1 reversed/refunded, 2 cancelled, 3 refunded, 4 pre-auth finished,
5 partially refunded; older docs: 1 reversed, 2 refunded or closed). docs/qfpay.md has the rules.
A row holding anything else in a field we read decides nothing: we never guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cancellation.orders import CURRENCIES, TXDTM_FORMAT, Order, valid_out_trade_no, valid_syssn
from cancellation.outcomes import QFPayAmount, Status
from cancellation.respcd import RESPCD_MEANINGS, Disposition, meaning_of

CANCEL_FLAGS = {
    "0": "not cancelled",
    "1": "reversed or refunded",
    "2": "cancelled or closed",
    "3": "refunded",
    "4": "pre-authorisation finished",
    "5": "partially refunded",
}
# QFPay's search by out_trade_no needs a time window (sysdtm, at most one month).
ENQUIRY_WINDOW = timedelta(days=1)
# QFPay searches one calendar month at most, and does not say what it does with a window crossing
# into the next: an Enquiry by out_trade_no is asked once per calendar month its window touches.
# Our windows (ENQUIRY_WINDOW either side, reconciliation's 8 days) touch two months at most.
ENQUIRY_MAX_REQUESTS = 2
# A partial refund leaves part of the payment with the customer charged: not "not charged".
_STILL_CHARGED_FLAGS = frozenset({"4", "5"})
# A refund is not our cancellation: the customer is not charged, but nothing was cancelled.
_REFUNDED_FLAGS = frozenset({"3"})
_RAW_ROW_LIMIT = 600  # characters of an unreadable row kept in the reason
_CENTS = re.compile(r"[0-9]{1,13}")


class Finding(NamedTuple):
    """What the Enquiry says about the original payment. ``status`` None means not decided: still in
    progress, not readable, or waiting for a cancel of ours that may still take effect."""

    status: Status | None
    reason: str
    respcd: str | None = None  # the row's own respcd
    found: bool = True
    # An open, uncancelled payment that nothing of ours is known to be cancelling: the only state
    # in which a cancel may be (re)sent.
    live: bool = False
    payment: Mapping[str, Any] | None = None  # the payment's row, as QFPay showed it
    # Completed, and neither cancelled nor refunded at all: what a first cancel may still undo.
    paid_untouched: bool = False
    # Asked by syssn (QFPay then searches every date), no row of the answer names the order (no
    # payment, refund or reversal of it): QFPay does not know the payment, so no cancel of ours can
    # be taking effect on it. Never read from a query by out_trade_no: QFPay searches that only in
    # the time window given, which a payment made at another time than the message says escapes.
    unknown_to_qfpay: bool = False

    @property
    def amount(self) -> QFPayAmount | None:
        """QFPay's figures for the payment (read only from a row that passed ``_unreadable``)."""
        if self.payment is None or _unreadable_amount(self.payment) is not None:
            return None
        number, syssn = self.payment.get("out_trade_no"), self.payment.get("syssn")
        return QFPayAmount(
            int(str(self.payment["txamt"])),
            str(self.payment["txcurrcd"]),
            number if valid_out_trade_no(number) else None,
            syssn if valid_syssn(syssn) else None,
        )


def enquiry_queries(
    order: Order,
    reversal_syssn: str | None = None,
    payment_syssn: str | None = None,
    *,
    window_before: timedelta = ENQUIRY_WINDOW,
    window_after: timedelta = ENQUIRY_WINDOW,
) -> list[dict[str, str | None]]:
    """The queries of one Enquiry (ask them with :func:`enquire`). The original and the reversal's
    own number are asked together; QFPay filters rows on every list given, so the order is named by
    syssn when known (from the order, or learnt from an earlier Enquiry): one query, which QFPay
    answers whatever the dates. Else by out_trade_no alone, in a time window around the order
    (QFPay otherwise searches the current month only): one query per calendar month it touches."""
    syssn = order.syssn or payment_syssn
    if syssn:
        numbers = [n for n in (syssn, reversal_syssn) if n]
        return [{"mchid": order.mchid, "syssn": ",".join(numbers)}]
    placed = datetime.strptime(order.txdtm, TXDTM_FORMAT)
    return [
        {
            "mchid": order.mchid,
            "out_trade_no": order.out_trade_no,
            "start_time": start.strftime(TXDTM_FORMAT),
            "end_time": end.strftime(TXDTM_FORMAT),
        }
        for start, end in month_windows(placed - window_before, placed + window_after)
    ]


def month_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """``start``..``end`` cut at each calendar month's end, so that no piece crosses one (QFPay may
    search a window crossing into the next month only within its first). A window inside one month
    is one piece."""
    pieces: list[tuple[datetime, datetime]] = []
    while True:
        following = datetime(start.year + start.month // 12, start.month % 12 + 1, 1)
        if end < following:
            pieces.append((start, end))
            return pieces
        pieces.append((start, following - timedelta(seconds=1)))
        start = following


def enquire(
    ask: Callable[[Mapping[str, str | None]], Mapping[str, Any]], queries: Sequence[Mapping[str, str | None]]
) -> Mapping[str, Any]:
    """Ask an Enquiry's queries (:func:`enquiry_queries`) in turn, as one answer (:func:`merged`);
    after a query that failed nothing more is asked."""
    answers: list[Mapping[str, Any]] = []
    for query in queries:
        answers.append(ask(query))
        if _failed(answers[-1]):
            break
    return merged(answers)


def merged(answers: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The answers to an Enquiry's queries as one, holding the rows of all. One that failed, or whose
    ``data`` is neither a list nor absent, is the answer: :func:`read_enquiry` says why. One without
    ``data`` leaves a mark in the rows (a row that is not an object), so that the others' rows are
    never read as all that QFPay knows."""
    failed = next((answer for answer in answers if _failed(answer)), None)
    if failed is not None:
        return failed
    if len(answers) == 1:
        return answers[0]
    rows: list[Any] = []
    for answer in answers:
        data = answer.get("data")
        rows += [None] if data is None else data
    return {**answers[0], "data": rows}


def _failed(answer: Mapping[str, Any]) -> bool:
    return answer.get("respcd") != "0000" or not isinstance(answer.get("data"), list | None)


def read_enquiry(
    answer: Mapping[str, Any],
    order: Order,
    *,
    reversal_syssn: str | None = None,
    cancel_pending: bool = False,
) -> Finding:
    """Interpret an Enquiry answer for ``order``; raises ValueError if the query itself failed.

    ``cancel_pending``: a cancel of ours may still take effect (it answered in progress, or may
    have reached QFPay unanswered); ``reversal_syssn`` is that cancel's own number, if known.
    """
    if answer.get("respcd") != "0000":
        raise ValueError(
            f"enquiry failed: respcd {answer.get('respcd')} {answer.get('resperr') or ''}".strip()
        )
    listed = answer.get("data")
    data = listed or []
    if not isinstance(data, list):
        raise ValueError("enquiry answer: data is not a list")
    rows = [row for row in data if isinstance(row, Mapping)]
    payment = _original_payment(rows, order, reversal_syssn)
    if payment is None:
        known = any(_names(row, order) for row in rows) or not order.syssn
        reason = "QFPay has no record of the transaction"
        # Only QFPay's list of rows, every one readable, shows what it knows: an answer without
        # data (or with rows that are not objects) decides nothing, and never allows a cancel.
        readable = isinstance(listed, list) and len(rows) == len(listed)
        return Finding(None, reason, found=False, unknown_to_qfpay=readable and not known)
    row_respcd = field_text(payment.get("respcd"))
    problem = _unreadable(payment) or _unreadable_refunds(rows, payment)
    if problem is not None:
        # Never guess: a row we cannot read decides nothing; the loop asks again.
        return Finding(
            None, f"QFPay's row cannot be read ({problem}): {_raw(payment)}", row_respcd, payment=payment
        )
    cancel = field_text(payment.get("cancel")) or ""  # read by _unreadable: one of CANCEL_FLAGS
    row_respcd = row_respcd or ""  # likewise: a documented code
    if cancel != "0":
        what = CANCEL_FLAGS[cancel]
        if cancel in _STILL_CHARGED_FLAGS:
            return Finding(
                Status.REFUND_REQUIRED, f"payment completed and {what}", row_respcd, payment=payment
            )
        if cancel in _REFUNDED_FLAGS:
            return Finding(
                Status.NOT_CHARGED, f"Enquiry shows the payment was {what}", row_respcd, payment=payment
            )
        return Finding(
            Status.CANCELLED, f"Enquiry confirms the payment is {what}", row_respcd, payment=payment
        )
    meaning = meaning_of(row_respcd)
    if row_respcd == "0000":
        return _paid(rows, payment, reversal_syssn, cancel_pending)
    if meaning.disposition is Disposition.IN_PROGRESS:
        under_way = _cancel_under_way(rows, payment, reversal_syssn) if cancel_pending else None
        if under_way is not None:
            # QFPay lists a cancel of the payment it has not failed: a live row is that cancel
            # processing, however long it takes. Never a reason to send another.
            shown = f"row {field_text(under_way.get('syssn'))}, respcd {field_text(under_way.get('respcd'))}"
            return Finding(
                None,
                f"payment still {meaning.text} (respcd {row_respcd}); a cancel of it is under way at "
                f"QFPay ({shown})",
                row_respcd,
                payment=payment,
            )
        return Finding(
            None,
            f"payment still {meaning.text} (respcd {row_respcd})",
            row_respcd,
            live=True,
            payment=payment,
        )
    return Finding(
        Status.NOT_CHARGED,
        f"payment did not complete (respcd {row_respcd}: {meaning.text})",
        row_respcd,
        payment=payment,
    )


def _paid(
    rows: Sequence[Mapping[str, Any]],
    payment: Mapping[str, Any],
    reversal_syssn: str | None,
    cancel_pending: bool,
) -> Finding:
    """A completed payment whose cancel flag is 0."""
    refunded = sum(
        int(str(r.get("txamt"))) for r in _refunds_of(rows, payment) if field_text(r.get("respcd")) == "0000"
    )
    if refunded and refunded >= int(str(payment.get("txamt"))):
        return Finding(
            Status.NOT_CHARGED, "payment completed and was refunded in full", "0000", payment=payment
        )
    if refunded:
        return Finding(
            Status.REFUND_REQUIRED, "payment completed and was refunded only in part", "0000", payment=payment
        )
    if cancel_pending:
        # Our cancel may still take effect (QFPay shows a reversal in progress on a paid row):
        # a refund case only once that cancel's own row shows it failed.
        own = _row_of(rows, reversal_syssn)
        own_respcd = field_text(own.get("respcd")) if own is not None else None
        own_meaning = meaning_of(own_respcd or "")
        if own is None or not _failed_cancel(own):
            seen = f"its row reads respcd {own_respcd}" if own is not None else "QFPay shows no row of it"
            return Finding(
                None,
                f"payment completed while a cancel of ours may still take effect ({seen})",
                "0000",
                payment=payment,
            )
        return Finding(
            Status.REFUND_REQUIRED,
            f"payment completed and our cancel failed (its respcd {own_respcd}: {own_meaning.text})",
            "0000",
            payment=payment,
        )
    return Finding(
        Status.REFUND_REQUIRED,
        "payment completed and was not cancelled",
        "0000",
        payment=payment,
        paid_untouched=True,
    )


def _unreadable(row: Mapping[str, Any]) -> str | None:
    """What keeps a payment row from being read, or None. Every field we read must hold a value
    QFPay documents."""
    respcd = field_text(row.get("respcd"))
    if respcd is None:
        return "no respcd"
    meaning = meaning_of(respcd)
    if respcd not in RESPCD_MEANINGS:
        return f"respcd {respcd} is not in QFPay's table"
    if meaning.disposition in (Disposition.RETRY_LATER, Disposition.CREDENTIALS):
        return f"respcd {respcd} ({meaning.text}) is not a payment state"
    if meaning.status is Status.REFUND_REQUIRED:
        return f"respcd {respcd} ({meaning.text}) is not a payment state"
    cancel = field_text(row.get("cancel"))
    if cancel not in CANCEL_FLAGS:
        return "no cancel flag" if cancel is None else f"cancel flag {cancel} is not one QFPay documents"
    return _unreadable_amount(row)


def _unreadable_amount(row: Mapping[str, Any]) -> str | None:
    if not _CENTS.fullmatch(field_text(row.get("txamt")) or ""):
        return "txamt is not an amount in cents"
    if field_text(row.get("txcurrcd")) not in CURRENCIES:
        return "txcurrcd is not a currency QFPay documents"
    return None


def _unreadable_refunds(rows: Sequence[Mapping[str, Any]], payment: Mapping[str, Any]) -> str | None:
    for refund in _refunds_of(rows, payment):
        if not _CENTS.fullmatch(field_text(refund.get("txamt")) or ""):
            return f"a refund row's txamt is not an amount in cents: {_raw(refund)}"
    return None


def _refunds_of(rows: Sequence[Mapping[str, Any]], payment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in rows if _is(r, "refund") and r.get("origssn") == payment.get("syssn")]


def _original_payment(
    rows: Sequence[Mapping[str, Any]], order: Order, reversal_syssn: str | None
) -> Mapping[str, Any] | None:
    for row in rows:
        if _is(row, "refund") or (reversal_syssn and row.get("syssn") == reversal_syssn):
            continue  # a refund, or our cancel's own row (it may share the payment's out_trade_no)
        if (order.syssn and row.get("syssn") == order.syssn) or (
            order.out_trade_no and row.get("out_trade_no") == order.out_trade_no
        ):
            return row
    return None


def _names(row: Mapping[str, Any], order: Order) -> bool:
    # Enquiry rows name a refund's payment `origssn`; a cancel's own answer says `orig_syssn`.
    """The row is about the order: its payment, or a refund or reversal naming it."""
    return bool(
        (order.syssn and order.syssn in (row.get("syssn"), row.get("origssn"), row.get("orig_syssn")))
        or (order.out_trade_no and row.get("out_trade_no") == order.out_trade_no)
    )


def _failed_cancel(row: Mapping[str, Any]) -> bool:
    """A cancel's own row whose respcd is a documented final answer: it did not take effect."""
    respcd = field_text(row.get("respcd"))
    return respcd in RESPCD_MEANINGS and meaning_of(respcd or "").disposition is Disposition.FINAL


def _cancel_under_way(
    rows: Sequence[Mapping[str, Any]], payment: Mapping[str, Any], reversal_syssn: str | None
) -> Mapping[str, Any] | None:
    """A row of a cancel of the payment (ours, by its syssn; or a refund row naming the payment,
    which for a payment never completed can only be a reversal) that QFPay has not failed."""
    own = _row_of(rows, reversal_syssn)
    cancels = ([own] if own is not None else []) + _refunds_of(rows, payment)
    return next((row for row in cancels if not _failed_cancel(row)), None)


def _row_of(rows: Sequence[Mapping[str, Any]], syssn: str | None) -> Mapping[str, Any] | None:
    return next((row for row in rows if syssn and row.get("syssn") == syssn), None)


def _is(row: Mapping[str, Any], order_type: str) -> bool:
    return str(row.get("order_type") or "payment") == order_type


def field_text(value: Any) -> str | None:
    """A field as QFPay's text (numbers sent as JSON numbers read the same); None if absent."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None


def _raw(row: Mapping[str, Any]) -> str:
    text = json.dumps(row, default=str, sort_keys=True)
    return text if len(text) <= _RAW_ROW_LIMIT else text[:_RAW_ROW_LIMIT] + "..."
