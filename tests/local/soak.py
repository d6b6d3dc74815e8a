"""``make soak`` (``python -m tests.local.soak``): evidence that nothing is lost and nothing is
reversed twice.

Pushes ``SOAK_N`` orders (default 2000, seeded by ``SOAK_SEED``) through the local pipeline
(:func:`tests.local.pipeline.local_pipeline`: moto running the real ASL, our handlers in-process,
SQS-to-Lambda delivery, the QFPay stand-in over real HTTP) while things go wrong on purpose:

* about 10 % of the orders are delivered twice: the same body sent again right after the original
  (same ``SendMessageBatch``, so usually the same Lambda batch) or 2-40 s later
  (``SOAK_LATER_SECONDS``);
* about 15 % of the orders meet QFPay faults: the stand-in's seeded ``FaultPlan`` gives their
  transactions a script of 1-2 faults (HTTP 5xx, HTTP 429, slow answers, connection resets before
  any effect, "applied but the client timed out", "applied then the connection dropped");
* 20 % of the cancellations are in progress at QFPay for 1-5 Enquiries (length drawn from the
  stand-in's seed) and go through the Step Functions wait-and-poll loop;
* a share are already paid, failed, closed, expired, refunded or cancelled, refused by bank risk
  control, not cancellable by close, unknown to QFPay, of the wrong amount, or not valid messages;
* now and then the cancel function crashes mid-batch (below).

Crash mechanism: :func:`tests.local.lambda_runtime.inject_crashes`. A seeded plan picks about
``SOAK_CRASH_SHARE`` of the cancel function's invocations (at least ``SOAK_MIN_CRASHES`` of those
with 2 or more records) and a point: after the k-th outbound HTTP request of the invocation
(QFPay or AWS; k drawn over the whole batch) or after the handler returned. From that point every
thread of the invocation dies at its next request (a request on the wire reaches QFPay or AWS, its
answer is thrown away), so finished records stay finished and records in flight stop where they
were, their orders held (their leases) until the invocation's deadline.
The invocation is reported ``Sandbox.Timedout`` (held until the function's timeout) or
``Runtime.ExitError`` (``signal: killed``), the sandbox is thrown away, nothing of the batch is
deleted, and every message of it comes back after the queue's visibility timeout, as with Lambda.
An invocation that simply runs past its timeout (under load) stops at its deadline the same way,
crash plan or not: nothing of it reaches QFPay or AWS after its deadline.

Deployed, the queue's visibility timeout (210 s) is several times the function's timeout (30 s),
so a redelivered message finds the crashed attempt's lease run out. The soak keeps
that relation at a local scale: it sets the cancel function's timeout to ``SOAK_FUNCTION_TIMEOUT``
(8 s) and the queue's visibility timeout to ``SOAK_VISIBILITY_TIMEOUT`` (24 s), lets retries back
off up to 8 s (``RETRY_MAX_DELAY_SECONDS``), so five receives span more than one function timeout,
and gives the loop a 90 s deadline (deployed: 900 s, about four visibility timeouts; the deadline
counts from the decision, so a hand-off replayed after a crash starts the loop with what is left).
The poll loop's waits stay the pipeline's short local ones (through configuration, never by
editing the ASL), and QFPay's per-container rate limit is raised to the highest the settings
accept (100/s, 400/min): the stand-in has no limit, and the producer paces itself.

Sending is paced (``SOAK_RATE`` orders/s, in bursts every 2 s, and no more than ``SOAK_MAX_OPEN``
undecided orders at once): the cancel function's two sandboxes may send 800 QFPay requests a minute
between them, and the whole pipeline shares one Python process on this machine. The run stops
by itself: when every order is decided or dead-lettered, the queue is empty and no loop is
running, or after ``SOAK_TIME_LIMIT`` seconds (default from ``SOAK_N`` and the rate).

Then every still-processing cancellation at QFPay is let end (``QFPayStandIn.settle``) and every
outcome is compared with the stand-in's ledger and call log (:func:`judge`; the QFPay facts it
relies on are in docs/soak.md):

* lost: an order with no outcome and no message in the dead-letter queue; with the rule
  ``one_outcome_identity``, also a payment whose outcomes carry several ``outcome_id`` values;
* double reversal: a transaction with ``cancellations_applied`` > 1, or QFPay receiving a cancel
  for it after an earlier one may have taken effect (answered 0000/1143/1145, a final answer, no
  answer, or a 5xx after taking effect) without a delivered Enquiry showing the payment still live
  (or unknown) in between, which is the documented condition for a resend; with the rule
  ``pending_blocks_resend`` that Enquiry must also have been served while no cancel of ours was in
  progress at QFPay. A resend after an answer the stand-in gives only when nothing happened (its
  plain HTTP 5xx/429, a "try later" code, 1108) is SQS's documented retry;
* contradiction: CANCELLED or NOT_CHARGED while the ledger shows the customer charged or the
  payment still live (unpaid and not cancelled: the customer may yet pay), REFUND_REQUIRED while it
  shows the customer not charged, CANCELLED or REFUND_REQUIRED for a transaction QFPay never had,
  or two outcomes of one order with different statuses; with the rule ``proof_required``, also a
  status no answer of QFPay showed (:func:`unproven`). An outcome that contradicts nothing but is
  not the one expected for the order's category (UNKNOWN after faults, CANCELLED for a payment that
  ended by itself) is listed apart, as "unexpected".

Strict fault kinds (``STRICT_FAULT_KINDS``, each a category of orders) and judge rules
(``STRICT_RULES``) are switched with ``SOAK_STRICT_FAULTS`` and ``SOAK_STRICT_RULES`` (``all``,
``none`` or a comma-separated list); unset, ``DEFAULT_STRICT_FAULTS`` / ``DEFAULT_STRICT_RULES``.

The report ends with exactly three lines, ``lost: N``, ``double_reversals: N``,
``contradictions: N``; the exit code is 1 when any of them is not 0 (2 when the harness itself
failed). Environment: ``SOAK_N``, ``SOAK_SEED``, ``SOAK_RATE``, ``SOAK_MAX_OPEN``,
``SOAK_CRASH_SHARE``, ``SOAK_MIN_CRASHES``, ``SOAK_FUNCTION_TIMEOUT``, ``SOAK_VISIBILITY_TIMEOUT``,
``SOAK_TIME_LIMIT``, ``SOAK_PROGRESS_SECONDS``, ``SOAK_LATER_SECONDS``, ``SOAK_STRICT_FAULTS``,
``SOAK_STRICT_RULES``.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

import boto3
from aws_lambda_powertools.utilities.batch.base import BasePartialProcessor

from tests.local import lambda_runtime
from tests.local.pipeline import Pipeline, local_pipeline
from tests.local.qfpay_standin import (
    APPLIED_FAULTS,
    CANCEL_ENDPOINTS,
    QUERY,
    Anomaly,
    Call,
    Fault,
    FaultKind,
    FaultPlan,
    State,
    Transaction,
)

__all__ = [
    "Ledger",
    "OrderEvidence",
    "PlannedOrder",
    "SoakConfig",
    "Verdict",
    "contradiction",
    "judge",
    "main",
    "plan_orders",
    "run_soak",
    "undocumented_cancels",
    "unproven",
]

STATUSES = ("CANCELLED", "NOT_CHARGED", "REFUND_REQUIRED", "REJECTED", "UNKNOWN")
REVERSAL_PAY_TYPES = ("800101", "801501", "800201", "800108")
CLOSE_PAY_TYPES = ("800008", "800208", "801008")  # the template's default CLOSE_PAY_TYPES
TXDTM_DAY = "2026-11-26"

# category -> (share of the orders, statuses that are right for it)
CATEGORIES: dict[str, tuple[float, frozenset[str]]] = {
    "unpaid": (0.0, frozenset({"CANCELLED"})),  # whatever the others leave
    "in_progress": (0.20, frozenset({"CANCELLED"})),
    "paid": (0.07, frozenset({"REFUND_REQUIRED"})),
    "failed": (0.03, frozenset({"NOT_CHARGED"})),
    "closed": (0.03, frozenset({"NOT_CHARGED"})),
    "expired": (0.03, frozenset({"NOT_CHARGED"})),
    "refunded": (0.02, frozenset({"NOT_CHARGED"})),
    "already_cancelled": (0.02, frozenset({"NOT_CHARGED", "CANCELLED"})),
    "risk_refused": (0.01, frozenset({"UNKNOWN"})),
    "close_unsupported": (0.01, frozenset({"REJECTED"})),
    "unknown_to_qfpay": (0.02, frozenset({"REJECTED"})),
    "wrong_amount": (0.02, frozenset({"REJECTED"})),
    "invalid_message": (0.04, frozenset({"REJECTED"})),
    # QFPay refuses every cancel with HTTP 429 (its rate limit: nothing happens) for longer than
    # the retry horizon: the order is retried by time, then ends UNKNOWN, explained (no reason
    # for the DLQ). (A 503 may come after QFPay acted, so it goes to the loop.)
    "qfpay_unavailable": (0.005, frozenset({"UNKNOWN"})),
    # The strict fault kinds (STRICT_FAULT_KINDS): planned only when switched on.
    "applied_then_5xx": (0.02, frozenset({"CANCELLED"})),
    "applied_then_undocumented": (0.02, frozenset({"CANCELLED"})),
    "repeat_applies": (0.02, frozenset({"CANCELLED"})),
    "processing_while_paid": (0.02, frozenset({"CANCELLED"})),
    "undocumented_row": (0.02, frozenset({"REFUND_REQUIRED", "UNKNOWN"})),  # UNKNOWN: ours may apply
    "refused_but_live": (0.02, frozenset({"UNKNOWN"})),  # the payment stays live: nothing is proven
    "aliased_duplicate": (0.02, frozenset({"CANCELLED"})),
}

# Fault kinds that current code was shown to misread (issue 10). Each is a category of orders
# (above), planned only when switched on: SOAK_STRICT_FAULTS=all, or a comma-separated list.
STRICT_FAULT_KINDS: tuple[str, ...] = (
    "applied_then_5xx",  # HTTP 502/504 after the cancel took effect (or started)
    "applied_then_undocumented",  # a signed, undocumented respcd after the cancel took effect (or started)
    "repeat_applies",  # a cancel resent while one is processing takes effect again
    "processing_while_paid",  # our reversal processing while the row reads paid
    "undocumented_row",  # an Enquiry row with an undocumented respcd or cancel flag
    "refused_but_live",  # a "not paid"-style refusal while the payment stays live
    "aliased_duplicate",  # the same payment named by out_trade_no, then by syssn alone
)
# Judge rules stricter than the code on main passed when they were written; SOAK_STRICT_RULES.
STRICT_RULES: tuple[str, ...] = (
    "pending_blocks_resend",  # an Enquiry clears a resend only if no cancel of ours was pending
    "proof_required",  # CANCELLED / NOT_CHARGED / REFUND_REQUIRED only with QFPay's word for it
    "one_outcome_identity",  # every outcome of one order carries the same outcome_id
)
# What `make soak` and CI switch on by default: every kind and rule the code on main passes.
DEFAULT_STRICT_FAULTS: frozenset[str] = frozenset(
    {
        "applied_then_5xx",
        "applied_then_undocumented",
        "repeat_applies",
        "processing_while_paid",
        "undocumented_row",
        "refused_but_live",
        "aliased_duplicate",
    }
)
DEFAULT_STRICT_RULES: frozenset[str] = frozenset(
    {"pending_blocks_resend", "one_outcome_identity", "proof_required"}
)

# Answers after which QFPay certainly did nothing and the client knows it: resending is the
# documented retry (SQS redelivery; the signature retry after re-reading the secret).
_RETRY_RESPCDS = frozenset({"1100", "1101", "1108", "1205", "1252", "1254", "1295", "1296", "1297"})
_LIVE_ROW_RESPCDS = frozenset({"1143", "1145"})
# QFPay's documented proof, per status (its respcd table and the Enquiry's cancel flags):
# cancel 1 reversed, 2 cancelled/closed (older docs: 1 reversed, 2 refunded or closed), 3 refunded,
# 4 pre-auth finished, 5 partially refunded; row respcds of a payment that failed, closed,
# expired, was refunded or cancelled.
_CANCELLED_FLAGS = frozenset({"1", "2"})
_NOT_CHARGED_FLAGS = frozenset({"1", "2", "3"})
_STILL_CHARGED_FLAGS = frozenset({"4", "5"})
_NOT_CHARGED_ROW_RESPCDS = frozenset(
    {
        "1125",
        "1262",
        "1142",
        "1263",
        "1264",
        "1181",
        "1261",
        "1147",
        "1201",
        "1202",
        "1203",
        "1204",
        "1212",
        "2005",
    }
)
_REFUSED_AS_NOT_PAID = ("1261", "1147", "1201", "2005", "1142", "1181")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SoakConfig:
    n: int = 2000
    seed: int = 20261126
    rate: float = 5.0
    """Orders sent per second (in bursts every ``burst_seconds``)."""
    max_open: int = 120
    """No new order is sent while this many sent orders are still undecided."""
    duplicate_share: float = 0.10
    fault_share: float = 0.15
    in_progress_share: float = 0.20
    crash_share: float = 0.04
    """Share of the cancel function's invocations that crash."""
    min_crashes: int = 2
    function_timeout: int = 8
    visibility_timeout: int = 24
    time_limit: float | None = None
    progress_seconds: float = 10.0
    burst_seconds: float = 2.0
    later_seconds: float = 40.0
    """A later duplicate is sent 2..later_seconds after its original."""
    strict_faults: frozenset[str] = DEFAULT_STRICT_FAULTS
    """The STRICT_FAULT_KINDS planned (each a category of orders)."""
    strict_rules: frozenset[str] = DEFAULT_STRICT_RULES
    """The STRICT_RULES the judge applies."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SoakConfig:
        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            return float(raw) if raw else default

        defaults = cls()
        limit = env.get("SOAK_TIME_LIMIT", "").strip()
        return cls(
            n=int(number("SOAK_N", defaults.n)),
            seed=int(number("SOAK_SEED", defaults.seed)),
            rate=number("SOAK_RATE", defaults.rate),
            max_open=int(number("SOAK_MAX_OPEN", defaults.max_open)),
            crash_share=number("SOAK_CRASH_SHARE", defaults.crash_share),
            min_crashes=int(number("SOAK_MIN_CRASHES", defaults.min_crashes)),
            function_timeout=int(number("SOAK_FUNCTION_TIMEOUT", defaults.function_timeout)),
            visibility_timeout=int(number("SOAK_VISIBILITY_TIMEOUT", defaults.visibility_timeout)),
            time_limit=float(limit) if limit else None,
            progress_seconds=number("SOAK_PROGRESS_SECONDS", defaults.progress_seconds),
            later_seconds=number("SOAK_LATER_SECONDS", defaults.later_seconds),
            strict_faults=_switches(env, "SOAK_STRICT_FAULTS", STRICT_FAULT_KINDS, defaults.strict_faults),
            strict_rules=_switches(env, "SOAK_STRICT_RULES", STRICT_RULES, defaults.strict_rules),
        )

    @property
    def effective_time_limit(self) -> float:
        """Sending time at the configured rate, six times over (the producer also waits while too
        many orders are undecided, and every strict kind on lengthens orders), plus four minutes for
        the tail: a bound for a soak that hangs, not a target (CI's 300 orders took 342-449 s)."""
        if self.time_limit is not None:
            return self.time_limit
        return 240.0 + 6.0 * self.n / max(self.rate, 0.1)


def _switches(
    env: Mapping[str, str], name: str, known: Sequence[str], default: frozenset[str]
) -> frozenset[str]:
    """``all``, ``none`` or a comma-separated list of ``known`` names; unset: ``default``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw == "all":
        return frozenset(known)
    if raw == "none":
        return frozenset()
    chosen = frozenset(item.strip() for item in raw.split(",") if item.strip())
    unknown = sorted(chosen - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; known: all, none, {', '.join(known)}")
    return chosen


# --------------------------------------------------------------------------- the orders


@dataclass
class PlannedOrder:
    index: int
    category: str
    key: str
    """How outcomes name the order: its out_trade_no, else its syssn."""
    message: dict[str, Any]
    transaction: Transaction | None
    duplicate: str = ""
    """"", "same batch" or "later"."""
    message_ids: list[str] = field(default_factory=list)
    alias: dict[str, Any] | None = None
    """The duplicate's message when it names the payment another way (``aliased_duplicate``)."""

    @property
    def duplicate_message(self) -> dict[str, Any]:
        return self.alias if self.alias is not None else self.message

    @property
    def expected(self) -> frozenset[str]:
        return CATEGORIES[self.category][1]

    @property
    def names(self) -> tuple[str, ...]:
        """Every number QFPay calls may use for this order."""
        names = {self.key}
        if self.transaction is not None:
            names |= {self.transaction.syssn, self.transaction.out_trade_no}
        for name in ("syssn", "out_trade_no"):
            if isinstance(self.message.get(name), str):
                names.add(self.message[name])
        return tuple(sorted(names))


def plan_orders(config: SoakConfig) -> list[PlannedOrder]:
    """The orders of one soak, reproducible from ``config.seed``."""
    rng = random.Random(config.seed)
    n = config.n
    counts = {
        name: round(share * n) if name not in STRICT_FAULT_KINDS or name in config.strict_faults else 0
        for name, (share, _) in CATEGORIES.items()
    }
    if n >= 20:  # even a small soak has one order QFPay never answers, to check how it ends
        counts["qfpay_unavailable"] = max(1, counts["qfpay_unavailable"])
    counts["in_progress"] = round(config.in_progress_share * n)
    counts["unpaid"] = max(0, n - sum(v for k, v in counts.items() if k != "unpaid"))
    categories = [name for name, count in counts.items() for _ in range(count)][:n]
    rng.shuffle(categories)
    orders = [_plan_one(i, category, rng, config.seed) for i, category in enumerate(categories)]
    for order in rng.sample(orders, round(config.duplicate_share * len(orders))):
        order.duplicate = rng.choice(("same batch", "later"))
    aliases = random.Random(config.seed + 3)  # its own generator: the plan above stays as it was
    for order in orders:
        if order.category == "aliased_duplicate":
            assert order.transaction is not None
            order.duplicate = aliases.choice(("same batch", "later"))
            order.message.pop("syssn", None)
            order.message["out_trade_no"] = order.key = order.transaction.out_trade_no
            order.alias = {k: v for k, v in order.message.items() if k != "out_trade_no"}
            order.alias["syssn"] = order.transaction.syssn
    return orders


def _plan_one(index: int, category: str, rng: random.Random, seed: int) -> PlannedOrder:
    close = category == "close_unsupported" or rng.random() < 0.3
    pay_type = rng.choice(CLOSE_PAY_TYPES if close else REVERSAL_PAY_TYPES)
    syssn = f"{TXDTM_DAY.replace('-', '')}0001{seed % 10_000:04d}{index:010d}"
    out_trade_no = f"SOAK-{seed}-{index:05d}"
    txamt = rng.randint(100, 99_999)
    clock = rng.randrange(24 * 3600)
    txdtm = f"{TXDTM_DAY} {clock // 3600:02d}:{clock // 60 % 60:02d}:{clock % 60:02d}"
    naming = rng.random()
    message: dict[str, Any] = {"txamt": txamt, "txdtm": txdtm, "pay_type": pay_type, "txcurrcd": "HKD"}
    if naming < 0.85 or category == "invalid_message":
        message.update(out_trade_no=out_trade_no, syssn=syssn)
    elif naming < 0.95:
        message["out_trade_no"] = out_trade_no
    else:
        message["syssn"] = syssn
    key = str(message.get("out_trade_no") or message["syssn"])
    state: State = "unpaid"
    script: dict[str, Any] = {}
    if category == "in_progress":
        script["in_progress_range"] = (1, 5)
    elif category in ("paid", "failed", "closed", "expired", "refunded"):
        state = category  # type: ignore[assignment]
    elif category == "already_cancelled":
        script["cancel"] = 2 if close else 1
    elif category == "risk_refused":
        script["cancel_respcd"] = "1294"
    elif category == "close_unsupported":
        script["close_supported"] = False
    elif category == "qfpay_unavailable":
        script["faults"] = (Fault("http_429", CANCEL_ENDPOINTS),) * 40
    elif category in STRICT_FAULT_KINDS:
        state = _plan_strict(category, rng, script)
    elif category == "wrong_amount":
        message["txamt"] = txamt + rng.randint(1, 50)
    elif category == "invalid_message":
        spoil = rng.choice(("txamt text", "txamt zero", "txamt negative", "txdtm format", "no txamt"))
        if spoil == "txamt text":
            message["txamt"] = "12.50"
        elif spoil == "txamt zero":
            message["txamt"] = 0
        elif spoil == "txamt negative":
            message["txamt"] = -txamt
        elif spoil == "txdtm format":
            message["txdtm"] = f"26/11/2026 {txdtm[-8:]}"
        else:
            del message["txamt"]
    transaction = None
    if category not in ("unknown_to_qfpay", "invalid_message"):
        transaction = Transaction(
            syssn=syssn,
            out_trade_no=out_trade_no,
            txamt=txamt,
            txdtm=txdtm,
            pay_type=pay_type,
            state=state,
            **script,
        )
    return PlannedOrder(index, category, key, message, transaction)


def _plan_strict(category: str, rng: random.Random, script: dict[str, Any]) -> State:
    """The transaction of a strict fault kind's order: fills ``script``, returns its state."""
    if category == "applied_then_5xx":
        script["faults"] = (Fault("applied_then_5xx", CANCEL_ENDPOINTS, status=rng.choice((502, 504))),)
        if rng.random() < 0.5:
            script["in_progress_range"] = (1, 4)
    elif category == "applied_then_undocumented":
        script["faults"] = (Fault("applied_then_undocumented", CANCEL_ENDPOINTS),)
        if rng.random() < 0.5:
            script["in_progress_range"] = (1, 4)
    elif category == "repeat_applies":
        script["anomaly"] = Anomaly("repeat_applies")
        script["in_progress_range"] = (2, 5)
        lost: tuple[FaultKind, ...] = ("applied_then_reset", "applied_then_timeout", "applied_then_5xx")
        if rng.random() < 0.75:  # our first cancel's answer is lost: the loop may be tempted
            script["faults"] = (Fault(rng.choice(lost), CANCEL_ENDPOINTS, status=502),)
    elif category == "processing_while_paid":
        script["anomaly"] = Anomaly("processing_while_paid")
        script["in_progress_range"] = (1, 4)
        return "paid"
    elif category == "undocumented_row":
        field_, value = rng.choice(
            (("respcd", "9999"), ("respcd", "1205"), ("respcd", None), ("cancel", "7"), ("cancel", "9"))
        )
        script["anomaly"] = Anomaly("undocumented_row", field_, value)
        script["in_progress_range"] = (1, 3)
        return "paid"
    elif category == "refused_but_live":
        script["cancel_respcd"] = rng.choice(_REFUSED_AS_NOT_PAID)
    return "unpaid"


# --------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Ledger:
    """What the stand-in's ledger says about one order's transaction at the end."""

    exists: bool
    state: str | None = None
    cancel: int = 0
    applied: int = 0

    @classmethod
    def of(cls, txn: Transaction | None, applied: int) -> Ledger:
        if txn is None:
            return cls(exists=False)
        return cls(exists=True, state=txn.state, cancel=txn.cancel, applied=applied)

    @property
    def charged(self) -> bool:
        return self.exists and self.cancel == 0 and self.state == "paid"

    @property
    def live(self) -> bool:
        """Not paid, not cancelled: the customer may still pay."""
        return self.exists and self.cancel == 0 and self.state == "unpaid"

    @property
    def not_charged(self) -> bool:
        return self.exists and not self.charged and not self.live

    def describe(self) -> str:
        if not self.exists:
            return "no such transaction"
        cancelled = f", cancel flag {self.cancel}" if self.cancel else ", not cancelled"
        return f"{self.state}{cancelled}, cancellations applied {self.applied}"


def contradiction(status: str, ledger: Ledger) -> str | None:
    """Why an outcome contradicts the ledger, else None (REJECTED and UNKNOWN claim nothing)."""
    if not ledger.exists:
        if status in ("CANCELLED", "REFUND_REQUIRED"):
            return f"{status} for a transaction QFPay never had"
        return None
    if status in ("CANCELLED", "NOT_CHARGED") and (ledger.charged or ledger.live):
        return f"{status} but the ledger shows {ledger.describe()}"
    if status == "REFUND_REQUIRED" and not ledger.charged:
        return f"REFUND_REQUIRED but the ledger shows {ledger.describe()}"
    return None


def undocumented_cancels(
    calls: Sequence[Call], names: Sequence[str] = (), *, pending_blocks_resend: bool = True
) -> list[str]:
    """Cancels QFPay received for one order that no documented rule allows (see the module doc).

    ``calls``: the stand-in's calls about the order, in the order it logged them. ``names``:
    the order's numbers (to read its Enquiry row; empty: any row of the answer).
    ``pending_blocks_resend``: an Enquiry served while a cancel of ours was still in progress at
    QFPay clears nothing, however live the row looks (rule ``pending_blocks_resend``)."""
    problems: list[str] = []
    previous: str | None = None  # the cancel that may have taken effect, described
    for number, call in enumerate(calls, 1):
        if call.endpoint in CANCEL_ENDPOINTS:
            described = _describe(number, call)
            if previous is not None:
                problems.append(f"{described} sent after {previous} with no Enquiry {_CLEARS} in between")
            if not _certainly_without_effect(call):
                previous = described
        elif _shows_live_or_unknown(call, names) and not (pending_blocks_resend and _pending(call, names)):
            previous = None
    return problems


_CLEARS = "showing the payment live with nothing of ours pending"


def _describe(number: int, call: Call) -> str:
    name = call.endpoint.rsplit("/", 1)[-1]
    if not call.delivered:
        return f"{name} #{number} (no answer: {call.fault})"
    if call.fault in APPLIED_FAULTS:
        return f"{name} #{number} (HTTP {call.http_status} after taking effect)"
    if call.http_status != 200:
        return f"{name} #{number} (HTTP {call.http_status})"
    return f"{name} #{number} (respcd {call.respcd})"


def _certainly_without_effect(call: Call) -> bool:
    """Only what the stand-in guarantees did nothing, and the client could tell: a delivered
    "try later"/signature answer, or a non-200 the stand-in sent without taking effect (never a 5xx
    after the cancel took effect: from the client's side every 5xx may have)."""
    if not call.delivered or call.fault in APPLIED_FAULTS:
        return False
    return call.http_status != 200 or call.respcd in _RETRY_RESPCDS


def _rows(call: Call, names: Sequence[str]) -> list[Mapping[str, Any]] | None:
    """The order's rows in a delivered, successful Enquiry answer; None when there is none."""
    if not call.delivered or call.endpoint != QUERY or call.http_status != 200 or call.answer is None:
        return None
    if call.answer.get("respcd") != "0000":
        return None
    return [
        row
        for row in call.answer.get("data") or []
        if isinstance(row, Mapping)
        and (not names or row.get("syssn") in names or row.get("out_trade_no") in names)
    ]


def _shows_live_or_unknown(call: Call, names: Sequence[str]) -> bool:
    rows = _rows(call, names)
    if rows is None:
        return False
    if not rows:
        return True  # QFPay has no record of it: nothing there to reverse
    return any(str(row.get("cancel")) == "0" and row.get("respcd") in _LIVE_ROW_RESPCDS for row in rows)


def _pending(call: Call, names: Sequence[str]) -> bool:
    return bool(call.pending) if not names else any(syssn in names for syssn in call.pending)


def unproven(status: str, calls: Sequence[Call], names: Sequence[str] = ()) -> str | None:
    """Why QFPay never showed ``status`` for the order, else None (rule ``proof_required``).

    CANCELLED needs an Enquiry row with cancel flag 1 or 2; NOT_CHARGED a row with flag 1, 2 or 3
    or a documented failed/closed/expired/refunded/cancelled respcd (flag 0); REFUND_REQUIRED a
    reversal/close answered 1260 (already paid), or a row paid (0000, flag 0) or flag 4 or 5.
    A row whose respcd or flag QFPay does not document proves nothing. REJECTED and UNKNOWN
    claim nothing about the customer."""
    if status not in ("CANCELLED", "NOT_CHARGED", "REFUND_REQUIRED"):
        return None
    for call in calls:
        if status == "REFUND_REQUIRED" and _answered_already_paid(call):
            return None
        for row in _rows(call, names) or []:
            if _row_proves(status, row):
                return None
    return f"{status} with no answer from QFPay that shows it"


def _answered_already_paid(call: Call) -> bool:
    return (
        call.endpoint in CANCEL_ENDPOINTS
        and call.delivered
        and call.http_status == 200
        and call.respcd == "1260"
    )


def _row_proves(status: str, row: Mapping[str, Any]) -> bool:
    if "cancel" not in row or "respcd" not in row:
        return False
    cancel, respcd = str(row["cancel"]), str(row["respcd"])
    if status == "CANCELLED":
        return cancel in _CANCELLED_FLAGS
    if status == "NOT_CHARGED":
        return cancel in _NOT_CHARGED_FLAGS or (cancel == "0" and respcd in _NOT_CHARGED_ROW_RESPCDS)
    return cancel in _STILL_CHARGED_FLAGS or (cancel == "0" and respcd == "0000")


class OutcomeSeen(NamedTuple):
    """One outcome event of an order, as a finding shows it (where an identity came from)."""

    outcome_id: str
    status: str
    decided_by: str
    reason: str

    def describe(self) -> str:
        reason = " ".join(self.reason.split())  # one line in the report
        return f"{self.outcome_id[:8]} {self.status} by {self.decided_by}: {reason[:120]}"


@dataclass
class OrderEvidence:
    """Everything known about one order at the end of the soak."""

    key: str
    category: str
    expected: frozenset[str]
    statuses: list[str]
    """The status of every outcome event seen for the order, in arrival order."""
    dead_lettered: int
    ledger: Ledger
    calls: list[Call]
    names: tuple[str, ...] = ()
    detail: str = ""
    """For the report only: what happened to the order, in a few words."""
    outcome_ids: list[str] = field(default_factory=list)
    """The ``outcome_id`` of every outcome event seen for the order."""
    one_identity: bool = True
    """False for a message that names no valid order (its REJECTED is keyed by the message)."""
    outcomes: list[OutcomeSeen] = field(default_factory=list)
    """Every outcome event seen for the order, in arrival order (for the report's findings)."""
    history: str = ""
    """For the report only: the order's faults, QFPay calls, crashes and duplicates."""


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    double_reversals: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    repeated_outcomes: int = 0
    by_category: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Per category of order: how many of its orders are lost / double_reversals / contradictions."""

    def count(self, category: str, counter: str) -> None:
        self.by_category[category][counter] += 1


def judge(evidence: Sequence[OrderEvidence], rules: Collection[str] = STRICT_RULES) -> Verdict:
    """Counts what went wrong; ``rules``: the STRICT_RULES applied (default: all of them)."""
    unknown = sorted(set(rules) - set(STRICT_RULES))
    if unknown:
        raise ValueError(f"unknown judge rules {unknown}")
    verdict = Verdict()
    for order in evidence:
        label = f"{order.key} ({order.category})"
        if not order.statuses and not order.dead_lettered:
            verdict.lost.append(f"{label}: no outcome and nothing in the DLQ{_outcome_events(order)}")
            verdict.count(order.category, "lost")
        elif "one_outcome_identity" in rules and order.one_identity and len(set(order.outcome_ids)) > 1:
            ids = ", ".join(sorted(set(order.outcome_ids)))
            verdict.lost.append(
                f"{label}: one payment, several outcome identities ({ids}){_outcome_events(order)}"
            )
            verdict.count(order.category, "lost")
        if order.ledger.applied > 1:
            verdict.double_reversals.append(f"{label}: {order.ledger.applied} cancellations applied")
            verdict.count(order.category, "double_reversals")
        else:
            extra = undocumented_cancels(
                order.calls, order.names, pending_blocks_resend="pending_blocks_resend" in rules
            )
            if extra:
                verdict.double_reversals.append(f"{label}: " + "; ".join(extra))
                verdict.count(order.category, "double_reversals")
        verdict.repeated_outcomes += max(0, len(order.statuses) - 1)
        distinct = sorted(set(order.statuses))
        problems = [p for s in distinct if (p := contradiction(s, order.ledger)) is not None]
        if "proof_required" in rules:
            problems += [p for s in distinct if (p := unproven(s, order.calls, order.names)) is not None]
        if len(distinct) > 1:
            problems.append(f"outcomes disagree: {', '.join(order.statuses)}")
        if problems:
            verdict.contradictions.append(f"{label}: " + "; ".join(problems))
            verdict.count(order.category, "contradictions")
        elif order.statuses and distinct[0] not in order.expected:
            wanted = "/".join(sorted(order.expected)) or "the DLQ"
            more = f" ({order.detail})" if order.detail else ""
            verdict.unexpected.append(f"{label}: {distinct[0]}, expected {wanted}{more}")
    return verdict


# --------------------------------------------------------------------------- running


@dataclass
class _Crashes:
    """The crash plan handed to the local Lambda runtime, and what it decided."""

    function_name: str
    share: float
    minimum: int
    rng: random.Random
    planned: list[tuple[tuple[str, ...], lambda_runtime.Crash]] = field(default_factory=list)
    invocations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, function_name: str, event: Any) -> lambda_runtime.Crash | None:
        if function_name != self.function_name or not isinstance(event, dict):
            return None
        ids = tuple(str(r.get("messageId")) for r in event.get("Records", []) if isinstance(r, dict))
        with self.lock:
            self.invocations += 1
            draw = self.rng.random()
            forced = len(self.planned) < self.minimum and len(ids) >= 2 and self.invocations > 1
            if not (forced or draw < self.share) or not ids:
                return None
            after = None if self.rng.random() < 0.2 else self.rng.randint(1, 8 * len(ids))
            kind = self.rng.choice(("Sandbox.Timedout", "Runtime.ExitError"))
            crash = lambda_runtime.Crash(after_requests=after, error_type=kind)
            self.planned.append((ids, crash))
            return crash


class _LogCapture(logging.Handler):
    """Keeps the functions' log records (as their JSON) and keeps them off stdout."""

    def __init__(self, logger_name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger_name)
        self.records: list[dict[str, Any]] = []
        self._muted: list[logging.Handler] = []
        self._saved_level = self.logger.level
        self._records_lock = threading.Lock()

    def __enter__(self) -> _LogCapture:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        for handler in self._muted:
            handler.removeFilter(_drop)
        self.logger.setLevel(self._saved_level)

    def emit(self, record: logging.LogRecord) -> None:
        formatter: logging.Formatter | None = None
        for handler in self.logger.handlers:
            if handler is self:
                continue
            formatter = formatter or handler.formatter
            if handler not in self._muted:
                handler.addFilter(_drop)
                self._muted.append(handler)
        try:
            text = (formatter or logging.Formatter()).format(record)
            entry = json.loads(text)
        except (ValueError, TypeError):
            entry = {"message": record.getMessage()}
        if not isinstance(entry, dict):
            entry = {"message": str(entry)}
        entry["_at"] = record.created
        entry.setdefault("level", record.levelname)
        with self._records_lock:
            self.records.append(entry)


def _drop(record: logging.LogRecord) -> bool:
    return False


class _RecordFailures:
    """Every record the batch processor marked failed, with its exception (harness-side patch of
    Powertools' ``failure_handler``: the service logs only the failures it expects)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._original: Any = None

    def __enter__(self) -> _RecordFailures:
        self._original = BasePartialProcessor.failure_handler
        original, entries, lock = self._original, self.entries, self._lock

        def failure_handler(processor: Any, record: Any, exception: Any) -> Any:
            kind, value = exception[0], exception[1]
            entry = {
                "message_id": getattr(record, "message_id", None),
                "_at": time.time(),
                "error": f"{getattr(kind, '__name__', kind)}: {value}"[:200],
            }
            with lock:
                entries.append(entry)
            return original(processor, record=record, exception=exception)

        BasePartialProcessor.failure_handler = failure_handler  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        BasePartialProcessor.failure_handler = self._original  # type: ignore[method-assign]


# moto's ASL interpreter logs at ERROR every exception it evaluates, including the expected ones
# (an ``IsPresent`` test on a missing path, a Fail state): noise on stderr, not news.
_MOTO_ASL_LOGGER = "moto.stepfunctions.parser.asl.component.eval_component"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    target = logging.getLogger(name)
    saved = target.level
    target.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        target.setLevel(saved)


@dataclass
class _Run:
    """What one soak observed; :func:`run_soak` returns it."""

    config: SoakConfig
    orders: list[PlannedOrder]
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    ledger: dict[str, Ledger] = field(default_factory=dict)
    faults: dict[str, tuple[str, ...]] = field(default_factory=dict)
    invocations: list[lambda_runtime.Invocation] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    record_failures: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[tuple[tuple[str, ...], lambda_runtime.Crash]] = field(default_factory=list)
    executions: Counter[str] = field(default_factory=Counter)
    cancel_function_name: str = ""
    elapsed: float = 0.0
    stopped_by: str = ""
    harness_error: str | None = None
    peak_threads: int = 0
    peak_rss_mb: float = 0.0
    peak_running_executions: int = 0
    settled: int = 0
    """Cancellations still in progress at QFPay when the run stopped (ended before judging)."""
    reconciled: dict[str, int] = field(default_factory=dict)
    """The end-of-run reconciliation's summary (see :func:`_reconcile`)."""
    corrections: list[dict[str, Any]] = field(default_factory=list)
    """The corrected outcomes it published."""


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _Producer:
    """Sends originals at ``rate`` per second in bursts, duplicates when they fall due."""

    def __init__(self, pipeline: Pipeline, orders: Sequence[PlannedOrder], config: SoakConfig) -> None:
        self.sqs = boto3.client("sqs")
        self.queue_url = pipeline.stack.queue_url
        self.orders = list(orders)
        self.config = config
        self.rng = random.Random(config.seed + 1)
        self.next_original = 0
        self.credit = 0.0
        self.last_tick = time.monotonic()
        self.later: list[tuple[float, int]] = []  # (due, order index) of later duplicates
        self.sent_messages = 0
        self.message_to_order: dict[str, int] = {}

    @property
    def originals_sent(self) -> int:
        return self.next_original

    @property
    def done(self) -> bool:
        return self.next_original >= len(self.orders) and not self.later

    def tick(self, open_orders: int) -> None:
        now = time.monotonic()
        if now - self.last_tick >= self.config.burst_seconds or self.next_original == 0:
            self.credit = min(
                self.credit + (now - self.last_tick) * self.config.rate,
                self.config.rate * self.config.burst_seconds * 2,
            )
            self.last_tick = now
            batch: list[int] = []
            while (
                self.next_original < len(self.orders)
                and self.credit >= 1
                and open_orders + len(batch) < self.config.max_open
            ):
                order = self.orders[self.next_original]
                batch.append(order.index)
                if order.duplicate == "same batch":
                    batch.append(order.index)
                elif order.duplicate == "later":
                    delay = self.rng.uniform(2, max(2.0, self.config.later_seconds))
                    heapq.heappush(self.later, (now + delay, order.index))
                self.next_original += 1
                self.credit -= 1
            while self.later and self.later[0][0] <= now:
                batch.append(heapq.heappop(self.later)[1])
            self._send(batch)

    def _body(self, index: int, before: Sequence[int]) -> dict[str, Any]:
        """The order's message; its duplicate's once the original has been sent."""
        order = self.orders[index]
        return order.duplicate_message if order.message_ids or index in before else order.message

    def _send(self, indexes: Sequence[int]) -> None:
        for start in range(0, len(indexes), 10):
            chunk = indexes[start : start + 10]
            entries = [
                {"Id": str(n), "MessageBody": json.dumps(self._body(i, chunk[:n]))}
                for n, i in enumerate(chunk)
            ]
            answer = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            if answer.get("Failed"):
                raise RuntimeError(f"SendMessageBatch refused messages: {answer['Failed']}")
            for sent in answer.get("Successful", []):
                index = chunk[int(sent["Id"])]
                self.orders[index].message_ids.append(sent["MessageId"])
                self.message_to_order[sent["MessageId"]] = index
                self.sent_messages += 1


# docs/contracts.md: corrected outcomes (revision 2+) travel under a DetailType of their own.
CORRECTION_DETAIL_TYPE = "Payment Cancellation Outcome Correction"

_SOAK_ENVIRONMENT = {
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "QFPAY_MAX_REQUESTS_PER_SECOND": "100",
    "QFPAY_MAX_REQUESTS_PER_MINUTE": "400",
    "RETRY_BASE_DELAY_SECONDS": "1",
    "RETRY_MAX_DELAY_SECONDS": "8",
    # Retried by time: past this many seconds of QFPay not answering, the order ends UNKNOWN.
    "RETRY_HORIZON_SECONDS": "60",
    # Deployed, the loop's deadline (900 s) is about 4 visibility timeouts (210 s): a hand-off
    # replayed after a crash still leaves the loop most of its time; here it is 8 (24 s), so that
    # QFPay's settle time fits in it and the loop's resend after an unreadable cancel answer is
    # judged. The settle time is longer than the stand-in's longest cancellation in progress
    # (5 Enquiries, about 93 s of the loop's schedule), which is what the service assumes of
    # QFPay (docs/qfpay.md); the judge counts a resend while one is in progress all the same.
    "POLL_DEADLINE_SECONDS": "200",
    "QFPAY_SETTLE_SECONDS": "100",
    # At the end of the run every UNKNOWN is re-checked once, at once (deployed: 5 min, 1 h, daily).
    "RECONCILE_CHECKS_AFTER_SECONDS": "0",
}


def run_soak(config: SoakConfig, out: TextIO) -> _Run:
    """Run one soak; progress goes to ``out``. Never raises for what the pipeline does."""
    orders = plan_orders(config)
    run = _Run(config, orders)
    started = time.monotonic()
    with_ledger = [o for o in orders if o.transaction is not None]
    plan_share = min(1.0, config.fault_share * len(orders) / max(1, len(with_ledger)))
    fault_plan = FaultPlan(share=plan_share, slow_seconds=0.5, timeout_seconds=3.0)
    print(
        f"soak: {config.n} orders, seed {config.seed}, {config.rate:g} orders/s, "
        f"at most {config.max_open} undecided; function timeout {config.function_timeout} s, "
        f"visibility timeout {config.visibility_timeout} s; time limit {config.effective_time_limit:.0f} s",
        file=out,
        flush=True,
    )
    try:
        with (
            _LogCapture("qfpay-cancellation") as logs,
            _RecordFailures() as failures,
            _quiet(_MOTO_ASL_LOGGER),
            open(os.devnull, "w", encoding="utf-8") as sink,
            contextlib.redirect_stdout(sink),
            local_pipeline(env_overrides=_SOAK_ENVIRONMENT) as pipeline,
        ):
            _prepare(pipeline, config)
            pipeline.qfpay.configure_faults(seed=config.seed, plan=fault_plan)
            for order in with_ledger:
                assert order.transaction is not None
                drawn = pipeline.qfpay.add(order.transaction)
                order.transaction = drawn  # with its drawn in-progress length and fault script
            crashes = _Crashes(
                pipeline.stack.cancel_function_name,
                config.crash_share,
                config.min_crashes,
                random.Random(config.seed + 2),
            )
            lambda_runtime.inject_crashes(crashes)
            try:
                _drive(pipeline, run, config, started, out)
            finally:
                lambda_runtime.inject_crashes(None)
            run.crashes = list(crashes.planned)
            run.cancel_function_name = pipeline.stack.cancel_function_name
            run.calls = pipeline.qfpay.calls
            run.settled = pipeline.qfpay.settle()  # what QFPay's ledger ends as, cancellations done
            _reconcile(pipeline, run)  # after the calls were taken: the judge's evidence is unchanged
            for order in with_ledger:
                assert order.transaction is not None
                syssn = order.transaction.syssn
                snapshot = pipeline.qfpay.transaction(syssn)
                run.ledger[order.key] = Ledger.of(snapshot, pipeline.qfpay.cancellations_applied(syssn))
                run.faults[order.key] = tuple(f.kind for f in snapshot.faults)
            run.invocations = lambda_runtime.invocations()
            run.executions = Counter(
                e["status"]
                for e in _executions(boto3.client("stepfunctions"), pipeline.stack.state_machine_arn)
            )
            run.logs = list(logs.records)
            run.record_failures = list(failures.entries)
    except Exception as exc:  # the harness, not the service: reported, and the run judged as it stands
        run.harness_error = f"{type(exc).__name__}: {exc}"
    run.elapsed = time.monotonic() - started
    return run


def _reconcile(pipeline: Pipeline, run: _Run) -> None:
    """The reconcile function, as its schedule would run it, until a pass finds nothing due: each
    UNKNOWN outcome is checked once against QFPay's settled ledger; the corrections it publishes
    are judged against that ledger too (:func:`reconciliation_contradictions`)."""
    lambda_ = boto3.client("lambda")
    totals: Counter[str] = Counter()
    for _ in range(20):
        answer = lambda_.invoke(FunctionName=pipeline.stack.reconcile_function_name, Payload=b"{}")
        summary = json.loads(answer["Payload"].read())
        if "FunctionError" in answer:
            raise RuntimeError(f"the reconcile function failed: {summary}")
        totals.update(summary)
        if not summary["checked"]:
            break
    run.reconciled = {key: totals[key] for key in ("checked", "resolved", "still_unknown")}
    run.corrections = [
        event["detail"]
        for event in pipeline.stack.read_outcome_events(wait_seconds=2.0, expected=totals["resolved"])
        if event.get("detail-type") == CORRECTION_DETAIL_TYPE
    ]


def reconciliation_contradictions(run: _Run) -> list[str]:
    """Corrected outcomes the settled ledger contradicts, judged like every first outcome."""
    owner = {name: order for order in run.orders for name in order.names}
    found = []
    for detail in run.corrections:
        named = {str(detail[n]) for n in ("out_trade_no", "syssn") if detail.get(n)}
        for order in {owner[n].index: owner[n] for n in named if n in owner}.values():
            why = contradiction(str(detail["status"]), run.ledger.get(order.key, Ledger(exists=False)))
            if why is not None:
                found.append(f"{order.key} ({order.category}) reconciled: {why}")
    return found


def _prepare(pipeline: Pipeline, config: SoakConfig) -> None:
    """Keep the deployed relation: a redelivery comes after a crashed attempt's lock expired."""
    boto3.client("lambda").update_function_configuration(
        FunctionName=pipeline.stack.cancel_function_name, Timeout=config.function_timeout
    )
    boto3.client("sqs").set_queue_attributes(
        QueueUrl=pipeline.stack.queue_url, Attributes={"VisibilityTimeout": str(config.visibility_timeout)}
    )


def _drive(pipeline: Pipeline, run: _Run, config: SoakConfig, started: float, out: TextIO) -> None:
    sqs = boto3.client("sqs")
    sfn = boto3.client("stepfunctions")
    producer = _Producer(pipeline, run.orders, config)
    decided: set[int] = set()
    dead: set[int] = set()
    dlq_seen: set[str] = set()
    key_to_index = {name: o.index for o in run.orders for name in o.names}
    next_check = next_progress = time.monotonic()
    quiet_since: float | None = None
    deadline = started + config.effective_time_limit
    while True:
        now = time.monotonic()
        producer.tick(producer.originals_sent - len(decided | dead))
        for detail in pipeline.stack.read_outcomes(wait_seconds=0.0):
            run.outcomes.append(detail)
            for name in ("out_trade_no", "syssn"):
                if detail.get(name) in key_to_index:
                    decided.add(key_to_index[detail[name]])
        if now < next_check:
            time.sleep(0.1)
            continue
        next_check = now + 2.0
        for message in _receive_all(sqs, pipeline.stack.dlq_url):
            if message["MessageId"] not in dlq_seen:
                dlq_seen.add(message["MessageId"])
                run.dead_letters.append(message)
                index = producer.message_to_order.get(message["MessageId"])
                if index is not None:
                    dead.add(index)
        depth = _queue_depth(sqs, pipeline.stack.queue_url)
        running = len(_executions(sfn, pipeline.stack.state_machine_arn, "RUNNING"))
        run.peak_threads = max(run.peak_threads, threading.active_count())
        run.peak_rss_mb = max(run.peak_rss_mb, _rss_mb())
        run.peak_running_executions = max(run.peak_running_executions, running)
        resolved = len(decided | dead)
        if now >= next_progress:
            next_progress = now + config.progress_seconds
            print(
                f"[{now - started:6.0f} s] sent {producer.originals_sent}/{len(run.orders)} orders "
                f"({producer.sent_messages} messages), decided {len(decided)}, dead-lettered {len(dead)}, "
                f"queue {depth}, loops running {running}, QFPay calls {len(pipeline.qfpay.calls)}, "
                f"crashes {len(lambda_runtime_crashes())}, threads {threading.active_count()}, "
                f"RSS {_rss_mb():.0f} MB",
                file=out,
                flush=True,
            )
        if producer.done and resolved >= len(run.orders) and depth == 0 and running == 0:
            if quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= 3.0:
                run.stopped_by = "every order decided or dead-lettered, queue empty, no loop running"
                break
        else:
            quiet_since = None
        if now >= deadline:
            run.stopped_by = f"time limit ({config.effective_time_limit:.0f} s) reached"
            break
    # Late stragglers: a repeated outcome published by a redelivery.
    run.outcomes.extend(pipeline.stack.read_outcomes(wait_seconds=1.0))


def lambda_runtime_crashes() -> list[lambda_runtime.Invocation]:
    """Invocations that ended as a crashed sandbox does."""
    return [i for i in lambda_runtime.invocations() if i.error in ("Sandbox.Timedout", "Runtime.ExitError")]


def _executions(sfn: Any, arn: str, status: str | None = None) -> list[dict[str, Any]]:
    """Every execution of the state machine (ListExecutions pages by 100)."""
    extra = {"statusFilter": status} if status else {}
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=arn, **extra)
    return [execution for page in pages for execution in page["executions"]]


def _receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message now visible; each stays invisible for an hour (only the soak reads the DLQ)."""
    messages: list[dict[str, Any]] = []
    while True:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=3600,
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        batch = answer.get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def _queue_depth(sqs: Any, queue_url: str) -> int:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)


def _outcome_events(order: OrderEvidence) -> str:
    """What a lost order's line adds: each of its outcome events, then what happened to it."""
    if not order.outcomes and not order.history:
        return ""
    events = " | ".join(seen.describe() for seen in order.outcomes) or "none"
    return f"; outcome events: {events}" + (f"; {order.history}" if order.history else "")


# --------------------------------------------------------------------------- evidence and report


def collect_evidence(run: _Run) -> list[OrderEvidence]:
    owner: dict[str, int] = {}
    for order in run.orders:
        for name in order.names:
            owner[name] = order.index
    calls_of: defaultdict[int, list[Call]] = defaultdict(list)
    for call in run.calls:
        named: set[str] = set(call.keys)
        for param in ("syssn", "out_trade_no"):
            named |= {v.strip() for v in call.params.get(param, "").split(",") if v.strip()}
        for index in {owner[n] for n in named if n in owner}:
            calls_of[index].append(call)
    statuses: defaultdict[int, list[str]] = defaultdict(list)
    identities: defaultdict[int, list[str]] = defaultdict(list)
    seen: defaultdict[int, list[OutcomeSeen]] = defaultdict(list)
    reasons: dict[int, str] = {}
    for detail in run.outcomes:
        # An outcome belongs to the order any of its numbers names (a payment may be named twice).
        named = {str(detail[n]) for n in ("out_trade_no", "syssn") if detail.get(n)}
        for index in sorted({owner[n] for n in named if n in owner}):
            statuses[index].append(str(detail.get("status")))
            identities[index].append(str(detail.get("outcome_id")))
            seen[index].append(
                OutcomeSeen(
                    str(detail.get("outcome_id")),
                    str(detail.get("status")),
                    str(detail.get("decided_by")),
                    str(detail.get("reason")),
                )
            )
            reasons.setdefault(index, f"{detail.get('decided_by')}: {detail.get('reason')}")
    dead_ids = {m["MessageId"] for m in run.dead_letters}
    history = {order.index: _order_history(order, run, calls_of.get(order.index, [])) for order in run.orders}
    return [
        OrderEvidence(
            key=order.key,
            category=order.category,
            expected=order.expected,
            statuses=statuses.get(order.index, []),
            dead_lettered=sum(1 for mid in order.message_ids if mid in dead_ids),
            ledger=run.ledger.get(order.key, Ledger(exists=False)),
            calls=calls_of.get(order.index, []),
            names=order.names,
            detail=f"{reasons.get(order.index) or 'no outcome'}; {history[order.index]}",
            outcome_ids=identities.get(order.index, []),
            one_identity=order.category != "invalid_message",
            outcomes=seen.get(order.index, []),
            history=history[order.index],
        )
        for order in run.orders
    ]


def _order_history(order: PlannedOrder, run: _Run, calls: Sequence[Call]) -> str:
    path = " ".join(
        f"{c.endpoint.rsplit('/', 1)[-1]}:{c.fault or c.respcd or c.http_status}" for c in calls[:12]
    )
    faults = ",".join(run.faults.get(order.key, ())) or "none"
    crashed = any(mid in ids for ids, _ in run.crashes for mid in order.message_ids)
    return (
        f"faults {faults}; calls {path or 'none'}"
        + ("; in a crashed batch" if crashed else "")
        + (f"; duplicated ({order.duplicate})" if order.duplicate else "")
    )


def dead_letter_reason(
    message_id: str,
    logs: Sequence[Mapping[str, Any]],
    invocations: Sequence[lambda_runtime.Invocation],
    failures: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Why the last failed attempt at this message failed. An attempt ends with the record's
    failure (the exception the batch processor caught, with the service's last log line about the
    message in that attempt, if any) or with the failure of the whole invocation (a crash);
    without failure records, the last log line about the message stands for the attempt."""
    said = sorted(
        (float(entry.get("_at", 0.0)), _log_text(entry))
        for entry in logs
        if entry.get("message_id") == message_id and entry.get("level") in ("INFO", "WARNING", "ERROR")
    )
    candidates: list[tuple[float, str]] = []
    mine = sorted((float(f["_at"]), str(f["error"])) for f in failures if f.get("message_id") == message_id)
    previous = 0.0
    for at, error in mine:
        during = [text for t, text in said if previous < t <= at]
        text = f"{during[-1]} [{error}]" if during else f"record failed, the service logged nothing: {error}"
        candidates.append((at, text))
        previous = at
    if not mine:
        candidates += said
    for invocation in invocations:
        records = invocation.payload.get("Records", []) if isinstance(invocation.payload, dict) else []
        if not any(isinstance(r, dict) and r.get("messageId") == message_id for r in records):
            continue
        ended = invocation.started_at + invocation.duration
        if invocation.error is not None:
            response = invocation.response if isinstance(invocation.response, dict) else {}
            lines = [x.strip() for x in str(response.get("errorMessage", "")).splitlines() if x.strip()]
            message, at = " ".join(lines)[:200], ended
            candidates.append(
                (at, f"invocation {invocation.request_id} failed: {invocation.error}: {message}")
            )
        elif isinstance(invocation.response, dict) and not mine:
            failed = invocation.response.get("batchItemFailures") or []
            logged = any(invocation.started_at <= t <= ended for t, _ in said)
            if not logged and any(
                isinstance(f, dict) and f.get("itemIdentifier") == message_id for f in failed
            ):
                candidates.append(
                    (
                        ended - 1e-6,
                        f"invocation {invocation.request_id} reported it failed, without a log line",
                    )
                )
    if not candidates:
        return "no failed attempt recorded for this message"
    return max(candidates, key=lambda c: c[0])[1]


def _log_text(entry: Mapping[str, Any]) -> str:
    text = f"log ({entry.get('level')}): {entry.get('message')}"
    detail = entry.get("reason") or entry.get("exception")
    return f"{text}: {detail}" if detail else text


def _loop_resends(run: _Run, evidence: Sequence[OrderEvidence]) -> Counter[str]:
    """Per category of order, how many orders' loop outcome says it sent the one further cancel."""
    category = {order.key: order.category for order in evidence}
    keys = {
        str(detail.get("out_trade_no") or detail.get("syssn"))
        for detail in run.outcomes
        if detail.get("decided_by") == "poll-loop" and detail.get("resent") is True
    }
    return Counter(category.get(key, "unknown") for key in keys)


def _attempts_mismatches(run: _Run, evidence: Sequence[OrderEvidence]) -> Counter[str]:
    """How often an outcome's ``attempts`` differs from the cancels QFPay logged for the order."""
    first: dict[str, dict[str, Any]] = {}
    for detail in run.outcomes:
        first.setdefault(str(detail.get("out_trade_no") or detail.get("syssn")), detail)
    mismatches: Counter[str] = Counter()
    for order in evidence:
        outcome = first.get(order.key)
        if outcome is None:
            continue
        received = sum(1 for c in order.calls if c.endpoint in CANCEL_ENDPOINTS)
        claimed = int(outcome.get("attempts") or 0)
        if claimed < received:
            mismatches["fewer"] += 1
        elif claimed > received:
            mismatches["more"] += 1
    return mismatches


def _percentile(values: Sequence[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def report(run: _Run, verdict: Verdict, evidence: Sequence[OrderEvidence], out: TextIO) -> None:
    orders = run.orders
    by_status = Counter(e.statuses[0] for e in evidence if e.statuses)
    duplicates = Counter(o.duplicate for o in orders if o.duplicate)
    faulted = {k: v for k, v in run.faults.items() if v}
    fault_kinds = Counter(kind for kinds in faulted.values() for kind in kinds)
    suffered = Counter(c.fault for c in run.calls if c.fault)
    cancel = [i for i in run.invocations if i.function_name == run.cancel_function_name]
    crashed = [i for i in cancel if i.error in ("Sandbox.Timedout", "Runtime.ExitError")]
    other_errors = Counter(
        f"{i.function_name.rsplit('-', 1)[-1]} {i.error}"
        for i in run.invocations
        if i.error is not None and i not in crashed
    )
    print("", file=out)
    print(f"stopped: {run.stopped_by or 'harness error'}", file=out)
    if run.harness_error:
        print(f"HARNESS ERROR: {run.harness_error}", file=out)
    print(
        f"orders: {len(orders)} ({sum(len(o.message_ids) for o in orders)} messages sent; "
        f"duplicated: {sum(duplicates.values())} = {duplicates['same batch']} in the same send, "
        f"{duplicates['later']} later)",
        file=out,
    )
    print(
        "orders by category: "
        + ", ".join(f"{k} {v}" for k, v in Counter(o.category for o in orders).items()),
        file=out,
    )
    print(
        "outcomes by status: "
        + ", ".join(f"{s} {by_status[s]}" for s in STATUSES)
        + f"; no outcome {sum(1 for e in evidence if not e.statuses)}",
        file=out,
    )
    print(
        f"outcome events: {len(run.outcomes)} ({verdict.repeated_outcomes} repeats of an order's outcome)",
        file=out,
    )
    resent = _loop_resends(run, evidence)
    print(
        f"orders the loop sent a second cancel: {sum(resent.values())}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(resent.items())) + ")" if resent else ""),
        file=out,
    )
    attempts = _attempts_mismatches(run, evidence)
    print(
        f"outcomes whose 'attempts' is not the number of cancels QFPay received for the order: "
        f"{sum(attempts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(attempts.items())) or '-'})",
        file=out,
    )
    print(
        f"QFPay faults drawn for {len(faulted)} transactions ({len(faulted) / max(1, len(orders)):.1%} of "
        f"the orders): " + ", ".join(f"{k} {v}" for k, v in sorted(fault_kinds.items())),
        file=out,
    )
    print("QFPay faults suffered: " + ", ".join(f"{k} {v}" for k, v in sorted(suffered.items())), file=out)
    in_progress = [o for o in orders if o.category == "in_progress" and o.transaction is not None]
    lengths = Counter(o.transaction.in_progress_enquiries for o in in_progress if o.transaction)
    print(
        f"in progress at QFPay: {len(in_progress)} orders, Enquiries until decided "
        + ", ".join(f"{k}: {v}" for k, v in sorted(lengths.items())),
        file=out,
    )
    print(
        f"cancel-function crashes: {len(crashed)} of {len(cancel)} invocations "
        f"({', '.join(f'{k} {v}' for k, v in Counter(i.error for i in crashed).items())}; "
        f"{len(run.crashes)} injected, {sum(len(ids) for ids, _ in run.crashes)} messages in their batches)"
        + (f"; other function errors: {dict(other_errors)}" if other_errors else ""),
        file=out,
    )
    lived = sorted(i.duration for i in cancel if i not in crashed)
    if lived:
        print(
            f"cancel invocations that lived: {len(lived)}, seconds p50 {lived[len(lived) // 2]:.2f} / "
            f"p95 {lived[min(len(lived) - 1, math.ceil(0.95 * len(lived)) - 1)]:.2f} / max {lived[-1]:.2f} "
            f"(function timeout {run.config.function_timeout} s)",
            file=out,
        )
    print(
        "loop executions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(run.executions.items()))
        + f" (at most {run.peak_running_executions} running at once); peak threads {run.peak_threads}, "
        f"peak RSS {run.peak_rss_mb:.0f} MB",
        file=out,
    )
    if verdict.unexpected:
        print(f"unexpected but not contradicting the ledger: {len(verdict.unexpected)}", file=out)
        for line in verdict.unexpected[:20]:
            print(f"  {line}", file=out)
    print(f"DLQ entries: {len(run.dead_letters)}", file=out)
    owner = {mid: o for o in orders for mid in o.message_ids}
    for message in run.dead_letters:
        mid = message["MessageId"]
        order = owner.get(mid)
        receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
        reason = dead_letter_reason(mid, run.logs, run.invocations, run.record_failures)
        name = f"{order.key} ({order.category})" if order else "unknown order"
        print(f"  {mid} {name}, received {receives} times: {reason}", file=out)
    for title, lines in (
        ("LOST", verdict.lost),
        ("DOUBLE REVERSAL", verdict.double_reversals),
        ("CONTRADICTION", verdict.contradictions),
    ):
        for line in lines[:50]:
            print(f"{title}: {line}", file=out)
    kinds = [k for k in STRICT_FAULT_KINDS if k in run.config.strict_faults]
    rules = [r for r in STRICT_RULES if r in run.config.strict_rules]
    print(
        f"strict fault kinds on: {', '.join(kinds) or '-'}; strict judge rules on: {', '.join(rules) or '-'}",
        file=out,
    )
    print(f"cancellations still in progress at QFPay at the end, then settled: {run.settled}", file=out)
    sizes = Counter(o.category for o in orders)
    print("findings by category (orders lost / double_reversals / contradictions):", file=out)
    for category in sorted(sizes):
        found = verdict.by_category.get(category, Counter())
        print(
            f"  {category}: {sizes[category]} orders, {found['lost']} / {found['double_reversals']} / "
            f"{found['contradictions']}",
            file=out,
        )
    per_order = [len(e.calls) for e in evidence]
    print(
        f"QFPay calls per order: mean {statistics.fmean(per_order):.2f} / "
        f"p95 {_percentile(per_order, 0.95)} / max {max(per_order)} (total {len(run.calls)})",
        file=out,
    )
    # Where the merchant's budget went: cancels and Enquiries per order, by category.
    spent: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in evidence:
        cancels = sum(1 for c in e.calls if c.endpoint in CANCEL_ENDPOINTS)
        spent[e.category].append((cancels, len(e.calls) - cancels))
    means = {
        k: (statistics.fmean(c for c, _ in v), statistics.fmean(q for _, q in v)) for k, v in spent.items()
    }
    print(
        "QFPay calls per order by category (cancels + Enquiries): "
        + ", ".join(f"{k} {c:.1f}+{q:.1f}" for k, (c, q) in sorted(means.items())),
        file=out,
    )
    if run.reconciled:
        statuses = Counter(str(d["status"]) for d in run.corrections)
        print(
            f"reconciled at the end: {run.reconciled['checked']} UNKNOWN checked, "
            f"{run.reconciled['resolved']} corrected ("
            + (", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none")
            + f"), {run.reconciled['still_unknown']} stayed UNKNOWN (needs attention)",
            file=out,
        )
    print(f"elapsed: {run.elapsed:.1f} s", file=out)
    print(f"lost: {len(verdict.lost)}", file=out)
    print(f"double_reversals: {len(verdict.double_reversals)}", file=out)
    print(f"contradictions: {len(verdict.contradictions)}", file=out, flush=True)


def main(env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = SoakConfig.from_env(os.environ if env is None else env)
    run = run_soak(config, out)
    evidence = collect_evidence(run)
    verdict = judge(evidence, config.strict_rules)
    verdict.contradictions.extend(reconciliation_contradictions(run))
    report(run, verdict, evidence, out)
    if verdict.lost or verdict.double_reversals or verdict.contradictions:
        return 1
    return 2 if run.harness_error else 0


if __name__ == "__main__":
    sys.exit(main())
