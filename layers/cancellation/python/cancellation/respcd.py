"""What each QFPay ``respcd`` means for a cancellation: one table, read by both functions.

The source is the respcd table of QFPay's documentation (see the API digest). Each code maps to a
disposition: what the caller does next.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from cancellation.outcomes import Status

if TYPE_CHECKING:
    from cancellation.models import Endpoint


class Disposition(StrEnum):
    DONE = "done"  # 0000: cancelled; confirm with the Transaction Enquiry
    IN_PROGRESS = "in_progress"  # poll the Enquiry with a delay; never resend at once
    RETRY_LATER = "retry_later"  # nothing happened at QFPay: try again with backoff
    FINAL = "final"  # decided; the status says what it means for the customer
    CREDENTIALS = "credentials"  # signature rejected: re-read the secret, then fail loudly


class Meaning(NamedTuple):
    disposition: Disposition
    text: str
    status: Status | None = None  # set for FINAL


def _final(status: Status, text: str) -> Meaning:
    return Meaning(Disposition.FINAL, text, status)


RESPCD_MEANINGS: dict[str, Meaning] = {
    "0000": Meaning(Disposition.DONE, "success"),
    # In progress: the Enquiry decides.
    "1143": Meaning(Disposition.IN_PROGRESS, "unpaid or processing"),
    "1145": Meaning(Disposition.IN_PROGRESS, "processing"),
    "1298": Meaning(Disposition.IN_PROGRESS, "slow network; may already have taken effect"),
    "2999": Meaning(Disposition.IN_PROGRESS, "channel processing (legacy code)"),
    "1161": Meaning(Disposition.IN_PROGRESS, "result unknown, must query (legacy code)"),
    # A duplicate of a cancel we already sent: that one may be in flight, so the Enquiry decides.
    "1102": Meaning(Disposition.IN_PROGRESS, "duplicate request: an earlier cancel may be in flight"),
    "2011": Meaning(Disposition.IN_PROGRESS, "duplicate serial: an earlier cancel may be in flight"),
    # Nothing happened at QFPay: retry with backoff.
    "1100": Meaning(Disposition.RETRY_LATER, "system maintenance"),
    "1101": Meaning(Disposition.RETRY_LATER, "reversal error, try later"),
    "1205": Meaning(Disposition.RETRY_LATER, "try later"),
    "1252": Meaning(Disposition.RETRY_LATER, "system error"),
    "1254": Meaning(Disposition.RETRY_LATER, "system error"),
    "1295": Meaning(Disposition.RETRY_LATER, "slow network, try later"),
    "1296": Meaning(Disposition.RETRY_LATER, "bank busy, try later"),
    "1297": Meaning(Disposition.RETRY_LATER, "bank busy, try later"),
    # Signature: may mean rotated credentials.
    "1108": Meaning(Disposition.CREDENTIALS, "signature error"),
    # Never retried.
    "1294": _final(Status.UNKNOWN, "cancel prohibited by bank risk control; a person must look"),
    "1103": _final(Status.REJECTED, "QFPay rejected the request format"),
    "1104": _final(Status.REJECTED, "QFPay rejected a request parameter"),
    "1105": _final(Status.REJECTED, "device not set up at QFPay (configuration)"),
    "1106": _final(Status.REJECTED, "device not set up at QFPay (configuration)"),
    "1107": _final(Status.REJECTED, "merchant not set up at QFPay (configuration)"),
    "1241": _final(Status.REJECTED, "store not set up at QFPay (configuration)"),
    "1242": _final(Status.REJECTED, "store not set up at QFPay (configuration)"),
    "1243": _final(Status.REJECTED, "store not set up at QFPay (configuration)"),
    "1251": _final(Status.REJECTED, "store not set up at QFPay (configuration)"),
    "1266": _final(Status.REJECTED, "wrong amount for this transaction"),
    "1267": _final(Status.REJECTED, "order does not match the transaction"),
    "1268": _final(Status.REJECTED, "order does not exist at QFPay"),
    "1136": _final(Status.REJECTED, "transaction does not exist at QFPay"),
    "1150": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1155": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1265": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1269": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1270": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1271": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    "1272": _final(Status.REJECTED, "refund-only code answered to a cancel"),
    # Final for the customer.
    "1125": _final(Status.NOT_CHARGED, "already refunded"),
    "1262": _final(Status.NOT_CHARGED, "already refunded"),
    "1142": _final(Status.NOT_CHARGED, "order closed"),
    "1263": _final(Status.NOT_CHARGED, "order cancelled"),
    "1264": _final(Status.NOT_CHARGED, "order cancelled"),
    "1181": _final(Status.NOT_CHARGED, "order expired"),
    "1261": _final(Status.NOT_CHARGED, "not paid: the payment did not complete"),
    "1147": _final(Status.NOT_CHARGED, "payment failed: wallet error"),
    "1201": _final(Status.NOT_CHARGED, "payment failed: insufficient balance"),
    "1202": _final(Status.NOT_CHARGED, "payment failed: bank error"),
    "1203": _final(Status.NOT_CHARGED, "payment failed: bank error"),
    "1204": _final(Status.NOT_CHARGED, "payment failed: bank error"),
    "1212": _final(Status.NOT_CHARGED, "payment failed: payment code error"),
    "2005": _final(Status.NOT_CHARGED, "payment failed: payment code error"),
    "1260": _final(Status.REFUND_REQUIRED, "already paid: a reversal cannot undo it, refund instead"),
}

# An answer we cannot read leaves the customer's state unknown: never guess, a person looks.
UNLISTED = _final(Status.UNKNOWN, "respcd not in QFPay's documented table; a person must look")
CLOSE_NOT_SUPPORTED = _final(Status.REJECTED, "cancel is not supported for this transaction (close)")


def meaning_of(respcd: str) -> Meaning:
    return RESPCD_MEANINGS.get(respcd, UNLISTED)


def documented(respcd: str) -> bool:
    """Whether QFPay's table has ``respcd`` (an answer we can read at all)."""
    return respcd in RESPCD_MEANINGS


def meaning_of_cancel_answer(endpoint: Endpoint, respcd: str, own_syssn: str | None) -> Meaning:
    """A reversal or close answer. Close answering 1297, or succeeding without its own syssn,
    means cancel is not supported for that transaction."""
    if endpoint == "close" and (respcd == "1297" or (respcd == "0000" and not own_syssn)):
        return CLOSE_NOT_SUPPORTED
    return meaning_of(respcd)
