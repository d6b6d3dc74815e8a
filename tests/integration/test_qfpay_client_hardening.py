"""The QFPay client's own defences, against the stand-in over real HTTP: answers whose signature
is missing when verification is on, and credentials that cannot travel in a header."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import pytest
from cancellation.qfpay import (
    ENQUIRY_PATH,
    Credentials,
    QFPayAmbiguous,
    QFPayClient,
    QFPayUnavailable,
    ResponseSignatureInvalid,
    new_pool,
)

from tests.local.qfpay_standin import Merchant, QFPayStandIn, Transaction

MERCHANT = Merchant(app_code="HARDENAPPCODE001", client_key="HARDENCLIENTKEY0000000000000001")
CREDENTIALS = Credentials(MERCHANT.app_code, MERCHANT.client_key)
TXN = Transaction(
    syssn="20261126000101000777",
    out_trade_no="HARDEN-1",
    txamt=100,
    txdtm="2026-11-26 10:00:00",
    pay_type="800101",
)
REVERSAL = {"syssn": TXN.syssn, "txamt": "100", "txdtm": TXN.txdtm}


@pytest.fixture
def standin() -> Iterator[QFPayStandIn]:
    with QFPayStandIn([MERCHANT], transactions=[TXN]) as running:
        yield running


def client(standin: QFPayStandIn, *, verify: bool) -> QFPayClient:
    return QFPayClient(
        standin.base_url, lambda force: CREDENTIALS, http=new_pool(), verify_response_signature=verify
    )


def test_a_signed_answer_is_read_when_verification_is_on(standin: QFPayStandIn) -> None:
    answer = client(standin, verify=True).enquiry({"syssn": TXN.syssn})
    assert answer["respcd"] == "0000"
    assert [row["syssn"] for row in answer["data"]] == [TXN.syssn]


def test_an_unsigned_answer_is_refused_when_verification_is_on(standin: QFPayStandIn) -> None:
    standin.sign_answers = False
    with pytest.raises(ResponseSignatureInvalid, match="no X-QF-SIGN") as caught:
        client(standin, verify=True).call("POST", ENQUIRY_PATH, {"syssn": TXN.syssn})
    assert ENQUIRY_PATH in str(caught.value)


def test_an_unreadable_answer_to_a_cancel_may_still_have_reached_qfpay(standin: QFPayStandIn) -> None:
    """The reversal took effect; only its answer cannot be trusted: never a 'not sent'."""
    standin.sign_answers = False
    with pytest.raises(QFPayAmbiguous):
        client(standin, verify=True).reversal(REVERSAL)
    assert standin.cancellations_applied(TXN.syssn) == 1
    # The Enquiry is read-only: an answer it cannot trust is as good as none.
    with pytest.raises(QFPayUnavailable):
        client(standin, verify=True).enquiry({"syssn": TXN.syssn})


def test_unsigned_answers_are_read_when_verification_is_off(standin: QFPayStandIn) -> None:
    """QFPay's editions disagree on the response signature; off (the default) reads every answer."""
    standin.sign_answers = False
    assert client(standin, verify=False).enquiry({"syssn": TXN.syssn})["respcd"] == "0000"


@pytest.mark.parametrize("app_code", ["LEAKY\r\nX-Evil: 1", "LEAKY\nAPPCODE", "LEAKY\rAPPCODE", "LEAKY APP"])
def test_an_app_code_that_cannot_be_a_header_is_refused_without_its_value(app_code: str) -> None:
    for make in (
        lambda: Credentials.from_secret({"app_code": app_code, "client_key": MERCHANT.client_key}),
        lambda: Credentials(app_code, MERCHANT.client_key),
    ):
        with pytest.raises(ValueError, match="app_code") as caught:
            make()
        text = "".join(traceback.format_exception(caught.value)) + repr(caught.value.args)
        assert "LEAKY" not in text, text
