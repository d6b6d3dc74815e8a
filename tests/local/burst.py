"""``make burst``: a burst of order timeouts against QFPay's rate limits, through the whole local
pipeline (moto with the real ASL, our handlers, the template's queue and concurrency settings,
the QFPay stand-in enforcing 100 requests/s and 400/min per merchant with HTTP 429).

``BURST_N`` orders per merchant (default 2000) for ``BURST_MERCHANTS`` merchants (default 1; more
than one: one agent app code, a ``mchid`` each) are all sent at once; ``BURST_IN_PROGRESS_SHARE``
(default 0.05) of them are still processing at QFPay (the reversal answers 1143 and the loop's
Enquiries compete for the same budget). It prints the drain time of each merchant, the floor
(the time QFPay's limits need for 2 requests per order, a cancel and its confirming Enquiry, when
every request is sent at the earliest moment both windows allow) and their ratio, QFPay's 429
answers, the DLQ, UNKNOWN outcomes, lost orders (no outcome, not in the DLQ) and double
reversals, and writes a PNG of the orders remaining over time against the floor's line.

Time may be scaled: ``BURST_WINDOW_SCALE`` (default 1: QFPay's own windows) shortens QFPay's
windows (0.2: 100 per 0.2 s and 400 per 12 s) and every time setting of ours with them: the budget's windows
(``QFPAY_LIMIT_WINDOW_SCALE``), its pause after a 429, the retry backoff (base 10 s, most 900 s),
the retry horizon (6 h), the loop's waits and deadline (3 s, 60 s, 900 s) and QFPay's settle
time (120 s, ``QFPAY_SETTLE_SECONDS``), rounded to whole
seconds where the setting takes whole seconds. Network timeouts are not scaled. A scaled run asks
the local pipeline (moto in-process, every function in this process) for 1/scale times the
orders per second: at 0.2 that is more than two shared cores deliver, so its drain time measures
this machine, not the budget; CI runs a small burst at 0.2 for speed, and the drain ratio is
measured at scale 1 (docs/rate-limits.md).

``BURST_OUTAGE=1``: QFPay answers HTTP 503 to everything for a scaled 30 minutes
(``BURST_OUTAGE_SECONDS``, default 1800 x scale), starting ``BURST_OUTAGE_AFTER`` seconds into the
burst (default 10); every order must still be decided after it, none in the DLQ.

Ends with ``drain_ratio: R``, ``dlq: N``, ``qfpay_429: N``. Exits non-zero if an order was lost,
reversed twice or dead-lettered.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.local.pipeline import LOCAL_APP_CODE, LOCAL_CLIENT_KEY, Pipeline, local_pipeline
from tests.local.qfpay_limits import MerchantRateLimits, Outage
from tests.local.qfpay_standin import Merchant, Transaction

PER_SECOND, PER_MINUTE = 100, 400  # QFPay's documented per-merchant limits
REQUESTS_PER_ORDER = 2  # the cancel and its confirming Enquiry
TXDTM = "2026-11-26 10:00:00"


@dataclass(frozen=True)
class BurstConfig:
    orders: int = 2000
    merchants: int = 1
    in_progress_share: float = 0.05
    scale: float = 1.0
    outage: bool = False
    outage_seconds: float | None = None
    outage_after: float = 10.0
    timeout: float | None = None
    png: Path = Path("burst.png")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BurstConfig:
        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            return float(raw) if raw else default

        scale = number("BURST_WINDOW_SCALE", 1.0)
        if not 0.01 <= scale <= 1:
            raise ValueError("BURST_WINDOW_SCALE must be between 0.01 and 1")
        outage_seconds = env.get("BURST_OUTAGE_SECONDS", "").strip()
        timeout = env.get("BURST_TIMEOUT", "").strip()
        return cls(
            orders=int(number("BURST_N", 2000)),
            merchants=int(number("BURST_MERCHANTS", 1)),
            in_progress_share=number("BURST_IN_PROGRESS_SHARE", 0.05),
            scale=scale,
            outage=env.get("BURST_OUTAGE", "").strip() in ("1", "true"),
            outage_seconds=float(outage_seconds) if outage_seconds else None,
            outage_after=number("BURST_OUTAGE_AFTER", 10.0),
            timeout=float(timeout) if timeout else None,
            png=Path(env.get("BURST_PNG", "").strip() or "burst.png"),
        )

    @property
    def outage_length(self) -> float:
        return self.outage_seconds if self.outage_seconds is not None else 1800 * self.scale

    def environment(self) -> dict[str, str]:
        """Our settings, scaled with QFPay's windows (see the module doc)."""

        def whole(seconds: float, low: int = 1) -> str:
            return str(max(low, round(seconds * self.scale)))

        return {
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "QFPAY_LIMIT_WINDOW_SCALE": f"{self.scale:g}",
            "RETRY_BASE_DELAY_SECONDS": whole(10),
            "RETRY_MAX_DELAY_SECONDS": whole(900),
            "RETRY_HORIZON_SECONDS": whole(6 * 3600),
            "POLL_FIRST_WAIT_SECONDS": whole(3),
            "POLL_MAX_WAIT_SECONDS": whole(60),
            "POLL_BACKOFF_FACTOR": "2",
            "POLL_DEADLINE_SECONDS": whole(900, low=5),
            "QFPAY_SETTLE_SECONDS": whole(120),
            "ENQUIRY_ROUND_SECONDS": f"{5 * self.scale:g}",
        }


def floor_schedule(requests: int, scale: float = 1.0) -> list[float]:
    """When each of ``requests`` requests of one merchant may start at the earliest, sent as soon as
    both sliding windows (``PER_SECOND`` per second, ``PER_MINUTE`` per minute) allow."""
    second, minute = 1.0 * scale, 60.0 * scale
    starts: list[float] = []
    for k in range(requests):
        start = 0.0
        if k >= PER_SECOND:
            start = max(start, starts[k - PER_SECOND] + second)
        if k >= PER_MINUTE:
            start = max(start, starts[k - PER_MINUTE] + minute)
        starts.append(start)
    return starts


def floor_seconds(orders: int, scale: float = 1.0) -> float:
    """The floor: the last of the orders' 2 requests each cannot start earlier than this."""
    return floor_schedule(orders * REQUESTS_PER_ORDER, scale)[-1] if orders else 0.0


@dataclass
class MerchantPlan:
    name: str
    mchid: str | None
    transactions: list[Transaction]
    outcome_times: dict[str, float] = field(default_factory=dict)  # outcome_id -> seconds after start


def plan(config: BurstConfig) -> list[MerchantPlan]:
    plans = []
    in_progress_every = round(1 / config.in_progress_share) if config.in_progress_share > 0 else 0
    for m in range(config.merchants):
        mchid = f"BURSTMCH{m + 1}" if config.merchants > 1 else None
        transactions = [
            Transaction(
                syssn=f"2026112601{m:02d}0000{i:06d}",
                out_trade_no=f"BURST-{m + 1}-{i:06d}",
                txamt=100 + i,
                txdtm=TXDTM,
                pay_type="800101",
                mchid=mchid,
                in_progress_range=(1, 2) if in_progress_every and i % in_progress_every == 0 else None,
            )
            for i in range(config.orders)
        ]
        plans.append(MerchantPlan(mchid or "merchant", mchid, transactions))
    return plans


@dataclass
class BurstResult:
    drain: dict[str, float]
    floor: float
    ratio: float
    qfpay_429: int
    dlq: int
    unknown: int
    lost: int
    doubles: int
    statuses: Counter[str]
    reasons: Counter[str]
    decided_after_recovery: float | None
    timeline: dict[str, list[tuple[float, int]]]
    dead_letters: list[str] = field(default_factory=list)  # what the DLQ holds (the first 10)


def run_burst(config: BurstConfig, out: Any = sys.stdout) -> BurstResult:
    plans = plan(config)
    transactions = [t for p in plans for t in p.transactions]
    total = len(transactions)
    limits = MerchantRateLimits(PER_SECOND, PER_MINUTE, scale=config.scale)
    outage = Outage()
    # One merchant: its own credentials, no mchid. More: one agent app code, a mchid each.
    first = Merchant(app_code=LOCAL_APP_CODE, client_key=LOCAL_CLIENT_KEY, mchid=plans[0].mchid)
    others = [Merchant(LOCAL_APP_CODE, LOCAL_CLIENT_KEY, mchid=p.mchid) for p in plans[1:]]
    floor = floor_seconds(config.orders, config.scale)
    timeout = config.timeout or max(300.0, 10 * floor + (config.outage_length if config.outage else 0) * 3)
    print(
        f"Burst: {config.orders} orders x {config.merchants} merchant(s), "
        f"{config.in_progress_share:.0%} in progress at QFPay; QFPay's windows x{config.scale:g} "
        f"({PER_SECOND} per {config.scale:g} s, {PER_MINUTE} per {60 * config.scale:g} s)"
        + (
            f"; outage of {config.outage_length:g} s after {config.outage_after:g} s" if config.outage else ""
        ),
        file=out,
        flush=True,
    )
    with local_pipeline(
        transactions,
        env_overrides=config.environment(),
        merchant=first,
        sub_merchants=others,
        rate_limits=limits,
        outage=outage,
    ) as pipeline:
        by_id = _outcome_ids(pipeline, plans)
        started = time.monotonic()

        def read_outcomes() -> None:
            for detail in _read_outcomes(pipeline):
                pipeline.outcomes.setdefault(detail["outcome_id"], detail)
                owner = by_id.get(detail["outcome_id"])
                if owner is not None:
                    owner.outcome_times.setdefault(detail["outcome_id"], time.monotonic() - started)

        # Outcomes are read while the burst is still being sent: each is timed when it is published
        # (give or take a read), and the observer queue never holds a backlog (moto's receive reads
        # the whole queue, so a backlog of thousands made each read take seconds).
        _send_all(pipeline, transactions, between_batches=read_outcomes)
        sent = time.monotonic() - started
        print(f"All {total} sent in {sent:.1f} s; draining ...", file=out, flush=True)
        recovered_at: float | None = None
        last_print = 0.0
        while True:
            elapsed = time.monotonic() - started
            if config.outage and recovered_at is None:
                if config.outage_after <= elapsed < config.outage_after + config.outage_length:
                    outage.active = True
                elif elapsed >= config.outage_after + config.outage_length:
                    outage.active = False
                    recovered_at = elapsed
            read_outcomes()
            now = time.monotonic() - started
            decided = sum(len(p.outcome_times) for p in plans)
            if now - last_print >= 10:
                last_print = now
                print(
                    f"  {now:6.1f} s: {decided}/{total} decided, 429s {limits.refused()}",
                    file=out,
                    flush=True,
                )
            if decided >= total and (not config.outage or recovered_at is not None):
                break
            if now > timeout:
                print(f"Timed out after {timeout:.0f} s", file=out, flush=True)
                break
        dlq = pipeline.dead_letters_count()
        dead_letters = [_describe_dead_letter(m) for m in pipeline.dead_letters()] if dlq else []
        doubles = sum(1 for t in transactions if pipeline.qfpay.cancellations_applied(t.syssn) > 1)
        outcomes = [pipeline.outcomes[i] for p in plans for i in p.outcome_times]
    drain = {p.name: max(p.outcome_times.values(), default=math.inf) for p in plans}
    undecided = total - len(outcomes)
    statuses = Counter(o["status"] for o in outcomes)
    reasons = Counter(o["reason"].split(":")[0][:90] for o in outcomes if o["status"] == "UNKNOWN")
    ratio = max(drain.values()) / floor if floor else math.inf
    after = (max(drain.values()) - recovered_at) if recovered_at is not None and not undecided else None
    return BurstResult(
        drain=drain,
        floor=floor,
        ratio=ratio,
        qfpay_429=limits.refused(),
        dlq=dlq,
        unknown=statuses.get("UNKNOWN", 0),
        lost=max(0, undecided - dlq),
        doubles=doubles,
        statuses=statuses,
        reasons=reasons,
        decided_after_recovery=after,
        timeline={p.name: _remaining_over_time(p, config.orders) for p in plans},
        dead_letters=dead_letters,
    )


def _remaining_over_time(merchant: MerchantPlan, orders: int) -> list[tuple[float, int]]:
    """Orders without an outcome, stepping down at each outcome's time."""
    times = sorted(merchant.outcome_times.values())
    return [(0.0, orders), *((t, orders - n) for n, t in enumerate(times, start=1))]


def _describe_dead_letter(message: dict[str, Any]) -> str:
    """Which order a dead letter was, and how often it was received (never its body's token)."""
    try:
        body = json.loads(message["Body"])
    except ValueError:
        body = {}
    order = body if isinstance(body, dict) else {}
    receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
    return f"out_trade_no={order.get('out_trade_no')} receives={receives}"


def _read_outcomes(pipeline: Pipeline) -> list[dict[str, Any]]:
    """What the outcome observer queue holds now, at most 100 (read as they arrive, so that each
    outcome's time is when it was published, give or take a poll)."""
    sqs = boto3.client("sqs")
    details: list[dict[str, Any]] = []
    for _ in range(10):
        messages = sqs.receive_message(
            QueueUrl=pipeline.stack.outcome_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            time.sleep(0.2)
            break
        for message in messages:
            detail = json.loads(message["Body"]).get("detail")
            details.append(json.loads(detail) if isinstance(detail, str) else detail)
        sqs.delete_message_batch(
            QueueUrl=pipeline.stack.outcome_queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )
    return details


def _outcome_ids(pipeline: Pipeline, plans: list[MerchantPlan]) -> dict[str, MerchantPlan]:
    # The outcome_id is derived from the order identity: the same function the service uses.
    from cancellation.orders import parse_order_message  # noqa: PLC0415 - the layer is on sys.path now
    from cancellation.outcomes import outcome_id  # noqa: PLC0415

    del pipeline
    return {
        outcome_id(parse_order_message(json.dumps(t.order_message())).identity): p
        for p in plans
        for t in p.transactions
    }


def _send_all(
    pipeline: Pipeline, transactions: list[Transaction], between_batches: Callable[[], None]
) -> None:
    sqs = boto3.client("sqs")
    # Interleave the merchants, as their timeouts would arrive.
    pending = deque(t for group in zip(*_by_merchant(transactions).values(), strict=False) for t in group)
    for batch in itertools.count():
        if not pending:
            return
        if batch % 10 == 9:
            between_batches()
        chunk = [pending.popleft() for _ in range(min(10, len(pending)))]
        answer = sqs.send_message_batch(
            QueueUrl=pipeline.stack.queue_url,
            Entries=[
                {"Id": str(n), "MessageBody": json.dumps(t.order_message())} for n, t in enumerate(chunk)
            ],
        )
        if answer.get("Failed"):
            raise RuntimeError(f"SendMessageBatch refused messages: {answer['Failed']}")


def _by_merchant(transactions: list[Transaction]) -> dict[str | None, list[Transaction]]:
    groups: dict[str | None, list[Transaction]] = {}
    for t in transactions:
        groups.setdefault(t.mchid, []).append(t)
    return groups


def write_png(path: Path, result: BurstResult, config: BurstConfig) -> None:
    import matplotlib  # noqa: PLC0415 - only this report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(9, 5), dpi=100)
    for name, points in result.timeline.items():
        xs, ys = zip(*points, strict=True)
        axes.step(xs, ys, where="post", label=f"{name}: drained in {result.drain[name]:.1f} s")
    starts = floor_schedule(config.orders * REQUESTS_PER_ORDER, config.scale)
    # Under the floor an order is done when its second request has started.
    floor_x = [0.0, *starts[1::2]]
    floor_y = [config.orders - k for k in range(len(floor_x))]
    axes.step(
        floor_x, floor_y, where="post", color="black", linestyle="--", label=f"floor: {result.floor:.1f} s"
    )
    if config.outage:
        axes.axvspan(
            config.outage_after,
            config.outage_after + config.outage_length,
            color="red",
            alpha=0.1,
            label="QFPay down (503)",
        )
    axes.set_xlabel(f"seconds since the burst was sent (QFPay's windows x{config.scale:g})")
    axes.set_ylabel("orders without an outcome")
    axes.set_title(
        f"{config.orders} orders x {config.merchants} merchant(s): drain ratio {result.ratio:.2f}, "
        f"429s {result.qfpay_429}, DLQ {result.dlq}"
    )
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def report(result: BurstResult, config: BurstConfig, out: Any = sys.stdout) -> None:
    print("", file=out)
    for name, seconds in result.drain.items():
        print(
            f"{name}: drained in {seconds:.1f} s, floor {result.floor:.1f} s, "
            f"ratio {seconds / result.floor:.2f}",
            file=out,
        )
    print(f"outcomes: {dict(sorted(result.statuses.items()))}", file=out)
    for reason, n in result.reasons.most_common(5):
        print(f"  UNKNOWN x{n}: {reason}", file=out)
    if config.outage:
        after = "-" if result.decided_after_recovery is None else f"{result.decided_after_recovery:.1f} s"
        print(
            f"outage: every order decided {after} after QFPay came back "
            f"(longest backoff step {config.environment()['RETRY_MAX_DELAY_SECONDS']} s)",
            file=out,
        )
    for letter in result.dead_letters:
        print(f"  in the DLQ: {letter}", file=out)
    print(f"unknown: {result.unknown}", file=out)
    print(f"lost: {result.lost}", file=out)
    print(f"double_reversals: {result.doubles}", file=out)
    print(f"picture: {config.png}", file=out)
    print(f"drain_ratio: {result.ratio:.2f}", file=out)
    print(f"dlq: {result.dlq}", file=out)
    print(f"qfpay_429: {result.qfpay_429}", file=out, flush=True)


def main() -> int:
    config = BurstConfig.from_env(os.environ)
    result = run_burst(config)
    write_png(config.png, result, config)
    report(result, config)
    return 1 if result.lost or result.doubles or result.dlq else 0


if __name__ == "__main__":
    sys.exit(main())
