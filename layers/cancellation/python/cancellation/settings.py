"""The functions' environment, validated once at start into typed settings.

Only the entry points read ``os.environ``; everything else takes these settings.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from cancellation.budget import BudgetPolicy
from cancellation.enquiry import ENQUIRY_MAX_REQUESTS
from cancellation.qfpay import RATE_LIMIT_MAX_WAIT_SECONDS, Timeouts
from cancellation.routing import DEFAULT_CLOSE_PAY_TYPES, Routing
from cancellation.schedule import (
    DEFAULT_SETTLE_SECONDS,
    MAX_DEADLINE_SECONDS,
    MAX_FACTOR,
    MAX_FIRST_WAIT_SECONDS,
    MAX_RETRY_HORIZON_SECONDS,
    MAX_WAIT_SECONDS,
    LoopPolicy,
    PollSchedule,
    ReconcileSchedule,
)


class ConfigurationError(ValueError):
    """The function cannot start: the message lists every problem found."""


class QFPaySettings(NamedTuple):
    base_url: str
    secret_id: str
    routing: Routing = Routing()
    timeouts: Timeouts = Timeouts()
    secret_max_age: int = 300
    verify_response_signature: bool = False
    # QFPay's per-merchant limits, shared by every container (docs/rate-limits.md).
    budget: BudgetPolicy = BudgetPolicy()
    budget_table: str = ""
    settle_seconds: int = DEFAULT_SETTLE_SECONDS

    def request_budget(self, requests: int) -> float:
        """The longest ``requests`` QFPay requests can take: connect and read timeouts, plus the
        longest the rate limit makes a request wait before refusing it."""
        per_request = self.timeouts.connect + self.timeouts.read + RATE_LIMIT_MAX_WAIT_SECONDS
        return requests * per_request


# What one invocation may ask of QFPay, at most: each request may be sent again once, after QFPay's
# 1108 (the secret read afresh); an Enquiry by out_trade_no is one request per calendar month its
# window touches (ENQUIRY_MAX_REQUESTS). The cancel function, for one order: the Enquiry asked
# first (a look-up, or a redelivered order's), the cancel, and the Enquiry that confirms it. The
# poll function, for one turn: the Enquiry and the loop's one resend.
CANCEL_REQUESTS_PER_ORDER = (ENQUIRY_MAX_REQUESTS + 1 + ENQUIRY_MAX_REQUESTS) * 2
POLL_REQUESTS_PER_TURN = (ENQUIRY_MAX_REQUESTS + 1) * 2
# The dead-letter function, for one message: the Enquiry that looks up a payment named only by
# out_trade_no.
DEAD_LETTER_REQUESTS_PER_MESSAGE = ENQUIRY_MAX_REQUESTS * 2
# Around its QFPay requests an invocation reads the secret and writes the ledger, publishes or
# starts the loop: time allowed for those AWS calls.
AWS_CALLS_SECONDS = 3.0
# The template's Timeout of each function (FUNCTION_TIMEOUT_SECONDS, set from the same value).
CANCEL_FUNCTION_TIMEOUT = 150
POLL_FUNCTION_TIMEOUT = 90
DEAD_LETTER_FUNCTION_TIMEOUT = 60
# The order queue's VisibilityTimeout (ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS).
ORDER_QUEUE_VISIBILITY_TIMEOUT = 930
# How long the decision ledger may remember an order (LEDGER_EXPIRY_SECONDS), at most: ten years.
MAX_LEDGER_EXPIRY_SECONDS = 3650 * 86400


class CancelSettings(NamedTuple):
    qfpay: QFPaySettings
    event_bus_name: str
    state_machine_arn: str
    ledger_table: str
    loop: LoopPolicy
    ledger_expiry: int = 48 * 3600
    retry_base_delay: int = 10
    retry_max_delay: int = 900
    batch_concurrency: int = 10
    # The longest a batch's order waits for others to ask QFPay's Enquiry with it (0: never shared).
    enquiry_round: float = 5.0
    max_receive_count: int = 5  # the order queue's maxReceiveCount (its RedrivePolicy)
    retry_horizon: int = 6 * 3600  # QFPay unavailable this long after the first attempt: UNKNOWN
    function_timeout: int = CANCEL_FUNCTION_TIMEOUT  # the template's Timeout of the function
    visibility_timeout: int = ORDER_QUEUE_VISIBILITY_TIMEOUT  # the order queue's


class _Reader:
    """Collects every problem instead of stopping at the first, so one deploy fixes them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str:
        value = self.env.get(name, "").strip() or default
        if value is None:
            self.problems.append(f"{name} is required")
            return ""
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.env.get(name, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            self.problems.append(f"{name} must be a number, got {raw!r}")
            return default
        if not math.isfinite(value) or not low <= value <= high:
            self.problems.append(f"{name} must be between {low:g} and {high:g}, got {raw}")
            return default
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.number(name, default, low, high)
        if value != int(value):
            self.problems.append(f"{name} must be a whole number, got {value:g}")
            return default
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in ("true", "false", "1", "0"):
            self.problems.append(f"{name} must be true or false, got {raw!r}")
        return raw in ("true", "1")

    def done(self) -> None:
        if self.problems:
            raise ConfigurationError("invalid configuration: " + "; ".join(self.problems))


# QFPay's OpenAPI hosts (listed in docs/contracts.md): the merchant's requests go nowhere
# else unless QFPAY_ALLOW_ANY_HOST says so on purpose (a proxy, a region added after this list).
QFPAY_HOSTS = frozenset(
    {
        "openapi-hk.qfapi.com",
        "test-openapi-hk.qfapi.com",
        "openapi-int.qfapi.com",
        *(f"openapi-{region}.qfapi.com" for region in ("sg", "th", "db", "id", "eur", "jp")),
        *(f"test-openapi-{region}.qfapi.com" for region in ("sg", "th", "db", "id", "eur")),
        "openapi.qfpay.com",
        "openapi-test.qfpay.com",
    }
)


def check_base_url(url: str, *, any_host: bool = False) -> str | None:
    """None if acceptable. QFPay is reached over https on one of its own hosts; plain http only on
    loopback (local runs). ``any_host`` lifts the host list, never the rest: a user name or password
    would be sent along (and logged), and a query or fragment would change what is signed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "QFPAY_BASE_URL is not a valid URL"
    if "@" in parts.netloc:
        # The URL is not repeated: it holds a credential.
        return "QFPAY_BASE_URL must not carry a user name or password"
    if not host:
        return f"QFPAY_BASE_URL must be an absolute URL, got {url!r}"
    if parts.query or "?" in url:
        return f"QFPAY_BASE_URL must not have a query, got {url!r}"
    if parts.fragment or "#" in url:
        return f"QFPAY_BASE_URL must not have a fragment, got {url!r}"
    if parts.path not in ("", "/"):
        return f"QFPAY_BASE_URL must not have a path (QFPay's paths are added to it), got {url!r}"
    loopback = _is_loopback(host)
    if parts.scheme == "http" and loopback:
        return None
    if parts.scheme != "https":
        return f"QFPAY_BASE_URL must use https (plain http is allowed only for a loopback host), got {url!r}"
    if loopback or any_host or host in QFPAY_HOSTS:
        return None
    return (
        f"QFPAY_BASE_URL must name one of QFPay's hosts (or loopback), got {url!r}; "
        "set QFPAY_ALLOW_ANY_HOST=true to send the merchant's requests elsewhere on purpose"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _qfpay(read: _Reader) -> QFPaySettings:
    base_url = read.text("QFPAY_BASE_URL")
    any_host = read.flag("QFPAY_ALLOW_ANY_HOST", False)
    if base_url and (problem := check_base_url(base_url, any_host=any_host)):
        read.problems.append(problem)
    routing = Routing()
    try:
        routing = Routing.parse(
            read.env.get("CLOSE_PAY_TYPES", ",".join(sorted(DEFAULT_CLOSE_PAY_TYPES))),
            read.env.get("CLOSE_HTTP_METHOD", "GET") or "GET",
        )
    except ValueError as exc:
        read.problems.append(str(exc))
    return QFPaySettings(
        base_url=base_url,
        secret_id=read.text("QFPAY_SECRET_ID"),
        routing=routing,
        timeouts=Timeouts(
            connect=read.number("QFPAY_CONNECT_TIMEOUT_SECONDS", 3.05, 0.1, 30),
            read=read.number("QFPAY_READ_TIMEOUT_SECONDS", 10.0, 0.1, 60),
        ),
        secret_max_age=read.integer("SECRET_MAX_AGE_SECONDS", 300, 0, 3600),
        verify_response_signature=read.flag("QFPAY_VERIFY_RESPONSE_SIGNATURE", False),
        budget=BudgetPolicy(
            per_second=read.integer("QFPAY_MAX_REQUESTS_PER_SECOND", 100, 1, 100),
            per_minute=read.integer("QFPAY_MAX_REQUESTS_PER_MINUTE", 400, 1, 400),
            margin=read.number("QFPAY_BUDGET_MARGIN", 0.02, 0, 0.5),
            pause_after_429=read.number("QFPAY_PAUSE_AFTER_429_SECONDS", 1.0, 0, 60),
            window_scale=read.number("QFPAY_LIMIT_WINDOW_SCALE", 1.0, 0.01, 1),
        ),
        budget_table=read.text("BUDGET_TABLE"),
        settle_seconds=read.integer("QFPAY_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS, 1, 3600),
    )


def call_tracing(env: Mapping[str, str]) -> bool:
    """Powertools' own switch, POWERTOOLS_TRACE_DISABLED: call tracing unless it is true."""
    read = _Reader(env)
    disabled = read.flag("POWERTOOLS_TRACE_DISABLED", False)
    read.done()
    return not disabled


def poll_settings(env: Mapping[str, str]) -> QFPaySettings:
    read = _Reader(env)
    settings = _qfpay(read)
    timeout = read.integer("FUNCTION_TIMEOUT_SECONDS", POLL_FUNCTION_TIMEOUT, 1, 900)
    _check_requests_fit(read, settings, POLL_REQUESTS_PER_TURN, "one turn of the loop", timeout)
    read.done()
    return settings


def _check_requests_fit(
    read: _Reader, qfpay: QFPaySettings, requests: int, what: str, function_timeout: int
) -> None:
    """An invocation killed by its timeout half-way through a request leaves a cancel that may have
    reached QFPay and nobody to read its answer: every request one invocation may make must fit."""
    needed = qfpay.request_budget(requests) + AWS_CALLS_SECONDS
    if needed > function_timeout:
        read.problems.append(
            f"FUNCTION_TIMEOUT_SECONDS ({function_timeout}) must fit the QFPay requests of {what}: "
            f"{requests} x (QFPAY_CONNECT_TIMEOUT_SECONDS + QFPAY_READ_TIMEOUT_SECONDS + "
            f"{RATE_LIMIT_MAX_WAIT_SECONDS:g} s of the request budget's wait) + {AWS_CALLS_SECONDS:g} s "
            f"of AWS calls = {requests} x ({qfpay.timeouts.connect:g} + {qfpay.timeouts.read:g} + "
            f"{RATE_LIMIT_MAX_WAIT_SECONDS:g}) + {AWS_CALLS_SECONDS:g} = {needed:g} s"
        )


def _check_record_outlives_its_order(read: _Reader, settings: CancelSettings) -> None:
    """A record must outlive everything that may still act on its order: attempts sent back for
    QFPay not taking the cancel (until the retry horizon, the last one up to a backoff step later),
    then the loop, and every redelivery of the message (each a visibility timeout or a backoff step
    after the last). An attempt after its expiry would not know that a cancel may have reached QFPay."""
    per_receive = max(settings.visibility_timeout, settings.retry_max_delay)
    outlive = (
        settings.retry_horizon
        + settings.retry_max_delay
        + settings.loop.deadline_seconds
        + per_receive * settings.max_receive_count
    )
    if settings.ledger_expiry <= outlive:
        read.problems.append(
            f"LEDGER_EXPIRY_SECONDS ({settings.ledger_expiry}) must exceed "
            "RETRY_HORIZON_SECONDS + RETRY_MAX_DELAY_SECONDS + POLL_DEADLINE_SECONDS + "
            "max(ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS, RETRY_MAX_DELAY_SECONDS) x "
            f"ORDER_QUEUE_MAX_RECEIVE_COUNT ({settings.retry_horizon} + {settings.retry_max_delay} + "
            f"{settings.loop.deadline_seconds} + {per_receive} x {settings.max_receive_count} = {outlive})"
        )


def cancel_settings(env: Mapping[str, str]) -> CancelSettings:
    read = _Reader(env)
    qfpay = _qfpay(read)
    first_wait = read.integer("POLL_FIRST_WAIT_SECONDS", 3, 1, MAX_FIRST_WAIT_SECONDS)
    max_wait = read.integer("POLL_MAX_WAIT_SECONDS", 60, 1, MAX_WAIT_SECONDS)
    factor = read.number("POLL_BACKOFF_FACTOR", 2.0, 1.0, MAX_FACTOR)
    schedule = PollSchedule()
    try:
        schedule = PollSchedule(first_wait, max_wait, factor)
    except ValueError as exc:
        read.problems.append(str(exc))
    # Also how far the loop's deadline may move while QFPay cannot be reached.
    horizon = read.integer("RETRY_HORIZON_SECONDS", 6 * 3600, 0, MAX_RETRY_HORIZON_SECONDS)
    settings = CancelSettings(
        qfpay=qfpay,
        event_bus_name=read.text("EVENT_BUS_NAME"),
        state_machine_arn=read.text("STATE_MACHINE_ARN"),
        ledger_table=read.text("LEDGER_TABLE"),
        loop=LoopPolicy(
            schedule, read.integer("POLL_DEADLINE_SECONDS", 900, 5, MAX_DEADLINE_SECONDS), horizon
        ),
        ledger_expiry=read.integer("LEDGER_EXPIRY_SECONDS", 48 * 3600, 60, MAX_LEDGER_EXPIRY_SECONDS),
        retry_base_delay=read.integer("RETRY_BASE_DELAY_SECONDS", 10, 0, 900),
        retry_max_delay=read.integer("RETRY_MAX_DELAY_SECONDS", 900, 0, 900),
        batch_concurrency=read.integer("BATCH_CONCURRENCY", 10, 1, 10),
        enquiry_round=read.number("ENQUIRY_ROUND_SECONDS", 5.0, 0, 30),
        max_receive_count=read.integer("ORDER_QUEUE_MAX_RECEIVE_COUNT", 5, 1, 1000),
        retry_horizon=horizon,
        function_timeout=read.integer("FUNCTION_TIMEOUT_SECONDS", CANCEL_FUNCTION_TIMEOUT, 1, 900),
        visibility_timeout=read.integer(
            "ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS", ORDER_QUEUE_VISIBILITY_TIMEOUT, 0, 43200
        ),
    )
    _check_requests_fit(read, qfpay, CANCEL_REQUESTS_PER_ORDER, "one order", settings.function_timeout)
    _check_record_outlives_its_order(read, settings)
    read.done()
    return settings


class ReconcileSettings(NamedTuple):
    qfpay: QFPaySettings
    event_bus_name: str
    table: str
    intake_queue_url: str
    schedule: ReconcileSchedule = ReconcileSchedule()
    batch_limit: int = 200


def reconcile_settings(env: Mapping[str, str]) -> ReconcileSettings:
    read = _Reader(env)
    qfpay = _qfpay(read)
    schedule = ReconcileSchedule()
    if raw := env.get("RECONCILE_CHECKS_AFTER_SECONDS", "").strip():
        try:
            schedule = ReconcileSchedule.parse(raw)
        except ValueError as exc:
            read.problems.append(str(exc))
    settings = ReconcileSettings(
        qfpay=qfpay,
        event_bus_name=read.text("EVENT_BUS_NAME"),
        table=read.text("LEDGER_TABLE"),
        intake_queue_url=read.text("RECONCILE_INTAKE_QUEUE_URL"),
        schedule=schedule,
        batch_limit=read.integer("RECONCILE_BATCH_LIMIT", 200, 1, 1000),
    )
    read.done()
    return settings


class DeadLetterSettings(NamedTuple):
    event_bus_name: str
    state_machine_arn: str
    ledger_table: str
    qfpay: QFPaySettings  # for the Enquiry that looks up a payment named only by out_trade_no
    ledger_expiry: int = 48 * 3600
    max_receive_count: int = 5  # the order queue's maxReceiveCount: named in the reason


def dead_letter_settings(env: Mapping[str, str]) -> DeadLetterSettings:
    """The dead-letter function's: it asks QFPay only the Enquiry that names a payment (never a
    cancel)."""
    read = _Reader(env)
    qfpay = _qfpay(read)
    timeout = read.integer("FUNCTION_TIMEOUT_SECONDS", DEAD_LETTER_FUNCTION_TIMEOUT, 1, 900)
    _check_requests_fit(read, qfpay, DEAD_LETTER_REQUESTS_PER_MESSAGE, "one dead letter's look-up", timeout)
    settings = DeadLetterSettings(
        event_bus_name=read.text("EVENT_BUS_NAME"),
        state_machine_arn=read.text("STATE_MACHINE_ARN"),
        ledger_table=read.text("LEDGER_TABLE"),
        qfpay=qfpay,
        ledger_expiry=read.integer("LEDGER_EXPIRY_SECONDS", 48 * 3600, 60, MAX_LEDGER_EXPIRY_SECONDS),
        max_receive_count=read.integer("ORDER_QUEUE_MAX_RECEIVE_COUNT", 5, 1, 1000),
    )
    read.done()
    return settings
