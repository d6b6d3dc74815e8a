"""What an HTTP answer that is not 200 tells us about a cancel: only a few prove that nothing
happened at QFPay. Everything else (a gateway's 502/504, any status QFPay does not document) may
have come after QFPay acted, so it is "no answer", never "not sent"."""

from __future__ import annotations

from typing import Any, cast

import pytest
import urllib3
from cancellation.qfpay import Credentials, QFPayAmbiguous, QFPayClient, QFPayUnavailable

from tests.canned_http import CannedPool

PARAMS = {"syssn": "20261126000101000001", "txamt": "100", "txdtm": "2026-11-26 10:00:00"}


def client(pool: CannedPool) -> QFPayClient:
    return QFPayClient(
        "https://qfpay.invalid",
        lambda _force: Credentials(app_code="APP", client_key="KEY"),
        http=cast(urllib3.PoolManager, pool),
    )


def cancel(kind: str, qfpay: QFPayClient) -> dict[str, Any]:
    return qfpay.reversal(PARAMS) if kind == "reversal" else qfpay.close(PARAMS, "GET")


@pytest.mark.parametrize("kind", ["reversal", "close"])
@pytest.mark.parametrize("status", [500, 502, 503, 504, 404, 405, 302, 418])
def test_a_cancel_answered_with_an_error_status_may_have_taken_effect(kind, status):
    pool = CannedPool(body=b"Bad Gateway", status=status)
    with pytest.raises(QFPayAmbiguous, match=f"HTTP {status}"):
        cancel(kind, client(pool))
    assert len(pool.sent) == 1  # never retried by the client itself


@pytest.mark.parametrize("kind", ["reversal", "close"])
def test_a_cancel_answered_429_was_refused_before_anything_happened(kind):
    with pytest.raises(QFPayUnavailable) as refused:
        cancel(kind, client(CannedPool(body=b"Too Many Requests", status=429)))
    assert refused.value.http_status == 429


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 404])
def test_an_enquiry_answered_with_an_error_status_is_simply_unavailable(status):
    """The Enquiry changes nothing at QFPay: whatever its failure, the loop asks again later."""
    with pytest.raises(QFPayUnavailable, match=f"HTTP {status}"):
        client(CannedPool(body=b"error", status=status)).enquiry({"syssn": PARAMS["syssn"]})
