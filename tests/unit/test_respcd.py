"""Every respcd of QFPay's documented table, and what a cancellation does with it.

The expectations below are written from QFPay's table (the project's docs/qfpay.md), not copied
from the code's table: a disposition (what the caller does
next) and, for final answers, the status the customer's order ends in.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cancellation.outcomes import Status
from cancellation.respcd import RESPCD_MEANINGS, Disposition, meaning_of, meaning_of_cancel_answer

DONE = (Disposition.DONE, None)
IN_PROGRESS = (Disposition.IN_PROGRESS, None)
RETRY = (Disposition.RETRY_LATER, None)
CREDENTIALS = (Disposition.CREDENTIALS, None)
NOT_CHARGED = (Disposition.FINAL, Status.NOT_CHARGED)
REFUND_REQUIRED = (Disposition.FINAL, Status.REFUND_REQUIRED)
REJECTED = (Disposition.FINAL, Status.REJECTED)
UNKNOWN = (Disposition.FINAL, Status.UNKNOWN)

EXPECTED: dict[str, tuple[Disposition, Status | None]] = {
    # success: done, but a reversal is confirmed with the Enquiry
    "0000": DONE,
    # unpaid / processing: poll the Enquiry with a delay, never resend at once
    "1143": IN_PROGRESS,
    "1145": IN_PROGRESS,
    # slow network, if already paid do not repeat: treat as processing
    "1298": IN_PROGRESS,
    # legacy "channel processing" and "result unknown, must query": treat as processing
    "2999": IN_PROGRESS,
    "1161": IN_PROGRESS,
    # maintenance, reversal error, try later, system error, slow network, bank busy: retry with backoff
    "1100": RETRY,
    "1101": RETRY,
    "1205": RETRY,
    "1252": RETRY,
    "1254": RETRY,
    "1295": RETRY,
    "1296": RETRY,
    "1297": RETRY,  # on a reversal; close answering 1297 is "not supported" (tested below)
    # prohibited by bank risk control: do not retry; nobody knows what the customer sees -> a person looks
    "1294": UNKNOWN,
    # "fix the request". For a *cancel*, a duplicate request/serial means an earlier cancel of ours reached
    # QFPay and may be in flight: rejecting would misreport a cancel that may have worked, so the Enquiry
    # decides. Format and parameter errors are rejected; a signature error may be rotated credentials.
    "1102": IN_PROGRESS,
    "2011": IN_PROGRESS,
    "1103": REJECTED,
    "1104": REJECTED,
    "1108": CREDENTIALS,
    # device or store not set up: configuration
    "1105": REJECTED,
    "1106": REJECTED,
    "1107": REJECTED,
    "1241": REJECTED,
    "1242": REJECTED,
    "1243": REJECTED,
    "1251": REJECTED,
    # already refunded / closed / cancelled / expired: final, the customer is not charged
    "1125": NOT_CHARGED,
    "1262": NOT_CHARGED,
    "1142": NOT_CHARGED,
    "1263": NOT_CHARGED,
    "1264": NOT_CHARGED,
    "1181": NOT_CHARGED,
    # already paid: a reversal cannot undo it, a refund is needed
    "1260": REFUND_REQUIRED,
    # not paid: the payment did not complete
    "1261": NOT_CHARGED,
    # wrong amount, order mismatch, order does not exist: final for this request
    "1266": REJECTED,
    "1267": REJECTED,
    "1268": REJECTED,
    "1136": REJECTED,
    # wallet, balance, bank, payment-code errors: the payment failed
    "1147": NOT_CHARGED,
    "1201": NOT_CHARGED,
    "1202": NOT_CHARGED,
    "1203": NOT_CHARGED,
    "1204": NOT_CHARGED,
    "1212": NOT_CHARGED,
    "2005": NOT_CHARGED,
    # refund limits: refunds only; answered to a cancel, the request was wrong
    "1150": REJECTED,
    "1155": REJECTED,
    "1265": REJECTED,
    "1269": REJECTED,
    "1270": REJECTED,
    "1271": REJECTED,
    "1272": REJECTED,
}

QFPAY_FACTS = Path(__file__).resolve().parents[2] / "docs" / "qfpay.md"


@pytest.mark.parametrize(("respcd", "expected"), sorted(EXPECTED.items()), ids=sorted(EXPECTED))
def test_documented_respcd(respcd, expected):
    meaning = meaning_of(respcd)
    assert (meaning.disposition, meaning.status) == expected
    assert meaning.text.strip()
    # Documented codes are in the table itself, not answered by the "unlisted" fallback.
    assert respcd in RESPCD_MEANINGS


@pytest.mark.parametrize("respcd", sorted(EXPECTED))
def test_reversal_answer_means_the_same_as_the_table(respcd):
    meaning = meaning_of_cancel_answer("reversal", respcd, None)
    assert (meaning.disposition, meaning.status) == EXPECTED[respcd]


def test_code_table_holds_nothing_undocumented():
    assert set(RESPCD_MEANINGS) == set(EXPECTED)


def test_every_code_of_the_digest_is_covered():
    """The respcd table of docs/qfpay.md, ranges expanded, is exactly what EXPECTED covers."""
    text = QFPAY_FACTS.read_text(encoding="utf-8")
    table = text.split("## Response codes", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("| ") or line.startswith("| code"):
            continue
        first_cell = line.split("|")[1]
        for low, high in re.findall(r"(\d{4})\s*[\u2013-]\s*(\d{4})", first_cell):
            codes.update(f"{n:04d}" for n in range(int(low), int(high) + 1))
        codes.update(re.findall(r"\b\d{4}\b", first_cell))
    assert len(codes) > 50
    assert codes == set(EXPECTED)


@pytest.mark.parametrize(
    "respcd", ["9999", "1144", "0001", "00000", "000", " 0000", "0000 ", "", "OK", "SUCCESS"]
)
def test_unknown_codes_are_final_unknown(respcd):
    meaning = meaning_of(respcd)
    assert (meaning.disposition, meaning.status) == UNKNOWN
    assert "person" in meaning.text


@pytest.mark.parametrize("endpoint", ["reversal", "close"])
def test_unknown_code_on_a_cancel_answer_is_unknown(endpoint):
    meaning = meaning_of_cancel_answer(endpoint, "7777", "20261126000200020000000001")
    assert (meaning.disposition, meaning.status) == UNKNOWN


@pytest.mark.parametrize("own_syssn", [None, "", "20261126000200020000000001"])
def test_close_answering_1297_is_not_supported(own_syssn):
    meaning = meaning_of_cancel_answer("close", "1297", own_syssn)
    assert (meaning.disposition, meaning.status) == REJECTED
    assert "not supported" in meaning.text


@pytest.mark.parametrize("own_syssn", [None, ""])
def test_close_succeeding_without_its_own_syssn_is_not_supported(own_syssn):
    meaning = meaning_of_cancel_answer("close", "0000", own_syssn)
    assert (meaning.disposition, meaning.status) == REJECTED
    assert "not supported" in meaning.text


def test_close_succeeding_with_its_own_syssn_is_done():
    meaning = meaning_of_cancel_answer("close", "0000", "20261126000200020000000001")
    assert (meaning.disposition, meaning.status) == DONE


@pytest.mark.parametrize("respcd", ["1143", "1145", "1260", "1294", "1100"])
def test_close_other_codes_mean_what_the_table_says(respcd):
    meaning = meaning_of_cancel_answer("close", respcd, None)
    assert (meaning.disposition, meaning.status) == EXPECTED[respcd]


def test_reversal_1297_is_retried_later():
    meaning = meaning_of_cancel_answer("reversal", "1297", None)
    assert (meaning.disposition, meaning.status) == RETRY


def test_reversal_0000_without_own_syssn_is_still_done():
    """Only close uses the missing syssn as "not supported"; a reversal's 0000 goes to the Enquiry."""
    assert meaning_of_cancel_answer("reversal", "0000", None).disposition is Disposition.DONE


def test_only_final_meanings_carry_a_status():
    for respcd, meaning in RESPCD_MEANINGS.items():
        assert (meaning.status is not None) == (meaning.disposition is Disposition.FINAL), respcd
