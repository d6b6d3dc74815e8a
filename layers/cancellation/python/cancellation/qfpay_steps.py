"""The two things both functions ask of QFPay for an order, written once: send its cancel
(reversal or close) and ask the Transaction Enquiry what it shows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from cancellation.budget import BudgetExhausted
from cancellation.enquiry import Finding, enquire, enquiry_queries, read_enquiry
from cancellation.orders import Order, valid_syssn
from cancellation.qfpay import EnquiryUnreadable, QFPayClient, QFPayUnavailable
from cancellation.respcd import Meaning, meaning_of_cancel_answer
from cancellation.routing import Routing

if TYPE_CHECKING:
    from cancellation.models import Endpoint


def cancel_params(order: Order) -> dict[str, str | None]:
    return {
        "mchid": order.mchid,
        "syssn": order.syssn,
        "out_trade_no": order.out_trade_no,
        "txamt": str(order.txamt),
        "txdtm": order.txdtm,
        "udid": order.udid,
    }


def send_cancel(
    qfpay: QFPayClient,
    routing: Routing,
    endpoint: Endpoint,
    order: Order,
    *,
    before_send: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``before_send``: see :meth:`QFPayClient.call` (where the cancel is counted)."""
    params = cancel_params(order)
    if endpoint == "close":
        return qfpay.close(params, routing.close_method, before_send=before_send)
    return qfpay.reversal(params, before_send=before_send)


def answer_text(answer: dict[str, Any]) -> str | None:
    """QFPay's words for an answer: ``resperr``, else ``respmsg``."""
    return text_of(answer.get("resperr")) or text_of(answer.get("respmsg"))


def cancel_meaning(endpoint: Endpoint, answer: Mapping[str, Any]) -> Meaning:
    """What QFPay's answer to our reversal or close means (close's answer needs its own syssn)."""
    return meaning_of_cancel_answer(endpoint, str(answer.get("respcd") or ""), text_of(answer.get("syssn")))


def reversal_syssn_of(answer: Mapping[str, Any]) -> str | None:
    """The cancel's own syssn in QFPay's answer, if it is one: anything else (a gateway's page
    in the field, say) is not carried into the loop, whose every turn would refuse it."""
    syssn = text_of(answer.get("syssn"))
    return syssn if valid_syssn(syssn) else None


def text_of(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


class EnquiryAnswer(NamedTuple):
    """What one Transaction Enquiry gave."""

    finding: Finding | None  # None: no answer we can read
    reached: bool  # QFPay (or someone in its name) answered at all
    problem: str = ""  # why there is no finding


def ask_enquiry(
    qfpay: QFPayClient,
    order: Order,
    *,
    reversal_syssn: str | None,
    cancel_pending: bool,
    payment_syssn: str | None = None,
) -> EnquiryAnswer:
    """Ask the Enquiry and read the order's row. :class:`BudgetExhausted` passes: the caller
    decides when to ask again."""
    try:
        answer = enquire(qfpay.enquiry, enquiry_queries(order, reversal_syssn, payment_syssn))
    except BudgetExhausted:
        raise
    except EnquiryUnreadable as exc:
        # An answer, unsigned or garbled: QFPay (or someone in its name) was reached.
        return EnquiryAnswer(None, True, str(exc))
    except QFPayUnavailable as exc:
        # No answer (5xx, timeout, refused connection, QFPay's 429): QFPay could not be reached.
        return EnquiryAnswer(None, False, str(exc))
    try:
        finding = read_enquiry(answer, order, reversal_syssn=reversal_syssn, cancel_pending=cancel_pending)
    except ValueError as exc:
        return EnquiryAnswer(None, True, str(exc))
    return EnquiryAnswer(finding, True)
