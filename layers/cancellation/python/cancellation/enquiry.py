"""Reading QFPay's Transaction Enquiry: is the payment still live, cancelled, paid or failed?

QFPay's advice: a reversal's 0000 does not prove the customer was not charged; always confirm here.
The row's ``respcd`` is the transaction's own status; ``cancel`` non-zero means it is no longer a live
payment (current docs: 1 reversed/refunded, 2 cancelled, 3 refunded, 4 pre-auth finished,
5 partially refunded; older docs: 1 reversed, 2 refunded or closed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cancellation.orders import TXDTM_FORMAT, Order
from cancellation.outcomes import Status
from cancellation.respcd import Disposition, meaning_of

CANCEL_FLAGS = {
    "1": "reversed or refunded",
    "2": "cancelled or closed",
    "3": "refunded",
    "4": "pre-authorisation finished",
    "5": "partially refunded",
}
# QFPay's search by out_trade_no needs a time window (sysdtm, at most one month).
ENQUIRY_WINDOW = timedelta(days=1)
# A partial refund leaves part of the payment with the customer charged: not "not charged".
_STILL_CHARGED_FLAGS = frozenset({"4", "5"})
# A refund is not our cancellation: the customer is not charged, but nothing was cancelled.
_REFUNDED_FLAGS = frozenset({"3"})


class Finding(NamedTuple):
    """What the Enquiry says about the original payment. ``status`` None means still in progress."""

    status: Status | None
    reason: str
    respcd: str | None = None  # the row's own respcd
    found: bool = True

    @property
    def live(self) -> bool:
        """Still an open, uncancelled payment: the only state in which a cancel may be (re)sent."""
        return self.found and self.status is None


def enquiry_params(order: Order, reversal_syssn: str | None = None) -> dict[str, str | None]:
    """One query for the original and the reversal's own number together. QFPay filters rows on
    every list given, so the order is named by syssn when known, else by out_trade_no alone; then a
    time window around the order is given, because QFPay otherwise searches the current month only."""
    if order.syssn:
        numbers = [n for n in (order.syssn, reversal_syssn) if n]
        return {"mchid": order.mchid, "syssn": ",".join(numbers)}
    placed = datetime.strptime(order.txdtm, TXDTM_FORMAT)
    return {
        "mchid": order.mchid,
        "out_trade_no": order.out_trade_no,
        "start_time": (placed - ENQUIRY_WINDOW).strftime(TXDTM_FORMAT),
        "end_time": (placed + ENQUIRY_WINDOW).strftime(TXDTM_FORMAT),
    }


def read_enquiry(answer: Mapping[str, Any], order: Order) -> Finding:
    """Interpret an Enquiry answer for ``order``; raises ValueError if the query itself failed."""
    if answer.get("respcd") != "0000":
        raise ValueError(
            f"enquiry failed: respcd {answer.get('respcd')} {answer.get('resperr') or ''}".strip()
        )
    data = answer.get("data") or []
    if not isinstance(data, list):
        raise ValueError("enquiry answer: data is not a list")
    rows = [row for row in data if isinstance(row, Mapping)]
    payment = _original_payment(rows, order)
    if payment is None:
        return Finding(None, "QFPay has no record of the transaction", found=False)
    row_respcd = str(payment.get("respcd") or "")
    cancel = str(payment.get("cancel") or "0")
    refunded = sum(
        _cents(r.get("txamt"))
        for r in rows
        if _is(r, "refund") and r.get("origssn") == payment.get("syssn") and str(r.get("respcd")) == "0000"
    )
    if cancel not in ("", "0"):
        what = CANCEL_FLAGS.get(cancel, f"cancel flag {cancel}")
        if cancel in _STILL_CHARGED_FLAGS:
            return Finding(Status.REFUND_REQUIRED, f"payment completed and {what}", row_respcd)
        if cancel in _REFUNDED_FLAGS:
            return Finding(Status.NOT_CHARGED, f"Enquiry shows the payment was {what}", row_respcd)
        return Finding(Status.CANCELLED, f"Enquiry confirms the payment is {what}", row_respcd)
    if row_respcd == "0000":
        if refunded and refunded >= _cents(payment.get("txamt")):
            return Finding(Status.NOT_CHARGED, "payment completed and was refunded in full", row_respcd)
        if refunded:
            return Finding(
                Status.REFUND_REQUIRED, "payment completed and was refunded only in part", row_respcd
            )
        return Finding(Status.REFUND_REQUIRED, "payment completed and was not cancelled", row_respcd)
    meaning = meaning_of(row_respcd)
    if meaning.disposition is Disposition.IN_PROGRESS:
        return Finding(None, f"payment still {meaning.text} (respcd {row_respcd})", row_respcd)
    return Finding(
        Status.NOT_CHARGED,
        f"payment did not complete (respcd {row_respcd}: {meaning.text})",
        row_respcd,
    )


def _original_payment(rows: Sequence[Mapping[str, Any]], order: Order) -> Mapping[str, Any] | None:
    for row in rows:
        if _is(row, "refund"):
            continue
        if (order.syssn and row.get("syssn") == order.syssn) or (
            order.out_trade_no and row.get("out_trade_no") == order.out_trade_no
        ):
            return row
    return None


def _is(row: Mapping[str, Any], order_type: str) -> bool:
    return str(row.get("order_type") or "payment") == order_type


def _cents(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
