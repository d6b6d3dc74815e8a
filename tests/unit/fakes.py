"""Test doubles at the QFPay boundary: a scripted client and a settable clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from cancellation.budget import BudgetExhausted
from cancellation.models import Decision
from cancellation.orders import Order
from cancellation.qfpay import QFPayClient

SYSSN = "20261126000101000001"
REVERSAL_SYSSN = "20261126000200020000000001"
OUT_TRADE_NO = "SHOP-2026-0001"
NOW = 1795600000.0
ORDER = Order(
    txamt=1250,
    txdtm="2026-11-26 10:00:00",
    out_trade_no=OUT_TRADE_NO,
    syssn=SYSSN,
    pay_type="800101",
    mchid="MCH1",
    txcurrcd="HKD",
)


def as_dict(decision: Decision) -> dict[str, Any]:
    """A decision read by key, whichever kind it is (tests check the kind themselves)."""
    return cast(dict[str, Any], decision)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeQFPay:
    """Answers each endpoint from its own script, in order: a dict is returned, an exception raised.

    A call with nothing scripted fails the test: it shows a request the decision should not have sent.
    """

    def __init__(
        self,
        *,
        reversal: list[Any] | None = None,
        close: list[Any] | None = None,
        enquiry: list[Any] | None = None,
    ) -> None:
        self.scripts: dict[str, list[Any]] = {
            "reversal": list(reversal or []),
            "close": list(close or []),
            "enquiry": list(enquiry or []),
        }
        self.calls: list[tuple[str, dict[str, str | None], str | None]] = []

    def as_client(self) -> QFPayClient:
        return cast(QFPayClient, self)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def params(self, name: str) -> list[dict[str, str | None]]:
        return [params for called, params, _ in self.calls if called == name]

    def reversal(
        self, params: Mapping[str, str | None], *, before_send: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        return self._answer("reversal", params, None, before_send)

    def close(
        self,
        params: Mapping[str, str | None],
        method: str = "GET",
        *,
        before_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        return self._answer("close", params, method, before_send)

    def enquiry(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        return self._answer("enquiry", params, None)

    def _answer(
        self,
        name: str,
        params: Mapping[str, str | None],
        method: str | None,
        before_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        self.calls.append((name, dict(params), method))
        script = self.scripts[name]
        if not script:
            raise AssertionError(f"unexpected {name} call: {dict(params)}")
        answer = script.pop(0)
        # As the client does: a spent budget refuses before anything leaves; else the request goes.
        if before_send is not None and not isinstance(answer, BudgetExhausted):
            before_send()
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)


def cancel_answer(respcd: str, syssn: str | None = REVERSAL_SYSSN, **changes: Any) -> dict[str, Any]:
    """A /trade/v1/reversal (or close) answer with the fields QFPay sends."""
    answer: dict[str, Any] = {
        "syssn": syssn,
        "orig_syssn": SYSSN,
        "txamt": "1250",
        "txcurrcd": "HKD",
        "txdtm": "2026-11-26 10:00:00",
        "sysdtm": "2026-11-26 10:15:02",
        "chnlsn": "",
        "respcd": respcd,
        "resperr": "success" if respcd == "0000" else f"error {respcd}",
        "respmsg": "",
        "surcharge_fee": 0,
        "surcharge_rate": 0,
        "cardcd": "",
        "chnlsn2": "",
        "udid": "",
    }
    if syssn is None:
        del answer["syssn"]
    answer.update(changes)
    return answer


def payment_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "syssn": SYSSN,
        "out_trade_no": OUT_TRADE_NO,
        "order_type": "payment",
        "pay_type": "800101",
        "txamt": "1250",
        "txcurrcd": "HKD",
        "txdtm": "2026-11-26 10:00:00",
        "sysdtm": "2026-11-26 10:00:01",
        "paydtm": "",
        "respcd": "1143",
        "errmsg": "",
        "cancel": "0",
        "chnlsn": "",
    }
    row.update(changes)
    return row


def enquiry_answer(*rows: Any, respcd: str = "0000") -> dict[str, Any]:
    return {
        "respcd": respcd,
        "resperr": "",
        "respmsg": "",
        "page": "1",
        "page_size": "10",
        "data": list(rows),
    }


def enquiry_shows(**row_changes: Any) -> dict[str, Any]:
    """An Enquiry answer whose only row is the original payment, changed as given."""
    return enquiry_answer(payment_row(**row_changes))
