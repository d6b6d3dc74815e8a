"""The demo's scenarios: each a sample order from ``events/``, what QFPay's ledger holds for it, and
the outcome a payments team expects. The end-to-end tests run the same list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.local.qfpay_standin import Transaction

EVENTS = Path(__file__).resolve().parents[2] / "events"


@dataclass(frozen=True)
class Scenario:
    name: str
    event_file: str  # under events/
    expected_status: str
    transaction: Transaction | None = None  # None: QFPay never hears of it
    expected_decided_by: str = "cancel-function"
    expected_endpoint: str | None = "reversal"

    def body(self) -> str:
        return (EVENTS / self.event_file).read_text(encoding="utf-8")

    def order(self) -> dict[str, Any]:
        message = json.loads(self.body())
        return dict(message.get("detail", message))


def _txn(event_file: str, **script: Any) -> Transaction:
    order = json.loads((EVENTS / event_file).read_text(encoding="utf-8"))
    order = order.get("detail", order)
    return Transaction(
        syssn=order["syssn"],
        out_trade_no=order["out_trade_no"],
        txamt=int(order["txamt"]),
        txdtm=order["txdtm"],
        pay_type=order["pay_type"],
        txcurrcd=order.get("txcurrcd", "HKD"),
        **script,
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "reversal confirmed (800101)",
        "orders/reversal-confirmed.json",
        "CANCELLED",
        _txn("orders/reversal-confirmed.json", state="unpaid"),
    ),
    Scenario(
        "close (800208)",
        "orders/close-wechat-cpm.json",
        "CANCELLED",
        _txn("orders/close-wechat-cpm.json", state="unpaid"),
        expected_endpoint="close",
    ),
    Scenario(
        "in progress, resolved by the loop",
        "orders/reversal-in-progress.json",
        "CANCELLED",
        _txn("orders/reversal-in-progress.json", state="unpaid", in_progress_enquiries=2),
        expected_decided_by="poll-loop",
    ),
    Scenario(
        "already paid",
        "orders/already-paid.json",
        "REFUND_REQUIRED",
        _txn("orders/already-paid.json", state="paid"),
    ),
    Scenario(
        "invalid message",
        "orders/invalid-amount.json",
        "REJECTED",
        expected_endpoint=None,
    ),
    Scenario(
        "QFPay 500, retried by SQS",
        "orders/qfpay-500-then-success.json",
        "CANCELLED",
        _txn("orders/qfpay-500-then-success.json", state="unpaid", http_500_first=1),
    ),
    Scenario(
        "EventBridge-wrapped order",
        "eventbridge-order-timeout.json",
        "CANCELLED",
        _txn("eventbridge-order-timeout.json", state="unpaid"),
    ),
)
