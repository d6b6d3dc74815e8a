"""A QFPay stand-in on loopback: reversal, close and Transaction Enquiry over a scripted ledger.

It speaks real HTTP (stdlib ``ThreadingHTTPServer`` in a background thread) so that the code under
test runs its real client, signer and response parsing. Authentication is checked independently
of ``cancellation.signing`` (this module never imports it), so a bug in our signer is caught here.

Usage::

    merchant = Merchant(app_code="APP1", client_key="KEY1")
    with QFPayStandIn([merchant]) as qf:
        qf.add(Transaction(syssn="20261126000100020000000001", out_trade_no="ORDER-1",
                           txamt=100, txdtm="2026-11-26 10:00:00", pay_type="800101"))
        ...  # point QFPAY_BASE_URL at qf.base_url
        assert qf.cancellations_applied("ORDER-1") == 1

Endpoints
=========
``POST /trade/v1/reversal``, ``/trade/v1/close`` (GET with a query string or POST with a form body;
``close_methods`` restricts which), ``POST /trade/v1/query``. Another method on a known path gets
HTTP 405 (with ``Allow``); an unknown path gets HTTP 404. Neither has a JSON body.

A POST's parameters are its ``application/x-www-form-urlencoded`` body plus its query string, if
any. Values are percent-decoded (``+`` is a space) before anything else: the signature is checked
over the raw decoded values, as QFPay documents.

Authentication (checked in this order, every answer HTTP 200 JSON)
==================================================================
1. ``X-QF-APPCODE`` missing or not a configured ``Merchant.app_code`` -> ``1108``. QFPay documents
   no separate code for an unknown app code; its table reads 1108 as "signature error, can mean
   rotated credentials", which is what a wrong app code is. Such an answer carries no response
   ``X-QF-SIGN`` (there is no key to sign with).
2. A malformed form (a pair without ``=``, invalid percent-encoding or UTF-8, a POST body that is
   not form-encoded) or a parameter name given twice -> ``1103`` (format error).
3. ``X-QF-SIGNTYPE`` other than absent, ``MD5`` or ``SHA256`` (exact spelling) -> ``1108``.
4. ``X-QF-SIGN`` missing or not exactly the expected signature -> ``1108``. Expected: every received
   parameter with a non-empty value, sorted by name in byte order (UTF-8), ``name=value`` joined
   with ``&``, the client_key appended with no separator, MD5 or SHA-256 of the UTF-8 bytes,
   upper-case hex. The comparison is exact (lower-case hex is refused: the stand-in holds clients
   to the documented form). A parameter sent with an empty value is accepted and not signed.

Every JSON answer to an authenticated request carries ``X-QF-SIGN`` = upper-case hex
MD5(raw response body + client_key) (the 2018 reference's response signature), unless
``sign_answers`` is set to False (QFPay editions that do not sign, or an answer whose signature
was stripped on the way). Bodies are
``json.dumps`` output (ASCII, ``", "`` separators), like QFPay's published sample.

Merchants and ``mchid``
=======================
``Merchant(app_code, client_key, mchid=None)``. A merchant with an ``mchid`` must send exactly
that ``mchid``; one without must not send any; otherwise ``1104`` (parameter error). A request
only sees transactions whose ``Transaction.mchid`` equals the merchant's ``mchid`` (None = None).

Scripted behaviour (fields of ``Transaction``)
==============================================
``state``
    ``"unpaid"`` (payment not completed: what reversal is for), ``"paid"``, ``"failed"``,
    ``"closed"``, ``"expired"``, ``"refunded"``.
``cancel`` (default 0)
    QFPay's cancel flag. A reversal that takes effect sets 1, a close sets 2. Pre-set it to model
    an already-cancelled transaction.
``in_progress_enquiries`` (default 0)
    When > 0, a reversal/close of an ``unpaid`` transaction answers ``1143`` (with its own new
    ``syssn``) instead of 0000, and the Enquiry shows the row still in progress (row respcd 1143,
    cancel "0") for that many enquiries that match the transaction; the next matching enquiry finds
    it reversed (cancel "1", or "2" for close) and that is when the cancellation counts as applied.
    Meanwhile another reversal/close answers ``1143`` again with the same ``syssn`` and changes
    nothing. Only enquiries advance the countdown.
``http_500_first`` (default 0)
    The first k authenticated calls of any endpoint concerning this transaction answer HTTP 500
    (plain-text body, no effect on the ledger). A reversal/close concerns the transaction it names;
    an enquiry concerns every transaction its filters match.
``latency`` (default 0.0) and the server-wide ``latency``
    Seconds slept before answering any call concerning the transaction (both add up; the
    server-wide one applies to every call). The effect on the ledger happens at once, only the
    answer is late: a client that times out has still reversed the payment.
``close_supported`` (default True)
    When False, close answers ``1297`` (cancel not supported; no ``syssn``). Reversal is unaffected.
``cancel_respcd`` (default None)
    Forces the reversal/close respcd (e.g. ``"1294"``) once the request is valid and the amount
    matches. It never changes the ledger and never counts as applied. For a forced ``0000``,
    ``1143`` or ``1145`` the answer carries a new ``syssn``, as a real success-like answer would.
``sysdtm`` (default: ``txdtm``)
    The system time shown in Enquiry rows.
``in_progress_range`` (default None)
    ``(low, high)``: when the transaction is added, ``in_progress_enquiries`` is drawn uniformly
    from ``low..high`` (inclusive) with the stand-in's seeded random generator (see below),
    replacing whatever the field held: in-progress sequences of random, reproducible length.
``faults`` (default ``()``)
    A script of ``Fault`` values for this transaction (see "Fault modes").

Fault modes (seedable)
======================
A ``Fault(kind, endpoints=None, seconds=None, status=503)`` is one misbehaviour of QFPay's side.
``Transaction.faults`` is consumed in order: an authenticated call concerning the transaction, to
an endpoint the script's *next* fault applies to (``endpoints``: paths or short names such as
``"reversal"``; None = every endpoint; ``CANCEL_ENDPOINTS`` = reversal and close), suffers that
fault and consumes it. A call to another endpoint passes untouched and leaves the script where it
is. An enquiry concerning several transactions suffers the fault of the first of them (ledger
order) whose next fault applies; only that one is consumed. Faults are looked at after
``http_500_first`` and after authentication (a refused signature is never faulted); a call that
concerns no transaction is never faulted. Kinds:

``http_5xx``
    HTTP ``status`` (500..599, default 503), plain-text body; nothing takes effect.
``http_429``
    HTTP 429 (QFPay's rate limit) with ``Retry-After: 1``; nothing takes effect.
``slow``
    The call takes effect at once; its (normal) answer is sent ``seconds`` later (default 0.5).
    Slower than the client's read timeout it is the same as ``applied_then_timeout``.
``reset``
    The connection is reset (TCP RST, ``SO_LINGER`` 0) without an answer, BEFORE anything takes
    effect: the request was sent, so the client cannot tell whether it did.
``applied_then_timeout``
    The call takes effect (a reversal/close is applied or started, an enquiry advances the
    in-progress countdown), then its answer is held ``seconds`` (default 3.0: choose more than
    the client's read timeout): the client gives up although QFPay did the work.
``applied_then_reset``
    The call takes effect, then the connection is reset without an answer.
``applied_then_5xx``
    The call takes effect, then the client gets HTTP ``status`` (e.g. 502 or 504 from a gateway
    whose upstream did the work), plain text. Not in ``DEFAULT_FAULT_WEIGHTS``: scripted, or given
    a weight in a plan.
``applied_then_undocumented``
    The call takes effect (as QFPay decided it: applied, started in progress, or refused), then
    the client reads a signed 200 answer with respcd ``8888`` (``UNDOCUMENTED_RESPCD``, in none of
    QFPay's tables) and the rest of QFPay's answer (a reversal's ``syssn`` included). QFPay
    documents no such code; a client must not read it as a refusal. Not in
    ``DEFAULT_FAULT_WEIGHTS`` either.

A faulted call is logged with ``Call.fault`` = the kind. For ``reset`` ``Call.http_status`` is 0
and ``respcd`` None (nothing was decided); for the ``applied_*`` kinds ``http_status``, ``respcd``
and ``answer`` are what QFPay decided, which the client never reads: ``Call.delivered`` is False
for ``reset``, ``applied_then_timeout`` and ``applied_then_reset``. ``applied_then_5xx`` is
delivered (the client read the 5xx): ``http_status`` is the 5xx, ``respcd`` and ``answer`` what
QFPay decided. Only ``http_5xx``, ``http_429`` and ``http_500_first`` answer a non-200 after
guaranteeing that nothing took effect; which non-200 a client may take as "nothing happened" is
its own risk (QFPay documents none as such).

Seeds and the server-wide fault plan: ``QFPayStandIn(..., seed=S, fault_plan=FaultPlan(...))``, or
``configure_faults(seed=..., plan=...)`` before transactions are added. The stand-in owns
``random.Random(seed)`` (``.random``). Every draw happens in ``add`` (under the lock, in the order
transactions are added), never while serving, so one seed and one add order always give the same
ledger and the same fault scripts, whatever the timing of the clients' threads.
``FaultPlan(share, weights=DEFAULT_FAULT_WEIGHTS, max_faults=2, query_share=0.25,
slow_seconds=0.5, timeout_seconds=3.0)``: a transaction added without scripted ``faults`` gets,
with probability ``share``, a script of 1..``max_faults`` faults whose kinds are drawn by
``weights``; ``applied_*`` faults aim at reversal/close, the others at the Enquiry with
probability ``query_share`` and else at reversal/close; ``http_5xx`` draws its status from 500,
502, 503, 504. ``transaction(key).faults`` shows the script drawn.

Anomalies (opt-in per transaction)
=================================
``Transaction.anomaly = Anomaly(kind, row_field="respcd", row_value="9999")``: documented or
plausible QFPay behaviour that a client is easily wrong about. None by default. Kinds:

``repeat_applies``
    While a cancellation of the payment is in progress (its row still reads 1143, cancel "0": a
    live payment), a further reversal/close is not deduplicated: it answers ``1143`` with a new
    reversal ``syssn`` and starts another cancellation. When they end, each counts as applied, so
    a resend on a live-looking row shows in ``cancellations_applied`` as a double.
``processing_while_paid``
    For a ``paid`` transaction: a reversal/close answers ``1143`` (new ``syssn``) instead of
    ``1260``, and while it is in progress (``in_progress_enquiries`` Enquiries, at least one) the
    row reads paid (``0000``, cancel "0"); then the reversal completes (cancel 1 or 2, applied).
    A client that reads the paid row as "refund required" before its own reversal ended is wrong.
``undocumented_row``
    While a cancellation is in progress the row's ``row_field`` (``respcd`` or ``cancel``) shows
    ``row_value`` (None: the field is missing), something QFPay's tables do not document (e.g.
    respcd ``9999``, ``1205`` "try later", cancel ``7``). For a ``paid`` transaction a
    reversal/close answers ``1143`` and the cancellation in progress then ends without effect
    (the payment had completed: the row reads ``0000``, cancel "0" afterwards); for an
    ``unpaid`` one the usual in-progress cancellation runs. A row that cannot be read proves
    nothing.

Refused cancels on a payment that stays live need no anomaly: an ``unpaid`` transaction with
``cancel_respcd`` ``"1261"`` (or ``1147``, ``1201``, ``2005``, ``1142``, ``1181``...) answers that
code to every cancel while its row keeps reading live (``1143``, cancel "0").

``settle()`` ends every cancellation still in progress as QFPay eventually would (taking effect,
or not for ``undocumented_row`` on a paid payment): what the ledger shows after it is the truth
an outcome is judged against.

Reversal and close: respcds, in the order they are decided
==========================================================
========  ===================================================================================
``1104``  no ``syssn`` and no ``out_trade_no``; ``txamt`` or ``txdtm`` missing; ``mchid`` rule
``1103``  ``txamt`` not a positive integer; ``txdtm`` not ``YYYY-MM-DD hh:mm:ss``
``1136``  no such transaction (by ``syssn``, else ``out_trade_no``) for this merchant
``1267``  ``syssn`` and ``out_trade_no`` both sent but naming different transactions
``1266``  ``txamt`` differs from the transaction's amount
``1297``  close of a transaction with ``close_supported=False``
(forced)  ``cancel_respcd``
``1264``  already cancelled (``cancel`` != 0): a repeat never counts as applied
``1143``  an anomaly decides: ``repeat_applies`` while in progress, ``processing_while_paid`` or
          ``undocumented_row`` on a paid transaction (see "Anomalies")
``1143``  a cancellation is in progress (``in_progress_enquiries``), see above
``0000``  ``unpaid``: cancelled now (``cancel`` 1 or 2), a new reversal ``syssn`` is issued
``1143``  ``unpaid`` with ``in_progress_enquiries`` > 0: cancellation started
``1260``  ``paid`` (already paid: a refund is needed)
``1261``  ``failed`` (not paid)
``1142``  ``closed``
``1181``  ``expired``
``1262``  ``refunded``
========  ===================================================================================

Answer fields: ``syssn`` (the reversal's own new number; present only on 0000/1143/1145),
``orig_syssn``, ``txamt`` (string), ``txcurrcd``, ``txdtm`` (echoed from the request), ``sysdtm``,
``chnlsn``, ``respcd``, ``resperr``, ``respmsg``; close adds ``out_trade_no``. When no transaction
was located only ``respcd``, ``resperr``, ``respmsg`` are sent.

Transaction Enquiry
===================
Parameters: ``syssn`` and ``out_trade_no`` (comma-separated lists; when both are given a row must
match both), ``pay_type`` (list), ``respcd`` (filter on the row respcd), ``mchid``, ``page``
(default 1), ``page_size`` (default 10, at most 100). ``start_time``/``end_time`` are accepted and
ignored (the ledger has no month boundaries), unless the server's ``search_windows`` is set: then,
as QFPay documents, a query without ``syssn`` matches only rows whose ``sysdtm`` lies between them,
and within one calendar month: QFPay searches "one calendar month at most" (by default the current
one) and does not document what it does with a window crossing into another month, so the stand-in
takes the strictest reading the docs allow and searches such a window only within ``start_time``'s
month (``end_time`` is cut at that month's last second).
Non-integer ``page``/``page_size`` -> ``1103``;
``page`` < 1 or ``page_size`` outside 1..100 -> ``1104``. Otherwise the top-level ``respcd`` is
``0000`` with ``resperr``, ``respmsg``, ``page``, ``page_size`` (integers) and ``data``: one row per
matching ORIGINAL transaction (a reversal's own ``syssn`` never appears; QFPay documents no such
row), so unknown numbers give an empty ``data`` and unknown numbers among known ones are absent.
Without ``syssn``/``out_trade_no`` every transaction of the merchant matches.

Row fields: ``syssn``, ``out_trade_no``, ``order_type`` ("payment"), ``pay_type``, ``txamt``
(string), ``txcurrcd``, ``txdtm``, ``sysdtm``, ``paydtm``, ``respcd``, ``errmsg``, ``cancel``
(string), ``chnlsn``, ``origssn`` (""), ``cash_fee``, ``cash_fee_type``, ``cash_refund_fee``,
``cash_refund_fee_type``, ``exchange_rate``. Row ``respcd`` by state (the transaction's own
status, per QFPay's table): unpaid ``1143``, paid ``0000``, failed ``1147`` (a wallet/payment
error), closed ``1142``, expired ``1181``, refunded ``0000`` (the payment succeeded; ``cancel``
shows "3" unless set otherwise). A cancelled transaction keeps its state's row respcd (an unpaid
one still shows 1143) and reports the cancellation only through ``cancel``: QFPay does not
document what respcd a reversed row carries, and its docs say to read any non-zero ``cancel`` as
"no longer a live payment".

Counting
========
Every request is recorded in ``calls`` (a ``Call``: endpoint path, HTTP method, app code,
parameters as received, HTTP status, respcd, the ``syssn`` of the transactions concerned,
timestamp, the fault suffered, the JSON answer decided, sent or not, and ``pending``: which of the
transactions concerned had a cancellation in progress once the call was served). Headers, hence
signatures and keys, are never stored or logged. Helpers: ``count``,
``cancellations_applied`` (how many times a reversal/close actually took effect: the evidence for
"no payment reversed twice"), ``transaction`` (a snapshot), ``add``, ``update``, ``reset_calls``.
Wherever a transaction key is taken it may be its ``syssn`` or its ``out_trade_no``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, get_args

from tests.local.qfpay_limits import MerchantRateLimits, Outage

State = Literal["unpaid", "paid", "failed", "closed", "expired", "refunded"]
STATES: tuple[State, ...] = ("unpaid", "paid", "failed", "closed", "expired", "refunded")

REVERSAL = "/trade/v1/reversal"
CLOSE = "/trade/v1/close"
QUERY = "/trade/v1/query"
ENDPOINTS = (REVERSAL, CLOSE, QUERY)
CANCEL_ENDPOINTS: frozenset[str] = frozenset({REVERSAL, CLOSE})

FaultKind = Literal[
    "http_5xx",
    "http_429",
    "slow",
    "reset",
    "applied_then_timeout",
    "applied_then_reset",
    "applied_then_5xx",
    "applied_then_undocumented",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
#: Kinds whose answer the client never reads (no answer, or one held past its read timeout).
UNANSWERED_FAULTS: frozenset[str] = frozenset({"reset", "applied_then_timeout", "applied_then_reset"})
#: Kinds that let the call take effect before the answer is lost.
APPLIED_FAULTS: frozenset[str] = frozenset(
    {"applied_then_timeout", "applied_then_reset", "applied_then_5xx", "applied_then_undocumented"}
)
#: The respcd of ``applied_then_undocumented``: in none of QFPay's tables.
UNDOCUMENTED_RESPCD = "8888"
DEFAULT_FAULT_WEIGHTS: Mapping[FaultKind, float] = {
    "http_5xx": 3.0,
    "http_429": 2.0,
    "slow": 2.0,
    "reset": 2.0,
    "applied_then_timeout": 2.0,
    "applied_then_reset": 2.0,
}
_DEFAULT_FAULT_SECONDS = {"slow": 0.5, "applied_then_timeout": 3.0}

RESPERR: dict[str, str] = {
    "0000": "success",
    "1103": "format error",
    "1104": "parameter error",
    "1108": "signature error",
    "1136": "order does not exist",
    "1142": "order closed",
    "1143": "processing, query later",
    "1145": "processing, query later",
    "1181": "order expired",
    "1260": "order already paid",
    "1261": "order not paid",
    "1262": "order already refunded",
    "1264": "order already cancelled",
    "1266": "amount mismatch",
    "1267": "order mismatch",
    "1294": "prohibited by bank risk control",
    "1297": "cancel not supported for this transaction",
}

_STATE_CANCEL_RESPCD: dict[str, str] = {
    "paid": "1260",
    "failed": "1261",
    "closed": "1142",
    "expired": "1181",
    "refunded": "1262",
}
_ROW_RESPCD: dict[str, tuple[str, str]] = {
    "unpaid": ("1143", "transaction in progress"),
    "paid": ("0000", "success"),
    "failed": ("1147", "payment failed"),
    "closed": ("1142", "order closed"),
    "expired": ("1181", "order expired"),
    "refunded": ("0000", "success"),
}
_ISSUES_SYSSN = frozenset({"0000", "1143", "1145"})
_TXDTM = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_DIGITS = re.compile(r"[0-9]+")


def _month_end(moment: str) -> str:
    """The last second of the calendar month of ``moment`` (``YYYY-MM-DD hh:mm:ss``). QFPay searches
    one calendar month at most and does not say what it does with a window crossing into the next:
    the strictest reading is that it searches only the month the window starts in."""
    year, month = int(moment[:4]), int(moment[5:7])
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of QFPay's side (see "Fault modes" in the module docstring)."""

    kind: FaultKind
    endpoints: Collection[str] | None = None
    """Paths (or short names: "reversal", "close", "query") it applies to; None: every endpoint.
    Kept as a frozenset of paths."""
    seconds: float | None = None
    """How late the answer is (``slow``, ``applied_then_timeout``); None: the kind's default."""
    status: int = 503
    """The HTTP status of ``http_5xx``."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if isinstance(self.endpoints, str):
            raise ValueError("endpoints must be a collection of endpoints, not one string")
        if self.endpoints is not None:
            paths = frozenset(e if e.startswith("/") else f"/trade/v1/{e}" for e in self.endpoints)
            unknown = sorted(paths - set(ENDPOINTS))
            if unknown or not paths:
                raise ValueError(f"unknown or no endpoints for a fault: {unknown}")
            object.__setattr__(self, "endpoints", paths)
        if self.kind in ("http_5xx", "applied_then_5xx") and not 500 <= self.status <= 599:
            raise ValueError(f"{self.kind} needs a status in 500..599, not {self.status}")
        if self.seconds is not None and self.seconds < 0:
            raise ValueError("seconds must not be negative")

    @property
    def delay(self) -> float:
        """Seconds the answer is held (0 for kinds that do not hold it)."""
        if self.kind not in _DEFAULT_FAULT_SECONDS:
            return 0.0
        return _DEFAULT_FAULT_SECONDS[self.kind] if self.seconds is None else self.seconds

    def applies_to(self, path: str) -> bool:
        return self.endpoints is None or path in self.endpoints


@dataclass(frozen=True)
class FaultPlan:
    """A server-wide plan: which transactions get a fault script, drawn from the stand-in's seed."""

    share: float
    """Probability that a transaction added without scripted faults gets a script."""
    weights: Mapping[FaultKind, float] = field(default_factory=lambda: dict(DEFAULT_FAULT_WEIGHTS))
    max_faults: int = 2
    """A script has 1..max_faults faults."""
    query_share: float = 0.25
    """Share of the non-``applied_*`` faults aimed at the Enquiry instead of reversal/close."""
    slow_seconds: float = 0.5
    timeout_seconds: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or not 0.0 <= self.query_share <= 1.0:
            raise ValueError("share and query_share must be between 0 and 1")
        if self.max_faults < 1:
            raise ValueError("max_faults must be at least 1")
        unknown = sorted(set(self.weights) - set(FAULT_KINDS))
        if unknown or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights need known kinds and a positive total (unknown: {unknown})")

    def draw(self, rng: random.Random) -> tuple[Fault, ...]:
        """A script for one transaction (often empty), drawn from ``rng``."""
        if rng.random() >= self.share:
            return ()
        kinds = [k for k in FAULT_KINDS if self.weights.get(k, 0.0) > 0]
        weights = [self.weights[k] for k in kinds]
        script: list[Fault] = []
        for _ in range(rng.randint(1, self.max_faults)):
            kind = rng.choices(kinds, weights)[0]
            if kind in APPLIED_FAULTS or rng.random() >= self.query_share:
                endpoints = CANCEL_ENDPOINTS
            else:
                endpoints = frozenset({QUERY})
            seconds = {"slow": self.slow_seconds, "applied_then_timeout": self.timeout_seconds}.get(kind)
            status = rng.choice((500, 502, 503, 504)) if kind == "http_5xx" else 503
            script.append(Fault(kind, endpoints, seconds, status))
        return tuple(script)


AnomalyKind = Literal["repeat_applies", "processing_while_paid", "undocumented_row"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = ("repeat_applies", "processing_while_paid", "undocumented_row")
#: Row fields an ``undocumented_row`` anomaly may spoil.
ANOMALY_ROW_FIELDS = frozenset({"respcd", "cancel"})


@dataclass(frozen=True)
class Anomaly:
    """QFPay behaviour a client must not misread (see "Anomalies" in the module docstring)."""

    kind: AnomalyKind
    row_field: str = "respcd"
    """``undocumented_row``: the row field shown unreadable while the cancellation is pending."""
    row_value: str | None = "9999"
    """``undocumented_row``: the value shown (None: the field is left out of the row)."""

    def __post_init__(self) -> None:
        if self.kind not in ANOMALY_KINDS:
            raise ValueError(f"anomaly kind must be one of {ANOMALY_KINDS}, not {self.kind!r}")
        if self.row_field not in ANOMALY_ROW_FIELDS:
            raise ValueError(f"row_field must be one of {sorted(ANOMALY_ROW_FIELDS)}")


@dataclass(frozen=True)
class Merchant:
    """One set of credentials. ``client_key`` is kept out of ``repr``."""

    app_code: str
    client_key: str = field(repr=False)
    mchid: str | None = None


@dataclass
class Transaction:
    """An original payment in the ledger, with its scripted behaviour (see the module docstring)."""

    syssn: str
    out_trade_no: str
    txamt: int
    txdtm: str
    pay_type: str
    txcurrcd: str = "HKD"
    mchid: str | None = None
    state: State = "unpaid"
    cancel: int = 0
    in_progress_enquiries: int = 0
    http_500_first: int = 0
    latency: float = 0.0
    close_supported: bool = True
    cancel_respcd: str | None = None
    sysdtm: str | None = None
    in_progress_range: tuple[int, int] | None = None
    faults: tuple[Fault, ...] = ()
    anomaly: Anomaly | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {self.state!r}")
        if self.in_progress_range is not None:
            low, high = self.in_progress_range
            if not 0 <= low <= high:
                raise ValueError(f"in_progress_range needs 0 <= low <= high, not {(low, high)}")
        self.faults = tuple(self.faults)

    def order_message(self) -> dict[str, Any]:
        """The order-timeout message a shop sends for this payment."""
        message: dict[str, Any] = {
            "out_trade_no": self.out_trade_no,
            "syssn": self.syssn,
            "txamt": self.txamt,
            "txdtm": self.txdtm,
            "pay_type": self.pay_type,
            "txcurrcd": self.txcurrcd,
        }
        if self.mchid is not None:
            message["mchid"] = self.mchid
        return message


@dataclass(frozen=True)
class Call:
    """One request as the stand-in saw it (never headers, so never a signature or key)."""

    endpoint: str
    method: str
    app_code: str | None
    params: dict[str, str]
    http_status: int
    respcd: str | None
    keys: tuple[str, ...]
    timestamp: float
    fault: str | None = None
    """The fault kind this call suffered, else None."""
    answer: dict[str, Any] | None = None
    """The JSON answer decided (sent, or lost to a fault); None for plain-text or no answer."""
    pending: tuple[str, ...] = ()
    """The ``syssn`` of each concerned transaction with a cancellation still in progress at QFPay
    once this call was served (QFPay's side of the truth; no client can see it)."""

    @property
    def key(self) -> str | None:
        """The ``syssn`` of the one transaction concerned, else None."""
        return self.keys[0] if len(self.keys) == 1 else None

    @property
    def delivered(self) -> bool:
        """False when the client never read the answer (``UNANSWERED_FAULTS``)."""
        return self.fault not in UNANSWERED_FAULTS


@dataclass
class _Runtime:
    calls_seen: int = 0
    applied: int = 0
    pending_cancel: int = 0  # 1 reversal / 2 close in progress, 0 none
    pending_syssn: str = ""
    pending_remaining: int = 0
    pending_extra: int = 0  # further cancels started while one was pending (anomaly repeat_applies)
    pending_fails: bool = False  # the pending cancellation ends without effect (a paid payment)
    faults_used: int = 0  # how much of Transaction.faults has been consumed


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str
    respcd: str | None
    keys: tuple[str, ...]
    delay: float
    client_key: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] | None = None
    fault: str | None = None
    drop: bool = False  # reset the connection instead of answering


class _Reject(Exception):
    def __init__(self, respcd: str, resperr: str | None = None) -> None:
        super().__init__(respcd)
        self.respcd = respcd
        self.resperr = resperr or RESPERR.get(respcd, "error")


def expected_signature(params: Mapping[str, str], client_key: str, sign_type: str) -> str:
    """QFPay's request signature, written independently of ``cancellation.signing``."""
    pairs = [(name.encode("utf-8"), name, value) for name, value in params.items() if value != ""]
    pairs.sort(key=lambda item: item[0])
    text = "&".join(f"{name}={value}" for _, name, value in pairs) + client_key
    data = text.encode("utf-8")
    if sign_type == "SHA256":
        return hashlib.sha256(data).hexdigest().upper()
    return hashlib.md5(data).hexdigest().upper()  # noqa: S324 - QFPay's protocol


def response_sign(body: bytes, client_key: str) -> str:
    """Upper-case hex MD5 of the raw body followed by the client_key."""
    return hashlib.md5(body + client_key.encode("utf-8")).hexdigest().upper()  # noqa: S324


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _split_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_form(text: str) -> list[tuple[str, str]]:
    """Decode ``a=1&b=2``; raise ``_Reject("1103")`` on anything malformed."""
    if not text:
        return []
    if _BAD_PERCENT.search(text):
        raise _Reject("1103", "format error: invalid percent-encoding")
    try:
        return urllib.parse.parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Reject("1103", "format error: malformed form data") from exc


class _Server(ThreadingHTTPServer):
    # socketserver's backlog of 5 overflows when a batch's 10 orders connect at once; the kernel
    # then retries the dropped SYN a second (and three seconds) later, which reads as QFPay
    # unreachable to a client with a 3 s connect timeout.
    request_queue_size = 128
    daemon_threads = True


class QFPayStandIn:
    """The stand-in server. Thread-safe: one lock guards the ledger and the call log."""

    def __init__(
        self,
        merchants: Iterable[Merchant],
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        close_methods: Sequence[str] = ("GET", "POST"),
        *,
        transactions: Iterable[Transaction] = (),
        seed: int | None = None,
        fault_plan: FaultPlan | None = None,
        rate_limits: MerchantRateLimits | None = None,
        outage: Outage | None = None,
        sub_merchants: Iterable[Merchant] = (),
    ) -> None:
        self.rate_limits = rate_limits or MerchantRateLimits()
        """QFPay's per-merchant limits (100/s, 400/min, HTTP 429 beyond): always enforced."""
        self.outage = outage or Outage()
        """While active, QFPay is down: HTTP 503 to everything."""
        # An agent's app code serving several merchants, each named by the mchid it sends.
        self._sub_merchants = {(m.app_code, m.mchid): m for m in sub_merchants}
        self._merchants: dict[str, Merchant] = {m.app_code: m for m in merchants}
        self._host = host
        self._port = port
        self.latency = latency
        self.search_windows = False
        """True: an Enquiry without syssn searches only its start_time..end_time, on sysdtm, and
        never past the end of start_time's calendar month."""
        self.close_methods: tuple[str, ...] = tuple(m.upper() for m in close_methods)
        self._lock = threading.RLock()
        self._ledger: dict[str, Transaction] = {}
        self._runtime: dict[str, _Runtime] = {}
        self._calls: list[Call] = []
        self._reversal_counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.random = random.Random(seed)
        """The stand-in's own generator: every draw (in ``add``) comes from it."""
        self.fault_plan = fault_plan
        self.sign_answers = True
        """False: answers carry no ``X-QF-SIGN`` at all."""
        for txn in transactions:
            self.add(txn)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> QFPayStandIn:
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="qfpay-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> QFPayStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ----------------------------------------------------------------- ledger

    def set_merchant(self, merchant: Merchant) -> None:
        """Add a merchant, or replace the one with that app code (e.g. a rotated client_key)."""
        with self._lock:
            self._merchants[merchant.app_code] = merchant

    def add(self, txn: Transaction) -> Transaction:
        """Put a transaction in the ledger (``syssn`` and ``mchid``+``out_trade_no`` unique)."""
        with self._lock:
            if txn.syssn in self._ledger:
                raise ValueError(f"duplicate syssn {txn.syssn}")
            for other in self._ledger.values():
                if other.out_trade_no == txn.out_trade_no and other.mchid == txn.mchid:
                    raise ValueError(f"duplicate out_trade_no {txn.out_trade_no}")
            # The ledger keeps its own copy: a scenario's Transaction can be reused across runs.
            own = dataclasses.replace(txn)
            if own.in_progress_range is not None:
                own.in_progress_enquiries = self.random.randint(*own.in_progress_range)
            if not own.faults and self.fault_plan is not None:
                own.faults = self.fault_plan.draw(self.random)
            self._ledger[txn.syssn] = own
            self._runtime[txn.syssn] = _Runtime()
            return dataclasses.replace(own)

    def configure_faults(self, *, seed: int | None = None, plan: FaultPlan | None = None) -> None:
        """Reseed the stand-in's generator and set the fault plan for transactions added from now."""
        with self._lock:
            self.random = random.Random(seed)
            self.fault_plan = plan

    def update(self, key: str, **changes: Any) -> Transaction:
        """Change fields of a transaction (e.g. ``state="paid"``); returns a snapshot."""
        names = {f.name for f in dataclasses.fields(Transaction)} - {"syssn"}
        with self._lock:
            txn = self._ledger[self._resolve(key)]
            for name, value in changes.items():
                if name not in names:
                    raise TypeError(f"cannot update {name!r}")
                setattr(txn, name, value)
            txn.__post_init__()
            if "faults" in changes:  # a new script starts from its beginning
                self._runtime[txn.syssn].faults_used = 0
            return dataclasses.replace(txn)

    def transaction(self, key: str) -> Transaction:
        """A snapshot (copy) of the transaction named by ``syssn`` or ``out_trade_no``."""
        with self._lock:
            return dataclasses.replace(self._ledger[self._resolve(key)])

    def cancellations_applied(self, key: str) -> int:
        """How many reversals/closes actually took effect on this transaction."""
        with self._lock:
            return self._runtime[self._resolve(key)].applied

    def settle(self) -> int:
        """Let every cancellation still in progress end, as QFPay's eventually do (a soak's last
        step before reading the ledger); returns how many there were."""
        with self._lock:
            pending = [(self._ledger[s], r) for s, r in self._runtime.items() if r.pending_cancel]
            for txn, runtime in pending:
                _complete_pending(txn, runtime)
            return len(pending)

    # ----------------------------------------------------------------- calls

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, endpoint: str, key: str | None = None) -> int:
        """Calls to ``endpoint`` ("reversal" or "/trade/v1/reversal"), optionally about ``key``."""
        path = endpoint if endpoint.startswith("/") else f"/trade/v1/{endpoint}"
        with self._lock:
            syssn = self._resolve(key) if key is not None else None
            return sum(
                1 for call in self._calls if call.endpoint == path and (syssn is None or syssn in call.keys)
            )

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # ----------------------------------------------------------------- internals

    def _resolve(self, key: str) -> str:
        if key in self._ledger:
            return key
        matches = [t.syssn for t in self._ledger.values() if t.out_trade_no == key]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(key)
        raise KeyError(f"{key} is ambiguous (several mchids); use the syssn")

    def _new_reversal_syssn(self) -> str:
        self._reversal_counter += 1
        return f"{datetime.now():%Y%m%d}00020009{self._reversal_counter:010d}"

    def _handle(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Answer:
        """Decide the whole answer under the lock; the caller sleeps ``delay`` and sends it."""
        split = urllib.parse.urlsplit(raw_path)
        path = split.path
        app_code = headers.get("X-QF-APPCODE")
        params: dict[str, str] = {}
        with self._lock:
            answer = self._dispatch(method, split, headers, body, params)
            self._calls.append(
                Call(
                    endpoint=path,
                    method=method,
                    app_code=app_code,
                    params=params,
                    http_status=answer.status,
                    respcd=answer.respcd,
                    keys=answer.keys,
                    timestamp=time.time(),
                    fault=answer.fault,
                    answer=answer.payload,
                    pending=tuple(k for k in answer.keys if self._runtime[k].pending_cancel),
                )
            )
            return answer

    def _dispatch(
        self,
        method: str,
        split: urllib.parse.SplitResult,
        headers: Mapping[str, str],
        body: bytes,
        params_out: dict[str, str],
    ) -> _Answer:
        path, query = split.path, split.query
        if path not in ENDPOINTS:
            return _plain(404, "404 Not Found", self.latency)
        allowed = self.close_methods if path == CLOSE else ("POST",)
        if method not in allowed:
            answer = _plain(405, "405 Method Not Allowed", self.latency)
            answer.extra_headers["Allow"] = ", ".join(allowed)
            return answer

        merchant = self._merchants.get(headers.get("X-QF-APPCODE") or "")
        malformed: _Reject | None = None
        try:
            pairs = self._read_pairs(method, query, headers, body)
        except _Reject as rejection:
            malformed, pairs = rejection, []
        for name, value in pairs:
            params_out.setdefault(name, value)
        if merchant is None:
            unknown = _Reject("1108", "signature error: unknown app code")
            return _json(_error(unknown), None, (), self.latency)
        merchant = self._sub_merchants.get((merchant.app_code, params_out.get("mchid")), merchant)
        if self.outage.active:
            self.outage.refused += 1
            return _plain(503, "503 Service Unavailable", self.latency)
        if not self.rate_limits.admit(params_out.get("mchid") or merchant.app_code):
            return _plain(429, "429 Too Many Requests", self.latency)
        try:
            if malformed is not None:
                raise malformed
            if len(params_out) != len(pairs):
                raise _Reject("1103", "format error: repeated parameter")
            sign_type = headers.get("X-QF-SIGNTYPE")
            if sign_type is None:
                sign_type = "MD5"
            if sign_type not in ("MD5", "SHA256"):
                raise _Reject("1108", "signature error: unknown sign type")
            expected = expected_signature(params_out, merchant.client_key, sign_type)
            given = headers.get("X-QF-SIGN") or ""
            if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
                raise _Reject("1108")
        except _Reject as rejection:
            return _json(_error(rejection), merchant.client_key, (), self.latency)

        params = params_out
        concerned = self._concerned(path, params, merchant)
        delay = self.latency + sum(self._ledger[s].latency for s in concerned)
        fail = False
        for syssn in concerned:
            runtime = self._runtime[syssn]
            runtime.calls_seen += 1
            fail = fail or runtime.calls_seen <= self._ledger[syssn].http_500_first
        if fail:
            return _plain(500, "500 Internal Server Error", delay, concerned)
        fault = self._take_fault(path, concerned)
        if fault is not None and (early := _early_fault_answer(fault, delay, concerned)) is not None:
            return early

        try:
            self._check_mchid(params, merchant)
            if path == QUERY:
                payload, keys = self._query(params, merchant), concerned
            else:
                payload, keys = self._cancel(path, params, merchant)
        except _Reject as rejection:
            payload, keys = _error(rejection), concerned
        answer = _json(payload, merchant.client_key, keys, delay)
        if fault is not None:  # the call has taken effect; now its answer is late or lost
            answer.fault = fault.kind
            answer.delay += fault.delay
            answer.drop = fault.kind == "applied_then_reset"
            if fault.kind == "applied_then_5xx":
                answer = _applied_then_5xx_answer(fault, answer)
            elif fault.kind == "applied_then_undocumented":
                answer = _json(
                    {**(answer.payload or {}), "respcd": UNDOCUMENTED_RESPCD, "resperr": "undocumented"},
                    merchant.client_key,
                    answer.keys,
                    answer.delay,
                )
                answer.fault = fault.kind
        return answer

    def _take_fault(self, path: str, concerned: tuple[str, ...]) -> Fault | None:
        """Consume the next scripted fault of the first concerned transaction it applies to."""
        for syssn in concerned:
            script, runtime = self._ledger[syssn].faults, self._runtime[syssn]
            if runtime.faults_used < len(script) and script[runtime.faults_used].applies_to(path):
                runtime.faults_used += 1
                return script[runtime.faults_used - 1]
        return None

    @staticmethod
    def _read_pairs(
        method: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> list[tuple[str, str]]:
        pairs = _parse_form(query)
        if method == "POST" and body:
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise _Reject("1103", "format error: body must be form-urlencoded")
            try:
                text = body.decode("ascii")
            except UnicodeDecodeError as exc:
                raise _Reject("1103", "format error: body must be percent-encoded") from exc
            pairs += _parse_form(text)
        return pairs

    @staticmethod
    def _check_mchid(params: Mapping[str, str], merchant: Merchant) -> None:
        sent = params.get("mchid") or None
        if merchant.mchid is None and sent is not None:
            raise _Reject("1104", "parameter error: mchid must not be sent")
        if merchant.mchid is not None and sent != merchant.mchid:
            raise _Reject("1104", "parameter error: mchid missing or not yours")

    def _visible(self, merchant: Merchant) -> list[Transaction]:
        return [t for t in self._ledger.values() if t.mchid == merchant.mchid]

    def _locate(self, syssn: str | None, out_trade_no: str | None, merchant: Merchant) -> Transaction | None:
        """The transaction named; raises 1267 when the two numbers name different ones."""
        visible = self._visible(merchant)
        by_syssn = next((t for t in visible if syssn and t.syssn == syssn), None)
        by_out = next((t for t in visible if out_trade_no and t.out_trade_no == out_trade_no), None)
        if syssn and out_trade_no and by_syssn is not None and by_syssn is not by_out:
            raise _Reject("1267")
        return by_syssn if syssn else by_out

    def _query_matches(self, params: Mapping[str, str], merchant: Merchant) -> list[Transaction]:
        syssns = _split_list(params.get("syssn"))
        outs = _split_list(params.get("out_trade_no"))
        pay_types = _split_list(params.get("pay_type"))
        windowed = self.search_windows and not syssns
        start, end = params.get("start_time") or "", params.get("end_time") or "\uffff"
        if windowed and _TXDTM.fullmatch(start) and "01" <= start[5:7] <= "12":
            end = min(end, _month_end(start))
        return [
            t
            for t in self._visible(merchant)
            if (not syssns or t.syssn in syssns)
            and (not outs or t.out_trade_no in outs)
            and (not pay_types or t.pay_type in pay_types)
            and (not windowed or start <= (t.sysdtm or t.txdtm) <= end)
        ]

    def _concerned(self, path: str, params: Mapping[str, str], merchant: Merchant) -> tuple[str, ...]:
        if path == QUERY:
            return tuple(t.syssn for t in self._query_matches(params, merchant))
        try:
            txn = self._locate(params.get("syssn"), params.get("out_trade_no"), merchant)
        except _Reject:
            return ()
        return (txn.syssn,) if txn is not None else ()

    def _cancel(
        self, path: str, params: Mapping[str, str], merchant: Merchant
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        syssn = params.get("syssn") or None
        out_trade_no = params.get("out_trade_no") or None
        txamt = params.get("txamt") or ""
        txdtm = params.get("txdtm") or ""
        if syssn is None and out_trade_no is None:
            raise _Reject("1104", "parameter error: syssn or out_trade_no required")
        if not txamt or not txdtm:
            raise _Reject("1104", "parameter error: txamt and txdtm required")
        if not _DIGITS.fullmatch(txamt) or int(txamt) <= 0:
            raise _Reject("1103", "format error: txamt")
        if not _TXDTM.fullmatch(txdtm):
            raise _Reject("1103", "format error: txdtm")
        txn = self._locate(syssn, out_trade_no, merchant)
        if txn is None:
            raise _Reject("1136")
        runtime = self._runtime[txn.syssn]
        kind = 2 if path == CLOSE else 1

        new_syssn = ""
        if int(txamt) != txn.txamt:
            respcd = "1266"
        elif kind == 2 and not txn.close_supported:
            respcd = "1297"
        elif txn.cancel_respcd is not None:
            respcd = txn.cancel_respcd
            if respcd in _ISSUES_SYSSN:
                new_syssn = self._new_reversal_syssn()
        elif txn.cancel != 0:
            respcd = "1264"
        elif (quirk := _AnomalyRules.on_cancel(txn, runtime, kind, self._new_reversal_syssn)) is not None:
            respcd, new_syssn = quirk
        elif runtime.pending_cancel:
            respcd, new_syssn = "1143", runtime.pending_syssn
        elif txn.state == "unpaid":
            new_syssn = self._new_reversal_syssn()
            if txn.in_progress_enquiries > 0:
                respcd = "1143"
                runtime.pending_cancel = kind
                runtime.pending_syssn = new_syssn
                runtime.pending_remaining = txn.in_progress_enquiries
            else:
                respcd = "0000"
                txn.cancel = kind
                runtime.applied += 1
        else:
            respcd = _STATE_CANCEL_RESPCD[txn.state]

        payload: dict[str, Any] = {}
        if new_syssn:
            payload["syssn"] = new_syssn
        payload.update(
            orig_syssn=txn.syssn,
            txamt=str(txn.txamt),
            txcurrcd=txn.txcurrcd,
            txdtm=txdtm,
            sysdtm=_now(),
            chnlsn="",
            respcd=respcd,
            resperr=RESPERR.get(respcd, "scripted answer"),
            respmsg="",
        )
        if kind == 2:
            payload["out_trade_no"] = txn.out_trade_no
        return payload, (txn.syssn,)

    def _query(self, params: Mapping[str, str], merchant: Merchant) -> dict[str, Any]:
        page = _int_param(params, "page", 1)
        page_size = _int_param(params, "page_size", 10)
        if page < 1 or not 1 <= page_size <= 100:
            raise _Reject("1104", "parameter error: page or page_size out of range")
        rows = [self._row(t) for t in self._query_matches(params, merchant)]
        if params.get("respcd"):
            rows = [r for r in rows if r["respcd"] == params["respcd"]]
        start = (page - 1) * page_size
        return {
            "respcd": "0000",
            "resperr": "success",
            "respmsg": "",
            "page": page,
            "page_size": page_size,
            "data": rows[start : start + page_size],
        }

    def _row(self, txn: Transaction) -> dict[str, str]:
        runtime = self._runtime[txn.syssn]
        if runtime.pending_cancel:
            if runtime.pending_remaining > 0:
                runtime.pending_remaining -= 1
            else:
                _complete_pending(txn, runtime)
        respcd, errmsg = _ROW_RESPCD[txn.state]
        cancel = txn.cancel
        if cancel == 0 and txn.state == "refunded":
            cancel = 3
        paid = txn.state in ("paid", "refunded")
        row = {
            "syssn": txn.syssn,
            "out_trade_no": txn.out_trade_no,
            "order_type": "payment",
            "pay_type": txn.pay_type,
            "txamt": str(txn.txamt),
            "txcurrcd": txn.txcurrcd,
            "txdtm": txn.txdtm,
            "sysdtm": txn.sysdtm or txn.txdtm,
            "paydtm": txn.txdtm if paid else "",
            "respcd": respcd,
            "errmsg": errmsg,
            "cancel": str(cancel),
            "chnlsn": "",
            "origssn": "",
            "cash_fee": str(txn.txamt) if paid else "0",
            "cash_fee_type": txn.txcurrcd,
            "cash_refund_fee": str(txn.txamt) if txn.state == "refunded" else "0",
            "cash_refund_fee_type": txn.txcurrcd if txn.state == "refunded" else "",
            "exchange_rate": "",
        }
        return _AnomalyRules.on_row(txn, runtime, row)


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name) or ""
    if not value:
        return default
    if not _DIGITS.fullmatch(value):
        raise _Reject("1103", f"format error: {name}")
    return int(value)


def _early_fault_answer(fault: Fault, delay: float, keys: tuple[str, ...]) -> _Answer | None:
    """The answer of a fault that strikes before anything takes effect, else None."""
    if fault.kind == "http_5xx":
        answer = _plain(fault.status, f"{fault.status} Server Error", delay, keys)
    elif fault.kind == "http_429":
        answer = _plain(429, "429 Too Many Requests", delay, keys)
        answer.extra_headers["Retry-After"] = "1"
    elif fault.kind == "reset":
        answer = _Answer(0, b"", "", None, keys, delay, drop=True)
    else:
        return None
    answer.fault = fault.kind
    return answer


def _applied_then_5xx_answer(fault: Fault, decided: _Answer) -> _Answer:
    """The call took effect; the client reads HTTP ``fault.status`` instead of QFPay's answer. The
    decided answer stays in the call log (``Call.respcd``, ``Call.answer``)."""
    answer = _plain(fault.status, f"{fault.status} Server Error", decided.delay, decided.keys)
    answer.respcd, answer.payload, answer.fault = decided.respcd, decided.payload, fault.kind
    return answer


def _complete_pending(txn: Transaction, runtime: _Runtime) -> None:
    """The cancellation in progress ends: it takes effect (once, plus once per cancel that
    ``repeat_applies`` let start again), or, for a payment that had completed, ends without effect."""
    if not runtime.pending_fails:
        txn.cancel = runtime.pending_cancel
        runtime.applied += 1 + runtime.pending_extra
    runtime.pending_cancel = runtime.pending_extra = 0
    runtime.pending_fails = False


class _AnomalyRules:
    """How each ``Anomaly`` changes a cancel's answer and an Enquiry row (see "Anomalies")."""

    @staticmethod
    def on_cancel(
        txn: Transaction, runtime: _Runtime, kind: int, new_syssn: Callable[[], str]
    ) -> tuple[str, str] | None:
        """(respcd, new reversal syssn) when an anomaly decides the answer, else None."""
        anomaly = txn.anomaly
        if anomaly is None:
            return None
        if runtime.pending_cancel:
            if anomaly.kind != "repeat_applies":
                return None
            runtime.pending_extra += 1  # the row still reads live, so QFPay starts another one
            return "1143", new_syssn()
        if txn.state == "paid" and anomaly.kind in ("processing_while_paid", "undocumented_row"):
            syssn = new_syssn()
            runtime.pending_cancel, runtime.pending_syssn = kind, syssn
            runtime.pending_remaining = max(1, txn.in_progress_enquiries)
            runtime.pending_fails = anomaly.kind == "undocumented_row"
            return "1143", syssn
        return None

    @staticmethod
    def on_row(txn: Transaction, runtime: _Runtime, row: dict[str, str]) -> dict[str, str]:
        anomaly = txn.anomaly
        if anomaly is None or anomaly.kind != "undocumented_row" or not runtime.pending_cancel:
            return row
        if anomaly.row_value is None:
            row.pop(anomaly.row_field, None)
        else:
            row[anomaly.row_field] = anomaly.row_value
        return row


def _error(rejection: _Reject) -> dict[str, Any]:
    return {"respcd": rejection.respcd, "resperr": rejection.resperr, "respmsg": ""}


def _json(payload: Mapping[str, Any], client_key: str | None, keys: tuple[str, ...], delay: float) -> _Answer:
    body = json.dumps(payload).encode("utf-8")
    return _Answer(
        status=200,
        body=body,
        content_type="application/json; charset=UTF-8",
        respcd=str(payload["respcd"]),
        keys=keys,
        delay=delay,
        client_key=client_key,
        payload=dict(payload),
    )


def _plain(status: int, text: str, delay: float, keys: tuple[str, ...] = ()) -> _Answer:
    return _Answer(
        status=status,
        body=text.encode("ascii"),
        content_type="text/plain; charset=ascii",
        respcd=None,
        keys=keys,
        delay=delay,
    )


def _make_handler(standin: QFPayStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "QFPayStandIn/1.0"
        sys_version = ""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            headers = {name: self.headers[name] for name in _HEADERS if name in self.headers}
            answer = standin._handle(method, self.path, headers, body)
            if answer.delay > 0:
                time.sleep(answer.delay)
            if answer.drop:
                self._reset()
                return
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                if answer.client_key is not None and standin.sign_answers:
                    self.send_header("X-QF-SIGN", response_sign(answer.body, answer.client_key))
                for name, value in answer.extra_headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)
            except OSError:  # the client gave up (read timeout) and closed its end
                self.close_connection = True

        def _reset(self) -> None:
            """Close with SO_LINGER 0: the kernel sends RST, the client reads no answer."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: nothing about requests (or credentials) reaches the test output."""

    return Handler


_HEADERS = ("X-QF-APPCODE", "X-QF-SIGN", "X-QF-SIGNTYPE", "Content-Type")
