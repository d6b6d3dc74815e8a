"""The demo's scenarios: each a sample order from ``events/``, what QFPay's ledger holds for it, and
the outcome a payments team expects. The end-to-end tests run the same list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.local.qfpay_standin import Fault, Transaction

EVENTS = Path(__file__).resolve().parents[2] / "events"


@dataclass(frozen=True)
class Scenario:
    name: str
    event_file: str  # under events/
    expected_status: str
    transaction: Transaction | None = None  # None: QFPay never hears of it
    expected_decided_by: str = "cancel-function"
    expected_endpoint: str | None = "reversal"
    copies: int = 1  # >1: the same message is delivered that many times
    after_key_rotation: bool = False  # sent after QFPay and the secret got a new key
    via_caller: bool = False  # sent by the example Step Functions caller, which waits for our answer

    def body(self) -> str:
        return (EVENTS / self.event_file).read_text(encoding="utf-8")

    def order(self) -> dict[str, Any]:
        return order_in(json.loads(self.body()))


def order_in(message: dict[str, Any]) -> dict[str, Any]:
    """The order inside a sample message, read independently of the service's own unwrapping."""
    if "detail-type" in message:
        return dict(message["detail"])
    if message.get("Type") == "Notification":
        return dict(json.loads(message["Message"]))
    return message


def transaction_for(event_file: str, **script: Any) -> Transaction:
    """QFPay's ledger entry for the order in a sample message, with a scripted behaviour."""
    order = order_in(json.loads((EVENTS / event_file).read_text(encoding="utf-8")))
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
        transaction_for("orders/reversal-confirmed.json", state="unpaid"),
    ),
    Scenario(
        "close (800208)",
        "orders/close-wechat-cpm.json",
        "CANCELLED",
        transaction_for("orders/close-wechat-cpm.json", state="unpaid"),
        expected_endpoint="close",
    ),
    Scenario(
        "in progress, resolved by the loop",
        "orders/reversal-in-progress.json",
        "CANCELLED",
        transaction_for("orders/reversal-in-progress.json", state="unpaid", in_progress_enquiries=2),
        expected_decided_by="poll-loop",
    ),
    Scenario(
        "already paid",
        "orders/already-paid.json",
        "REFUND_REQUIRED",
        transaction_for("orders/already-paid.json", state="paid"),
    ),
    Scenario(
        "invalid message",
        "orders/invalid-amount.json",
        "REJECTED",
        expected_endpoint=None,
    ),
    Scenario(
        # A 500 may come after QFPay acted (here it did): never resent; the loop's Enquiry decides.
        "QFPay 500 after reversing, then the loop's Enquiry",
        "orders/qfpay-500-then-success.json",
        "CANCELLED",
        transaction_for(
            "orders/qfpay-500-then-success.json",
            state="unpaid",
            faults=(Fault("applied_then_5xx", ("reversal",), status=500),),
        ),
        expected_decided_by="poll-loop",
    ),
    Scenario(
        "EventBridge-wrapped order",
        "eventbridge-order-timeout.json",
        "CANCELLED",
        transaction_for("eventbridge-order-timeout.json", state="unpaid"),
    ),
    Scenario(
        "SNS-wrapped order",
        "sns-order-timeout.json",
        "CANCELLED",
        transaction_for("sns-order-timeout.json", state="unpaid"),
    ),
    Scenario(
        "close not supported (800008)",
        "orders/close-not-supported.json",
        "REJECTED",
        transaction_for("orders/close-not-supported.json", state="unpaid", close_supported=False),
        expected_endpoint="close",
    ),
    Scenario(
        "duplicate delivery (sent 3 times)",
        "orders/duplicate.json",
        "CANCELLED",
        transaction_for("orders/duplicate.json", state="unpaid"),
        copies=3,
    ),
    Scenario(
        "task-token caller (Step Functions)",
        "orders/task-token-caller.json",
        "CANCELLED",
        transaction_for("orders/task-token-caller.json", state="unpaid"),
        via_caller=True,
    ),
    Scenario(
        "key rotated to SHA256 (1108, re-read)",
        "orders/after-key-rotation.json",
        "CANCELLED",
        transaction_for("orders/after-key-rotation.json", state="unpaid"),
        after_key_rotation=True,
    ),
)
