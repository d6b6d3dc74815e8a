"""Hostile order-timeout messages, at the handler level.

The real cancel handler runs in-process (moto + the local Lambda runtime) and is invoked through
``lambda.invoke`` with hand-built SQS events (records shaped as ``tests.local.sqs_delivery`` builds
them): batches of ``[valid, hostile..., valid]``. The hostile messages are wrong types, missing
fields, empty and huge strings, unicode and control characters, nested junk, impossible dates,
zero/negative/huge amounts and values carrying ``&`` or ``=`` (which would inject parameters into
QFPay's signing string), inside every envelope the service accepts (raw, EventBridge ``detail``,
SNS ``Message``, SNS wrapping EventBridge), plus bodies that are not an order at all.

Every hostile message must end in one ``REJECTED`` outcome whose reason names what is wrong (the
field, or the body/envelope), never raise out of the handler, never be retried (absent from
``batchItemFailures``) and never reach QFPay; its valid neighbours are cancelled as usual.

Whether a value is acceptable is decided here from the contract (``docs/contracts.md`` and the
patterns it implies), not by calling ``cancellation.orders``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PipelineFactory
from tests.envelopes import eventbridge, sns
from tests.local import lambda_runtime
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Transaction
from tests.local.sqs_delivery import build_record

# --------------------------------------------------------------------------- the contract, restated

CURRENCIES = frozenset(
    {"AED", "AUD", "CAD", "CNY", "EUR", "HKD", "IDR", "JPY", "MMK", "MYR", "SGD", "THB", "USD"}
)
MAX_BODY_BYTES = 256 * 1024
MAX_TXAMT = 10**12
_ALNUM = string.ascii_letters + string.digits
_TEXT_RULES: dict[str, tuple[frozenset[str], int]] = {
    "out_trade_no": (frozenset(_ALNUM + "_-.:|/"), 128),
    "syssn": (frozenset(_ALNUM), 64),
    "mchid": (frozenset(_ALNUM + "_-"), 64),
    "udid": (frozenset(_ALNUM + "_-.:"), 64),
}
ORDER_FIELDS = (
    "out_trade_no",
    "syssn",
    "txamt",
    "txdtm",
    "pay_type",
    "mchid",
    "udid",
    "txcurrcd",
    "task_token",
)
# Keys that would make a message look like an envelope: never used as "unknown" extra fields.
ENVELOPE_KEYS = ("detail", "detail-type", "source", "Type", "TopicArn", "Message")
RESERVED_KEYS = frozenset(ORDER_FIELDS + ENVELOPE_KEYS)
_TXDTM_SHAPE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
VALID_TXDTM = "2026-11-26 10:00:00"


def acceptable(name: str, value: Any) -> bool:
    """Would the contract accept ``value`` for field ``name``? (Written apart from the layer.)"""
    if name in _TEXT_RULES:
        chars, limit = _TEXT_RULES[name]
        return isinstance(value, str) and 1 <= len(value) <= limit and set(value) <= chars
    if name == "pay_type":
        return isinstance(value, str) and len(value) == 6 and set(value) <= set(string.digits)
    if name == "txamt":
        if isinstance(value, str):
            if not (1 <= len(value) <= 13 and set(value) <= set(string.digits)):
                return False
            value = int(value)
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TXAMT
    if name == "txdtm":
        match = _TXDTM_SHAPE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            return False
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        try:
            datetime(year, month, day, hour, minute, second)
        except ValueError:
            return False
        return True
    if name == "txcurrcd":
        return isinstance(value, str) and value in CURRENCIES
    if name == "task_token":
        return (
            isinstance(value, str) and 1 <= len(value) <= 2048 and all(0x21 <= ord(c) <= 0x7E for c in value)
        )
    raise AssertionError(f"not an order field: {name}")


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise AssertionError(f"not a JSON value: {type(value).__name__}")


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


# --------------------------------------------------------------------------- envelopes

ENVELOPES = ("raw", "eventbridge", "sns", "sns+eventbridge")


def dumps(value: Any, ascii_only: bool = True) -> str:
    # A body SQS can carry: raw unicode only when there is no lone surrogate (JSON escapes are fine).
    text = json.dumps(value, ensure_ascii=ascii_only)
    if not ascii_only and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        text = json.dumps(value)
    return text


def wrap(order: Any, envelope: str, ascii_only: bool = True) -> str:
    """The SQS body carrying ``order`` in ``envelope``."""
    if envelope == "raw":
        return dumps(order, ascii_only)
    if envelope == "eventbridge":
        return dumps(eventbridge(order), ascii_only)
    if envelope == "sns":
        return dumps(sns(dumps(order, ascii_only)), ascii_only)
    if envelope == "sns+eventbridge":
        return dumps(sns(dumps(eventbridge(order), ascii_only)), ascii_only)
    raise AssertionError(envelope)


def body_bytes(body: str) -> int:
    return len(body.encode("utf-8", errors="surrogatepass"))


# --------------------------------------------------------------------------- strategies

# JSON junk: every JSON type, shallow and (moderately) deep nesting.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()  # NaN and Infinity too: Python's json reads them
    | st.text(max_size=30)
)
json_junk = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
deep_junk = st.integers(1, 150).map(lambda depth: json.loads("[" * depth + "]" * depth))
junk = json_junk | deep_junk

INJECTIONS = (
    "&",
    "=",
    "A&B",
    "A=B",
    "X-1&txamt=1",
    "1&syssn=20261126000101000001",
    "A&client_key=",
    "A=B&C=D",
    "%26txamt%3D1",
    "A+B",
    "A;B",
    "A\r\nX-QF-SIGN: 0",
    "A\x00B",
    "\u202eA",  # right-to-left override
    "\ufeffA",  # BOM
    "\uff21\uff22",  # full-width letters
    "\u0661\u0662",  # Arabic-Indic digits
    "订单1",
    "😀",
    "",
    " ",
    "\ud800",  # a lone surrogate (JSON-escaped in the body)
)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(
        alphabet=st.sampled_from(list("Ab9_-.:|/&=% \t\n\r\x00\x1f\x7f\u00a0\u2028\u202e\ufeffé订😀")),
        max_size=24,
    ),
    st.sampled_from(INJECTIONS),
    st.builds(
        lambda char, size: char * size, st.sampled_from("A9&é"), st.sampled_from([65, 129, 2049, 20_000])
    ),
)
huge_ints = st.integers(MAX_TXAMT + 1, 10**4000)  # Python reads up to 4300 digits; see the xfail below
bad_txamt = st.one_of(
    st.integers(max_value=0),
    st.integers(MAX_TXAMT + 1, 10**40),
    huge_ints,
    st.floats(),
    st.from_regex(r"-?[0-9]{0,20}([.,e][0-9]{0,3})?", fullmatch=True),
    st.sampled_from(
        ["0", "00", "-5", " 12", "12 ", "1e3", "0x10", "\uff11\uff12", "١٢", "100&txamt=1", "1=1", "9" * 14]
    ),
)
bad_txdtm = st.one_of(
    st.datetimes().flatmap(
        lambda moment: st.sampled_from(
            [
                moment.isoformat(),
                moment.strftime("%Y/%m/%d %H:%M:%S"),
                moment.strftime("%Y-%m-%d %H:%M"),
                moment.strftime("%Y-%m-%d"),
                moment.strftime("%Y-%m-%d %H:%M:%S") + "Z",
                moment.strftime("%Y-%m-%d %H:%M:%S") + "&txamt=1",
                " " + moment.strftime("%Y-%m-%d %H:%M:%S"),
            ]
        )
    ),
    # The right shape, mostly impossible values (month 13, Feb 30, hour 24, second 60...).
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}", fullmatch=True),
    st.sampled_from(
        [
            "2026-02-29 10:00:00",
            "2026-11-26 10:00:60",
            "0000-01-01 00:00:00",
            "\uff12\uff10\uff12\uff16-11-26 10:00:00",
        ]
    ),
    st.integers(0, 2**40),  # an epoch
)
bad_pay_type = st.one_of(
    st.from_regex(r"[0-9]{0,12}", fullmatch=True),
    st.sampled_from(["800101&", "\uff18\uff10\uff10\uff11\uff10\uff11", "80010 ", "800101\n"]),
)
bad_currency = st.sampled_from(["hkd", "GBP", "HKD&", "HKD ", "\uff28\uff2b\uff24", "", "H=D"]) | st.text(
    max_size=5
)
bad_task_token = st.sampled_from(["", "a b", "tok\n", "a" * 2049, "tokén", "tok\x00"]) | st.text(max_size=12)
FIELD_SPECIFIC: dict[str, st.SearchStrategy[Any]] = {
    "txamt": bad_txamt,
    "txdtm": bad_txdtm,
    "pay_type": bad_pay_type,
    "txcurrcd": bad_currency,
    "task_token": bad_task_token,
}
# null means "absent" for the optional fields, so it is only hostile for the required ones.
NULLABLE_REQUIRED = ("txamt", "txdtm")


def bad_value(name: str) -> st.SearchStrategy[Any]:
    candidates = st.one_of(junk, hostile_text, FIELD_SPECIFIC.get(name, hostile_text))
    return candidates.filter(
        lambda value: not acceptable(name, value) and (value is not None or name in NULLABLE_REQUIRED)
    )


MISSING = "<missing>"  # a field left out altogether
IDS_MISSING = "<ids missing>"  # both out_trade_no and syssn left out


@dataclass
class FieldMutation:
    """A valid order with one field made hostile (or removed)."""

    name: str  # a field of ORDER_FIELDS, or IDS_MISSING
    value: Any = MISSING


@dataclass
class BodyJunk:
    """A body that is not an order at all; ``reason`` is the whole reason expected."""

    body: str
    reason: str


def field_mutations() -> st.SearchStrategy[FieldMutation]:
    changed = st.sampled_from(ORDER_FIELDS).flatmap(
        lambda name: bad_value(name).map(lambda value: FieldMutation(name, value))
    )
    removed = st.sampled_from([FieldMutation("txamt"), FieldMutation("txdtm"), FieldMutation(IDS_MISSING)])
    return changed | removed


not_json_text = st.text(
    # Characters SQS accepts in a body: tab, newline, carriage return, and from space up (no surrogates).
    alphabet=st.characters(exclude_categories=["Cs"], min_codepoint=0x20) | st.sampled_from("\t\n\r"),
    max_size=40,
).filter(lambda text: not is_json(text))
non_object = junk.filter(lambda value: not isinstance(value, dict))


def _not_an_object(value: Any) -> str:
    return f"order must be a JSON object, got {json_kind(value)}"


def oversize(pad: str) -> int:
    """How many ``pad`` characters take a body over the limit, by themselves."""
    return MAX_BODY_BYTES // len(pad.encode("utf-8")) + 1


body_junk = st.one_of(
    not_json_text.map(lambda text: BodyJunk(text, "message body is not valid JSON")),
    st.sampled_from(['{"out_trade_no": "A",', "{'txamt': 1}", "\ufeff{}"]).map(
        lambda text: BodyJunk(text, "message body is not valid JSON")
    ),
    # Deeper than the parser reads: said as such (whether or not the rest would have been valid).
    st.just(
        BodyJunk("[" * 100_000, "message body nests JSON deeper than this service reads (about 900 levels)")
    ),
    non_object.map(lambda value: BodyJunk(json.dumps(value), _not_an_object(value))),
    non_object.map(lambda value: BodyJunk(json.dumps(eventbridge(value)), _not_an_object(value))),
    non_object.map(lambda value: BodyJunk(json.dumps(sns(json.dumps(value))), _not_an_object(value))),
    junk.filter(lambda value: not isinstance(value, str)).map(
        lambda value: BodyJunk(json.dumps(sns(value)), "SNS envelope: Message must be a string")
    ),
    not_json_text.map(lambda text: BodyJunk(json.dumps(sns(text)), "SNS envelope Message is not valid JSON")),
    # Over the SQS size limit, in bytes (a valid order, padded with multi-byte characters).
    st.sampled_from(["é", "x", "订"]).map(
        lambda pad: BodyJunk(
            json.dumps(
                {"out_trade_no": "BIG-1", "txamt": 1, "txdtm": VALID_TXDTM, "note": pad * oversize(pad)},
                ensure_ascii=False,
            ),
            "message body is larger than 256 KiB",
        )
    ),
)
# Unknown fields, which the contract says are ignored: on valid neighbours they must change nothing.
extra_fields = st.dictionaries(
    st.text(max_size=12).filter(lambda key: key not in RESERVED_KEYS),
    json_junk | st.sampled_from(INJECTIONS) | deep_junk,
    max_size=3,
)


@dataclass
class NeighbourShape:
    envelope: str
    txamt_as_text: bool
    extras: dict[str, Any] = field(default_factory=dict)
    ascii_only: bool = True


neighbour_shapes = st.builds(
    NeighbourShape,
    envelope=st.sampled_from(ENVELOPES),
    txamt_as_text=st.booleans(),
    extras=extra_fields,
    ascii_only=st.booleans(),
)

# --------------------------------------------------------------------------- running a batch

_serial = itertools.count(1)


@dataclass
class Expected:
    """What one hostile message must end in."""

    body: str
    tags: tuple[str, ...]  # identifiers of this message only: QFPay must never see them
    key: tuple[str, str] | None  # ("out_trade_no" | "syssn", value) on the outcome; None: no id
    reason: str | None = None  # the exact reason, when it can be told exactly
    field: str | None = None  # otherwise: the field the reason must name first
    kind: str | None = None  # ...and, for a wrong type, the JSON type it must report


def unique_ids() -> tuple[str, str]:
    serial = next(_serial)
    return f"HX-{uuid.uuid4().hex[:10]}-{serial}", f"7{serial:09d}{uuid.uuid4().int % 10**10:010d}"


def hostile_message(mutation: FieldMutation | BodyJunk, envelope: str, extras: dict[str, Any]) -> Expected:
    if isinstance(mutation, BodyJunk):
        return Expected(mutation.body, (), None, reason=mutation.reason)
    out_trade_no, syssn = unique_ids()
    order: dict[str, Any] = {
        "out_trade_no": out_trade_no,
        "syssn": syssn,
        "txamt": 1250,
        "txdtm": VALID_TXDTM,
        "pay_type": "800101",
        "txcurrcd": "HKD",
        "udid": "pos-1",
        **extras,
    }
    name, value = mutation.name, mutation.value
    if name == IDS_MISSING:
        del order["out_trade_no"], order["syssn"]
    elif value is MISSING:
        del order[name]
    else:
        order[name] = value
    body = wrap(order, envelope)
    tags = (out_trade_no, syssn)
    if body_bytes(body) > MAX_BODY_BYTES:
        return Expected(body, tags, None, reason="message body is larger than 256 KiB")
    if name == IDS_MISSING:
        return Expected(body, tags, None, reason="out_trade_no or syssn is required")
    key = ("syssn", syssn) if name == "out_trade_no" else ("out_trade_no", out_trade_no)
    if value is MISSING or value is None:
        return Expected(body, tags, key, reason=f"{name} is required")
    kind = None
    if name in (*_TEXT_RULES, "pay_type") and not isinstance(value, str):
        kind = json_kind(value)
    if name == "txamt" and (isinstance(value, bool) or not isinstance(value, int | str)):
        kind = json_kind(value)
    return Expected(body, tags, key, field=name, kind=kind)


@dataclass
class Neighbour:
    body: str
    transaction: Transaction


def valid_neighbour(pipeline: Pipeline, shape: NeighbourShape) -> Neighbour:
    out_trade_no, syssn = unique_ids()
    out_trade_no = out_trade_no.replace("HX-", "OK-")
    txamt = 100 + next(_serial)
    transaction = Transaction(
        syssn=syssn, out_trade_no=out_trade_no, txamt=txamt, txdtm=VALID_TXDTM, pay_type="800101"
    )
    pipeline.qfpay.add(transaction)
    order = {
        "out_trade_no": out_trade_no,
        "syssn": syssn,
        "txamt": str(txamt) if shape.txamt_as_text else txamt,
        "txdtm": VALID_TXDTM,
        "pay_type": "800101",
        "txcurrcd": "HKD",
        **shape.extras,
    }
    return Neighbour(wrap(order, shape.envelope, shape.ascii_only), transaction)


def sqs_event(pipeline: Pipeline, bodies: list[str]) -> dict[str, Any]:
    now = str(int(time.time() * 1000))
    records = []
    for body in bodies:
        message = {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": f"local-{uuid.uuid4().hex}",
            "Body": body,
            "Attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": now,
                "SenderId": "AIDAEXAMPLE",
                "ApproximateFirstReceiveTimestamp": now,
            },
            "MD5OfBody": hashlib.md5(body.encode("utf-8", errors="surrogatepass")).hexdigest(),  # noqa: S324
        }
        records.append(build_record(message, pipeline.stack.queue_arn, pipeline.stack.region))
    return {"Records": records}


def invoke_cancel(pipeline: Pipeline, bodies: list[str]) -> dict[str, Any]:
    """Invoke the real cancel handler once with these bodies; it must answer, not raise."""
    before = len(lambda_runtime.invocations(pipeline.stack.cancel_function_name))
    response = boto3.client("lambda").invoke(
        FunctionName=pipeline.stack.cancel_function_name,
        InvocationType="RequestResponse",
        Payload=json.dumps(sqs_event(pipeline, bodies)).encode("utf-8"),
    )
    payload = response["Payload"].read()
    assert response.get("FunctionError") is None, payload[:2000]
    recorded = lambda_runtime.invocations(pipeline.stack.cancel_function_name)[before:]
    assert [i.error for i in recorded] == [None], "the in-process runtime recorded the handler raising"
    answer: dict[str, Any] = json.loads(payload)
    return answer


def describe(outcomes: list[dict[str, Any]], hostile: list[Expected]) -> str:
    seen = [(o["status"], o["out_trade_no"], o["syssn"], o["reason"]) for o in outcomes]
    wanted = [(h.key, h.reason or h.field) for h in hostile]
    return f"outcomes: {seen}\nhostile messages expected: {wanted}"


def check_batch(pipeline: Pipeline, hostile: list[Expected], neighbours: list[Neighbour]) -> None:
    """Run ``[neighbour, hostile..., neighbour]`` and check every message's fate."""
    pipeline.qfpay.reset_calls()
    bodies = [neighbours[0].body, *(h.body for h in hostile), *(n.body for n in neighbours[1:])]
    answer = invoke_cancel(pipeline, bodies)
    assert answer == {"batchItemFailures": []}, (
        "nothing is retried: hostile messages are final, neighbours done"
    )

    outcomes = pipeline.stack.read_outcomes(wait_seconds=10, expected=len(bodies))
    outcomes += pipeline.stack.read_outcomes(wait_seconds=0)  # stragglers would be extra outcomes
    assert len(outcomes) == len(bodies), describe(outcomes, hostile)

    # The neighbours reached their expected outcome, each with one reversal applied.
    by_out_trade_no = {o["out_trade_no"]: o for o in outcomes if o["out_trade_no"]}
    for neighbour in neighbours:
        detail = by_out_trade_no.pop(neighbour.transaction.out_trade_no)
        assert (detail["status"], detail["endpoint"], detail["attempts"]) == ("CANCELLED", "reversal", 1), (
            detail
        )
        assert pipeline.qfpay.cancellations_applied(neighbour.transaction.syssn) == 1

    # Every hostile message: one specific REJECTED outcome.
    rejected = [o for o in outcomes if o["status"] == "REJECTED"]
    assert len(rejected) == len(hostile), [(o["status"], o["reason"]) for o in outcomes]
    by_key = {(name, o[name]): o for o in rejected for name in ("out_trade_no", "syssn") if o[name]}
    anonymous: Counter[str] = Counter(o["reason"] for o in rejected if not (o["out_trade_no"] or o["syssn"]))
    expected_anonymous: Counter[str] = Counter()
    for expected in hostile:
        if expected.key is None:
            assert expected.reason is not None
            expected_anonymous[expected.reason] += 1
            continue
        detail = by_key[expected.key]
        reason = detail["reason"]
        if expected.reason is not None:
            assert reason == expected.reason, (expected, reason)
        else:
            assert expected.field is not None
            assert reason.startswith(f"{expected.field} "), (expected.field, reason)
            assert "; " not in reason, f"only {expected.field} is wrong: {reason}"
            if expected.kind is not None:
                assert reason.endswith(f"got {expected.kind}"), (expected.kind, reason)
    assert anonymous == expected_anonymous
    for detail in rejected:
        assert (detail["decided_by"], detail["endpoint"], detail["attempts"]) == ("cancel-function", None, 0)
        assert detail["txamt"] is None  # only identifiers that validated are carried
        # The reason never echoes a value: no injected separator shows up in it.
        assert "&" not in detail["reason"]
        assert "=" not in detail["reason"]

    # QFPay heard of the neighbours only: a reversal each, and their confirming Enquiries (asked
    # together where they meet: at most one each).
    calls = pipeline.qfpay.calls
    reversals = [c for c in calls if c.endpoint == "/trade/v1/reversal"]
    enquiries = [c for c in calls if c.endpoint == "/trade/v1/query"]
    assert len(reversals) == len(neighbours), [(c.endpoint, c.params) for c in calls]
    assert 1 <= len(enquiries) <= len(neighbours), [(c.endpoint, c.params) for c in calls]
    assert len(calls) == len(reversals) + len(enquiries), [(c.endpoint, c.params) for c in calls]
    asked = {number for c in enquiries for number in c.params["syssn"].split(",")}
    assert {n.transaction.syssn for n in neighbours} <= asked
    hostile_tags = {tag for expected in hostile for tag in expected.tags}
    for call in calls:
        values = [part for value in call.params.values() for part in value.split(",")]
        assert not hostile_tags & set(values), call
        assert all("&" not in value and "=" not in value for value in call.params.values()), call


# --------------------------------------------------------------------------- the tests

# The local rate limit (a container's share of QFPay's) would throttle this many orders a minute,
# and the local runs' short QFPay timeouts would let a loaded machine turn a neighbour's slow answer
# into a retry or a hand-off: neither is what these tests are about. The timeouts are long ones
# the cancel function accepts at start: every QFPay request of one order must fit its 150 s.
ENV = {
    "QFPAY_MAX_REQUESTS_PER_SECOND": "100",
    "QFPAY_MAX_REQUESTS_PER_MINUTE": "400",
    "QFPAY_CONNECT_TIMEOUT_SECONDS": "4",
    "QFPAY_READ_TIMEOUT_SECONDS": "9",
}


@pytest.fixture
def pipeline(pipeline_factory: PipelineFactory) -> Iterator[Pipeline]:
    """One pipeline per test (not per example): hypothesis examples share it."""
    with pipeline_factory(env_overrides=ENV) as running:
        yield running


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(
        st.tuples(field_mutations(), st.sampled_from(ENVELOPES), extra_fields), min_size=1, max_size=6
    ),
    shapes=st.tuples(neighbour_shapes, neighbour_shapes),
)
def test_a_hostile_field_is_rejected_by_name_and_spares_its_neighbours(
    pipeline: Pipeline,
    mutations: list[tuple[FieldMutation, str, dict[str, Any]]],
    shapes: tuple[NeighbourShape, NeighbourShape],
) -> None:
    hostile = [hostile_message(mutation, envelope, extras) for mutation, envelope, extras in mutations]
    neighbours = [valid_neighbour(pipeline, shape) for shape in shapes]
    check_batch(pipeline, hostile, neighbours)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    junk_bodies=st.lists(body_junk, min_size=1, max_size=6),
    shapes=st.tuples(neighbour_shapes, neighbour_shapes),
)
def test_a_body_that_is_no_order_is_rejected_for_what_it_is(
    pipeline: Pipeline, junk_bodies: list[BodyJunk], shapes: tuple[NeighbourShape, NeighbourShape]
) -> None:
    hostile = [hostile_message(junk_body, "raw", {}) for junk_body in junk_bodies]
    neighbours = [valid_neighbour(pipeline, shape) for shape in shapes]
    check_batch(pipeline, hostile, neighbours)


# Readable regressions: each value would smuggle a parameter into the signing string if let through.
SMUGGLED: list[tuple[str, Any]] = [
    ("out_trade_no", "X-1&txamt=1"),
    ("out_trade_no", "X-1&mchid=OTHER"),
    ("syssn", "20261126000101000001&txamt=1"),
    ("mchid", "M1&syssn=20261126000101000001"),
    ("udid", "pos=1"),
    ("pay_type", "800101&txamt=1"),
    ("txamt", "1250&txamt=1"),
    ("txdtm", VALID_TXDTM + "&udid=x"),
    ("txcurrcd", "HKD&txamt=1"),
    ("task_token", "tok en&x=1"),
    ("out_trade_no", "A" * 100_000),
    ("out_trade_no", "\x00"),
    ("syssn", "\u202e20261126"),
    ("txamt", 0),
    ("txamt", -1250),
    ("txamt", MAX_TXAMT + 1),
    ("txamt", 12.5),
    ("txdtm", "2026-02-30 10:00:00"),
]


@pytest.mark.parametrize("envelope", ENVELOPES)
def test_smuggled_parameters_never_reach_qfpay(pipeline: Pipeline, envelope: str) -> None:
    for start in range(0, len(SMUGGLED), 8):  # SQS batches of at most 10
        chunk = SMUGGLED[start : start + 8]
        hostile = [hostile_message(FieldMutation(name, value), envelope, {}) for name, value in chunk]
        neighbours = [valid_neighbour(pipeline, NeighbourShape(envelope, False)) for _ in range(2)]
        check_batch(pipeline, hostile, neighbours)


def test_valid_orders_with_unknown_junk_fields_are_cancelled(pipeline: Pipeline) -> None:
    """The contract: unknown fields are ignored, whatever they hold."""
    extras = [
        {"note": "A&txamt=1", "items": [1, {"a": None}], "client_key": "not ours"},
        {"nested": json.loads("[" * 150 + "]" * 150), "": "", "é": "\u0000"},
        {"txamt2": 1e308, "TXAMT": -1, "detail": {"out_trade_no": "OTHER"}},
    ]
    neighbours = [valid_neighbour(pipeline, NeighbourShape("raw", True, e)) for e in extras]
    check_batch(pipeline, [], neighbours)


# --------------------------------------------------------------------------- bugs found

HUGE_NUMBER = "9" * 5000  # valid JSON; more digits than Python's int() reads by default (4300)


def _outcome_of(pipeline: Pipeline, body: str) -> dict[str, Any]:
    answer = invoke_cancel(pipeline, [body])
    assert answer == {"batchItemFailures": []}
    (detail,) = pipeline.stack.read_outcomes(wait_seconds=10, expected=1)
    return detail


def test_an_astronomic_txamt_is_rejected_naming_txamt(pipeline: Pipeline) -> None:
    body = f'{{"out_trade_no": "HUGE-1", "txamt": {HUGE_NUMBER}, "txdtm": "{VALID_TXDTM}"}}'
    assert is_json(body) is False  # Python's json refuses it; JSON itself does not
    detail = _outcome_of(pipeline, body)
    assert detail["status"] == "REJECTED"
    assert detail["reason"].startswith("txamt "), detail["reason"]


def test_an_unknown_field_with_a_huge_number_is_ignored(pipeline: Pipeline) -> None:
    neighbour = valid_neighbour(pipeline, NeighbourShape("raw", False))
    body = neighbour.body[:-1] + f', "note": {HUGE_NUMBER}}}'
    detail = _outcome_of(pipeline, body)
    assert detail["status"] == "CANCELLED", detail["reason"]


def test_json_nested_deeper_than_readable_is_rejected_saying_so(pipeline: Pipeline) -> None:
    """A documented limit: JSON nested about 900+ levels deep cannot be read (Python's parser
    recurses). The reason says exactly that, not that the JSON is invalid."""
    neighbour = valid_neighbour(pipeline, NeighbourShape("raw", False))
    depth = 5000
    body = neighbour.body[:-1] + ', "note": ' + "[" * depth + "]" * depth + "}"
    detail = _outcome_of(pipeline, body)
    assert detail["status"] == "REJECTED"
    assert "nests JSON deeper" in detail["reason"], detail["reason"]


@pytest.mark.parametrize("valid", [True, False], ids=["cancelled", "rejected"])
def test_every_caller_of_a_repeated_order_is_answered(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, valid: bool
) -> None:
    from cancellation.aws import CallerNotifier  # noqa: PLC0415 - the class the handler uses
    from cancellation.models import OutcomeDetail  # noqa: PLC0415

    answered: list[str] = []
    notify = CallerNotifier.notify

    def spy(self: CallerNotifier, task_token: str, detail: OutcomeDetail) -> bool:
        answered.append(task_token)
        return notify(self, task_token, detail)

    monkeypatch.setattr(CallerNotifier, "notify", spy)  # the handler runs in this process
    if valid:
        order = json.loads(valid_neighbour(pipeline, NeighbourShape("raw", False)).body)
    else:
        order = {"out_trade_no": unique_ids()[0], "txamt": 0, "txdtm": VALID_TXDTM}
    for caller in ("caller-one", "caller-two"):
        assert invoke_cancel(pipeline, [json.dumps({**order, "task_token": caller})]) == {
            "batchItemFailures": []
        }
    assert answered == ["caller-one", "caller-two"]
