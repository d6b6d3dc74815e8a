"""The outcome detail: valid against the published JSON Schema, stable id, UTC timestamp."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cancellation.models import OutcomeDetail
from cancellation.orders import InvalidOrder, Order, validate_order
from cancellation.outcomes import (
    CALLER_ERRORS,
    CALLER_SUCCESS_STATUSES,
    QFPayAmount,
    Status,
    build_outcome,
    outcome_id,
    rejected_outcome,
)

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "events" / "schemas" / "payment-cancellation-outcome.schema.json"
)
NOW = 1795600000.25  # 2026-11-25T09:46:40.250Z

ORDER = Order(
    txamt=1250,
    txdtm="2026-11-26 10:00:00",
    out_trade_no="SHOP-2026-0001",
    syssn="20261126000101000001",
    pay_type="800101",
    mchid="MCH1",
    txcurrcd="HKD",
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_valid(validator: Any, detail: Mapping[str, Any]) -> None:
    errors = sorted(validator.iter_errors(detail), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_format_checking_is_really_on(validator):
    """Guard: the date-time format must be checked, or the decided_at assertions below prove nothing."""
    good = build_outcome(
        ORDER.to_dict(), ORDER.identity, Status.CANCELLED, "ok", now=NOW, decided_by="cancel-function"
    )
    assert_valid(validator, good)
    assert not validator.is_valid({**good, "decided_at": "2026-11-26 07:06:40"})
    assert not validator.is_valid({**good, "decided_at": "yesterday"})
    assert not validator.is_valid({**good, "status": "DONE"})
    assert not validator.is_valid({**good, "extra": 1})


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("decided_by", ["cancel-function", "poll-loop"])
def test_build_outcome_validates_for_every_status(validator, status, decided_by):
    detail = build_outcome(
        ORDER.to_dict(),
        ORDER.identity,
        status,
        f"reason for {status}",
        now=NOW,
        decided_by=decided_by,
        endpoint="reversal",
        respcd="0000",
        resperr="success",
        reversal_syssn="20261126000200020000000001",
        attempts=2,
        polls=5,
        resent=True,
    )
    assert_valid(validator, detail)
    assert detail["status"] == status.value
    assert detail["decided_by"] == decided_by
    assert (detail["attempts"], detail["polls"], detail["resent"]) == (2, 5, True)


def test_build_outcome_copies_the_order_fields_and_drops_the_task_token(validator):
    subject = {
        **ORDER.to_dict(),
        "task_token": "secret-token",
        "udid": "pos-1",
        "txdtm": "2026-11-26 10:00:00",
    }
    detail = build_outcome(
        subject,
        ORDER.identity,
        Status.CANCELLED,
        "done",
        now=NOW,
        decided_by="poll-loop",
        amount=QFPayAmount(1250, "HKD"),
    )
    assert_valid(validator, detail)
    fields = ("out_trade_no", "syssn", "mchid", "pay_type", "message_txamt", "message_txcurrcd")
    assert {k: dict(detail)[k] for k in fields} == {
        "out_trade_no": "SHOP-2026-0001",
        "syssn": "20261126000101000001",
        "mchid": "MCH1",
        "pay_type": "800101",
        "message_txamt": 1250,
        "message_txcurrcd": "HKD",
    }
    # The amounts published as the payment's are QFPay's, never the message's.
    assert (detail["txamt"], detail["txcurrcd"]) == (1250, "HKD")
    claimed = build_outcome(
        {**subject, "txamt": 99_999_999, "txcurrcd": "USD"},
        ORDER.identity,
        Status.REFUND_REQUIRED,
        "r",
        now=NOW,
        decided_by="poll-loop",
        amount=QFPayAmount(1250, "HKD"),
    )
    assert (claimed["txamt"], claimed["txcurrcd"]) == (1250, "HKD")
    assert (claimed["message_txamt"], claimed["message_txcurrcd"]) == (99_999_999, "USD")
    no_row = build_outcome(subject, ORDER.identity, Status.UNKNOWN, "r", now=NOW, decided_by="poll-loop")
    assert (no_row["txamt"], no_row["txcurrcd"], no_row["message_txamt"]) == (None, None, 1250)
    assert "secret-token" not in json.dumps(detail)


def test_build_outcome_defaults(validator):
    minimal = Order(txamt=1, txdtm="2026-11-26 10:00:00", syssn="S1")
    detail = build_outcome(
        minimal.to_dict(), minimal.identity, Status.UNKNOWN, "r", now=NOW, decided_by="poll-loop"
    )
    assert_valid(validator, detail)
    assert detail["endpoint"] is None
    assert detail["respcd"] is None
    assert detail["resperr"] is None
    assert detail["reversal_syssn"] is None
    assert (detail["attempts"], detail["polls"], detail["resent"]) == (0, 0, False)
    assert (detail["out_trade_no"], detail["mchid"], detail["pay_type"], detail["txcurrcd"]) == (None,) * 4


def test_empty_reversal_syssn_becomes_null():
    detail = build_outcome({}, "|x", Status.UNKNOWN, "r", now=NOW, decided_by="poll-loop", reversal_syssn="")
    assert detail["reversal_syssn"] is None


def test_outcome_detail_is_json_serializable():
    detail = build_outcome(
        ORDER.to_dict(), ORDER.identity, Status.CANCELLED, "ok", now=NOW, decided_by="poll-loop"
    )
    assert json.loads(json.dumps(detail)) == detail
    assert isinstance(detail["status"], str)


# --- rejected ----------------------------------------------------------------------------------


def rejected_from(data: Any, message_id: str = "msg-1") -> OutcomeDetail:
    with pytest.raises(InvalidOrder) as caught:
        validate_order(data)
    ids = caught.value.identifiers
    return rejected_outcome(
        caught.value.reason,
        now=NOW,
        out_trade_no=ids.get("out_trade_no"),
        syssn=ids.get("syssn"),
        mchid=ids.get("mchid"),
        message_id=message_id,
    )


@pytest.mark.parametrize(
    "data",
    [
        {"out_trade_no": "SHOP-1", "txamt": 0, "txdtm": "2026-11-26 10:00:00"},
        {"syssn": "20261126000101000001", "txamt": "12.5", "txdtm": "2026-11-26 10:00:00", "mchid": "M1"},
        {"out_trade_no": "A&B", "syssn": "bad syssn", "txamt": 1, "txdtm": "2026-02-30 00:00:00"},
        {"txamt": 1, "txdtm": "2026-11-26 10:00:00"},
        ["not", "an", "object"],
    ],
)
def test_rejected_outcome_validates(validator, data):
    detail = rejected_from(data)
    assert_valid(validator, detail)
    assert detail["status"] == "REJECTED"
    assert detail["decided_by"] == "cancel-function"
    assert detail["reason"]
    assert (detail["attempts"], detail["polls"], detail["endpoint"]) == (0, 0, None)


def test_rejected_outcome_keeps_only_validated_identifiers():
    detail = rejected_from(
        {
            "out_trade_no": "SHOP-1",
            "syssn": "bad&",
            "mchid": "M1",
            "txamt": -1,
            "txdtm": "2026-11-26 10:00:00",
            "txcurrcd": "HKD",
        }
    )
    assert (detail["out_trade_no"], detail["syssn"], detail["mchid"]) == ("SHOP-1", None, "M1")
    assert detail["txamt"] is None
    assert detail["txcurrcd"] is None
    assert (
        detail["reason"]
        == "syssn must be 1-64 letters or digits; txamt must be between 1 and 1000000000000 cents"
    )


def test_rejected_outcome_id_is_per_message_and_apart_from_the_order():
    """Each invalid message gets its own rejection (a redelivery of it keeps its id), and it never
    shares the order's id: consumers dropping repeats must not drop a later valid cancellation."""
    one = rejected_outcome(
        "bad", now=NOW, out_trade_no=ORDER.out_trade_no, mchid=ORDER.mchid, message_id="m-1"
    )
    again = rejected_outcome(
        "bad", now=NOW + 1, out_trade_no=ORDER.out_trade_no, mchid=ORDER.mchid, message_id="m-1"
    )
    other = rejected_outcome(
        "worse", now=NOW, out_trade_no=ORDER.out_trade_no, mchid=ORDER.mchid, message_id="m-2"
    )
    assert one["outcome_id"] == again["outcome_id"] != other["outcome_id"]
    assert one["outcome_id"] != outcome_id(ORDER.identity)
    assert one["out_trade_no"] == ORDER.out_trade_no


def test_rejected_outcome_without_identifiers_is_keyed_by_message():
    a = rejected_outcome("bad", now=NOW, message_id="m-1")
    b = rejected_outcome("bad", now=NOW, message_id="m-2")
    assert a["outcome_id"] != b["outcome_id"]
    assert a["outcome_id"] == rejected_outcome("other reason", now=NOW + 5, message_id="m-1")["outcome_id"]


# --- outcome_id and decided_at -----------------------------------------------------------------


def detail_for(order: Order, status: Status = Status.CANCELLED, now: float = NOW) -> OutcomeDetail:
    return build_outcome(order.to_dict(), order.identity, status, "r", now=now, decided_by="cancel-function")


def test_outcome_id_is_stable_for_one_order():
    again = validate_order({**ORDER.to_dict(), "txamt": "1250", "task_token": "t"})
    ids = {
        detail_for(ORDER)["outcome_id"],
        detail_for(again, Status.UNKNOWN, NOW + 600)["outcome_id"],
        outcome_id(ORDER.identity),
    }
    assert len(ids) == 1
    assert ids.pop() == outcome_id("syssn=20261126000101000001")


def test_outcome_id_differs_across_orders_and_merchants():
    orders = [
        ORDER,
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no="SHOP-2026-0002", mchid="MCH1"),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no="SHOP-2026-0001", mchid="MCH2"),
        Order(txamt=1250, txdtm=ORDER.txdtm, out_trade_no="SHOP-2026-0001"),
        Order(txamt=1250, txdtm=ORDER.txdtm, syssn="20261126000101000002", mchid="MCH1"),
    ]
    assert len({detail_for(o)["outcome_id"] for o in orders}) == len(orders)


def test_outcome_id_is_32_lowercase_hex():
    value = outcome_id("MCH1|SHOP-2026-0001")
    assert len(value) == 32
    assert set(value) <= set("0123456789abcdef")
    assert value == outcome_id("MCH1|SHOP-2026-0001")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW, "2026-11-25T09:46:40.250Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1798761599.999, "2026-12-31T23:59:59.999Z"),
    ],
)
def test_decided_at_is_iso8601_utc(now, expected):
    decided_at = detail_for(ORDER, now=now)["decided_at"]
    assert decided_at == expected
    parsed = datetime.fromisoformat(decided_at)
    offset = parsed.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert abs(parsed.timestamp() - now) < 0.001


def test_caller_answers_cover_every_status():
    assert set(CALLER_SUCCESS_STATUSES) | set(CALLER_ERRORS) == set(Status)
    assert not set(CALLER_SUCCESS_STATUSES) & set(CALLER_ERRORS)
    assert CALLER_ERRORS == {Status.REJECTED: "Cancellation.Rejected", Status.UNKNOWN: "Cancellation.Unknown"}
