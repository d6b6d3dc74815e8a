"""Order-timeout messages: unwrapping, validation and the order's identity.

Validation is strict because every value ends up in QFPay's signing string: a value holding ``&``
or ``=`` would otherwise smuggle extra parameters into what is signed.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any, NamedTuple

CURRENCIES = frozenset(
    {"AED", "AUD", "CAD", "CNY", "EUR", "HKD", "IDR", "JPY", "MMK", "MYR", "SGD", "THB", "USD"}
)
MAX_TXAMT = 10**12  # cents; far above any real payment, below anything that overflows downstream
MAX_BODY_BYTES = 256 * 1024  # the SQS message size limit
MAX_ENVELOPE_DEPTH = 3  # e.g. EventBridge -> SNS -> SQS
MAX_INT_DIGITS = 4000  # below Python's own limit on int() of a digit string (4300)

# QFPay's own numbering is alphanumeric; merchants' out_trade_no also uses a few separators.
_TEXT_FIELDS: dict[str, tuple[re.Pattern[str], str]] = {
    "out_trade_no": (re.compile(r"[A-Za-z0-9_\-.:|/]{1,128}"), "1-128 letters, digits or _-.:|/"),
    "syssn": (re.compile(r"[A-Za-z0-9]{1,64}"), "1-64 letters or digits"),
    "mchid": (re.compile(r"[A-Za-z0-9_\-]{1,64}"), "1-64 letters, digits, _ or -"),
    "udid": (re.compile(r"[A-Za-z0-9_\-.:]{1,64}"), "1-64 letters, digits or _-.:"),
    "pay_type": (re.compile(r"[0-9]{6}"), "a six-digit QFPay PayType"),
}
_TASK_TOKEN = re.compile(r"[\x21-\x7e]{1,2048}")  # Step Functions tokens: printable ASCII
_TXAMT_DIGITS = re.compile(r"[0-9]{1,13}")
TXDTM_FORMAT = "%Y-%m-%d %H:%M:%S"
# QFPay began in 2012; the Enquiry searches a window around txdtm, which must stay a real date.
TXDTM_EARLIEST = "2000-01-01 00:00:00"
TXDTM_LATEST = "2099-12-31 23:59:59"
_TXDTM_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


class InvalidOrder(ValueError):
    """A message that is not a valid order. ``reason`` says what is wrong; never retried."""

    def __init__(self, reason: str, identifiers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Identifiers that did validate, so the REJECTED outcome can still be matched to an order.
        self.identifiers = identifiers or {}


class Order(NamedTuple):
    txamt: int
    txdtm: str
    out_trade_no: str | None = None
    syssn: str | None = None
    pay_type: str | None = None
    mchid: str | None = None
    udid: str | None = None
    txcurrcd: str | None = None
    task_token: str | None = None
    # Never from a message: the ledger bound this payment's out_trade_no to its own naming before
    # QFPay showed its syssn (cancellation.naming), so the order keeps that identity.
    by_out_trade_no: bool = False

    @property
    def identity(self) -> str:
        """The payment this order names, so that two messages naming it two ways are one order:
        its QFPay ``syssn`` when known (QFPay's serial names one payment, whoever sends it, with or
        without ``mchid``), else ``mchid`` + ``out_trade_no`` (the merchant's own number); that
        naming too when the ledger bound the out_trade_no to it (``by_out_trade_no``)."""
        if self.syssn and not (self.by_out_trade_no and self.out_trade_no):
            return f"syssn={self.syssn}"
        return self.out_trade_no_naming

    @property
    def out_trade_no_naming(self) -> str:
        """``mchid`` + ``out_trade_no``: the merchant's own name for the payment."""
        # '=' never passes validation in any field, and '|' never in mchid: the forms cannot collide.
        return f"{self.mchid or ''}|out_trade_no={self.out_trade_no}"

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Order:
        """Rebuild an order this service validated earlier (the loop's state)."""
        fields: dict[str, Any] = {name: data.get(name) for name in cls._fields}
        fields["by_out_trade_no"] = data.get("by_out_trade_no") is True
        return cls(**fields)


def valid_syssn(value: Any) -> bool:
    """A QFPay serial number as the order message accepts it (e.g. one learnt from QFPay's rows)."""
    return isinstance(value, str) and _TEXT_FIELDS["syssn"][0].fullmatch(value) is not None


def valid_out_trade_no(value: Any) -> bool:
    """A merchant's order number as the order message accepts it (e.g. one read in QFPay's rows)."""
    return isinstance(value, str) and _TEXT_FIELDS["out_trade_no"][0].fullmatch(value) is not None


def unwrap(message: Any) -> Any:
    """The order inside an EventBridge event (``detail``) or an SNS notification (``Message``)."""
    for _ in range(MAX_ENVELOPE_DEPTH):
        if not isinstance(message, dict):
            return message
        if "detail" in message and "detail-type" in message and "source" in message:
            message = message["detail"]
        elif message.get("Type") == "Notification" and "TopicArn" in message and "Message" in message:
            inner = message["Message"]
            if not isinstance(inner, str):
                raise InvalidOrder("SNS envelope: Message must be a string")
            message = _loads(inner, "SNS envelope Message")
        else:
            return message
    return message


def parse_order_message(body: str) -> Order:
    """Validate an SQS body (raw, or wrapped by EventBridge or SNS) into an order."""
    if len(body.encode("utf-8", errors="surrogatepass")) > MAX_BODY_BYTES:
        raise InvalidOrder("message body is larger than 256 KiB")
    return validate_order(unwrap(_loads(body, "message body")))


def validate_order(data: Any) -> Order:
    if not isinstance(data, dict):
        raise InvalidOrder(f"order must be a JSON object, got {_kind(data)}")
    identifiers: dict[str, str] = {}
    texts: dict[str, str | None] = {}
    problems: list[str] = []
    for name, (pattern, description) in _TEXT_FIELDS.items():
        value = data.get(name)
        if value is None:
            texts[name] = None
        elif not isinstance(value, str):
            problems.append(f"{name} must be a string, got {_kind(value)}")
        elif not pattern.fullmatch(value):
            problems.append(f"{name} must be {description}")
        else:
            texts[name] = value
            identifiers[name] = value
    if not problems and texts["out_trade_no"] is None and texts["syssn"] is None:
        problems.append("out_trade_no or syssn is required")
    txamt = _txamt(data.get("txamt"), problems)
    txdtm = _txdtm(data.get("txdtm"), problems)
    txcurrcd = data.get("txcurrcd")
    if txcurrcd is not None and (not isinstance(txcurrcd, str) or txcurrcd not in CURRENCIES):
        problems.append("txcurrcd must be one of " + ", ".join(sorted(CURRENCIES)))
    task_token = data.get("task_token")
    if task_token is not None and (not isinstance(task_token, str) or not _TASK_TOKEN.fullmatch(task_token)):
        problems.append("task_token must be 1-2048 printable ASCII characters")
    elif task_token is not None:
        identifiers["task_token"] = task_token  # so even a rejected order answers its caller
    if problems or txamt is None or txdtm is None:
        raise InvalidOrder("; ".join(problems), identifiers)
    return Order(
        txamt=txamt,
        txdtm=txdtm,
        out_trade_no=texts["out_trade_no"],
        syssn=texts["syssn"],
        pay_type=texts["pay_type"],
        mchid=texts["mchid"],
        udid=texts["udid"],
        txcurrcd=txcurrcd,
        task_token=task_token,
    )


def validate_loop_order(data: Any) -> Order:
    """An order from the loop's state, validated as a message is, under the identity the cancel
    function decided it (``by_out_trade_no``, which no message can set)."""
    order = validate_order(data)
    if order.out_trade_no and data.get("by_out_trade_no") is True:
        return order._replace(by_out_trade_no=True)
    return order


def _txamt(value: Any, problems: list[str]) -> int | None:
    if value is None:
        problems.append("txamt is required")
        return None
    if isinstance(value, str) and _TXAMT_DIGITS.fullmatch(value):
        value = int(value)
    if value == math.inf:  # a JSON integer too long to read (see _parse_int)
        problems.append(f"txamt must be between 1 and {MAX_TXAMT} cents")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"txamt must be an integer number of cents, got {_kind(value)}")
        return None
    if not 0 < value <= MAX_TXAMT:
        problems.append(f"txamt must be between 1 and {MAX_TXAMT} cents")
        return None
    return value


def _txdtm(value: Any, problems: list[str]) -> str | None:
    if value is None:
        problems.append("txdtm is required")
        return None
    if not isinstance(value, str) or not _TXDTM_SHAPE.fullmatch(value):
        problems.append("txdtm must be 'YYYY-MM-DD hh:mm:ss'")
        return None
    try:
        datetime.strptime(value, TXDTM_FORMAT)
    except ValueError:
        problems.append("txdtm is not a real date and time")
        return None
    if not TXDTM_EARLIEST <= value <= TXDTM_LATEST:  # the fixed-width form sorts as the time does
        problems.append(f"txdtm must be between {TXDTM_EARLIEST} and {TXDTM_LATEST}")
        return None
    return value


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise InvalidOrder(f"{what} nests JSON deeper than this service reads (about 900 levels)") from None
    except ValueError:
        raise InvalidOrder(f"{what} is not valid JSON") from None


def _parse_int(digits: str) -> int | float:
    # Python refuses to convert integers of more than 4300 digits; JSON allows them. Such a number
    # is read as infinity: an unknown field holding one is still ignored, and txamt is rejected.
    return int(digits) if len(digits) <= MAX_INT_DIGITS else math.inf


def _kind(value: Any) -> str:
    """A value's JSON type, never the value itself (it could be anything, of any size)."""
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
