"""``make demo``: every scenario through the local pipeline, then a summary table.

Exits non-zero if any order did not reach its expected outcome, if an order got more than one
outcome, or if anything ended in the dead-letter queue.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3

from tests.local.pipeline import Pipeline, local_pipeline
from tests.local.qfpay_standin import Transaction
from tests.local.scenarios import SCENARIOS, Scenario

# Every field of an order message but task_token: the example caller's input (null when absent).
ORDER_FIELDS = ("out_trade_no", "syssn", "txamt", "txdtm", "pay_type", "mchid", "udid", "txcurrcd")

TIMEOUT_SECONDS = 45
# Reconciliation: QFPay refuses this order's reversal for bank risk control (1294, UNKNOWN); later
# the payment shows cancelled, and the reconcile function publishes the corrected outcome.
RISK_CONTROLLED = Transaction(
    syssn="20261126000113000001",
    out_trade_no="DEMO-RISK-0013",
    txamt=1300,
    txdtm="2026-11-26 10:00:00",
    pay_type="800101",
    state="unpaid",
    cancel_respcd="1294",
)
ROTATED_CLIENT_KEY = "LOCALROTATEDKEY00000000000000002"


@dataclass
class DemoRun:
    rows: list[tuple[str, ...]]
    failures: int
    outcomes: list[dict[str, Any]]  # every outcome event seen, repeats included
    dead_letters: list[dict[str, Any]]


def run_scenarios(pipeline: Pipeline) -> DemoRun:
    """Send every scenario (the key-rotation ones after rotating the key) and check the outcomes."""
    sent_at: dict[str, float] = {}
    before = [s for s in SCENARIOS if not s.after_key_rotation and not s.via_caller]
    after = [s for s in SCENARIOS if s.after_key_rotation]
    _send(pipeline, before, sent_at)
    seen = pipeline.collect_outcomes(len(before), timeout=TIMEOUT_SECONDS)
    callers: dict[str, str] = {}
    for scenario in (s for s in SCENARIOS if s.via_caller):
        print(f"Starting the example caller workflow for {scenario.order()['out_trade_no']} ...", flush=True)
        sent_at[scenario.name] = time.time()
        execution = pipeline.run_caller({name: scenario.order().get(name) for name in ORDER_FIELDS})
        output = json.loads(execution.get("output") or "{}")
        answer = (output.get("outcome") or {}).get("status")
        callers[scenario.name] = f"caller {execution['status'].lower()}, heard {answer}"
    print("Rotating the merchant's key (QFPay and the secret; the functions' cache is stale) ...")
    pipeline.rotate_credentials(ROTATED_CLIENT_KEY, sign_type="SHA256")
    _send(pipeline, after, sent_at)
    seen += pipeline.collect_outcomes(len(SCENARIOS), timeout=TIMEOUT_SECONDS)
    seen += pipeline.collect_outcomes(len(SCENARIOS) + 1, timeout=1)  # any repeat outcome
    rows, failures = _rows(pipeline, seen, sent_at, callers)
    return DemoRun(rows, failures, seen, pipeline.dead_letters())


def run_reconciliation(pipeline: Pipeline) -> tuple[tuple[str, ...], int]:
    """One UNKNOWN order reconciled into CANCELLED: the table's row, and 1 if it failed."""
    order = {
        "out_trade_no": RISK_CONTROLLED.out_trade_no,
        "syssn": RISK_CONTROLLED.syssn,
        "txamt": RISK_CONTROLLED.txamt,
        "txdtm": RISK_CONTROLLED.txdtm,
        "pay_type": RISK_CONTROLLED.pay_type,
    }
    name = "UNKNOWN (1294), reconciled later"
    sent = time.time()
    pipeline.send(order)
    first = [
        e["detail"] for e in pipeline.stack.read_outcome_events(wait_seconds=TIMEOUT_SECONDS, expected=1)
    ]
    if [d["status"] for d in first] != ["UNKNOWN"]:
        return (name, "-", "-", f"{[d['status'] for d in first]}", "-", "FAIL (expected UNKNOWN first)"), 1
    print("QFPay now shows the risk-controlled payment cancelled; running a reconciliation pass ...")
    pipeline.qfpay.update(RISK_CONTROLLED.syssn, cancel=1)
    answer = boto3.client("lambda").invoke(FunctionName=pipeline.stack.reconcile_function_name, Payload=b"{}")
    summary = json.loads(answer["Payload"].read())
    events = pipeline.stack.read_outcome_events(wait_seconds=TIMEOUT_SECONDS, expected=1)
    corrected = [
        e["detail"] for e in events if e["detail"].get("out_trade_no") == RISK_CONTROLLED.out_trade_no
    ]
    key = RISK_CONTROLLED.out_trade_no
    calls = f"{pipeline.qfpay.count('reversal', key)}+{pipeline.qfpay.count('query', key)}"
    if len(corrected) != 1:
        return (name, "-", calls, "UNKNOWN", "-", f"FAIL (pass {summary}, {len(corrected)} corrections)"), 1
    detail = corrected[0]
    took = datetime.fromisoformat(detail["decided_at"]).timestamp() - sent
    shown = f"UNKNOWN -> {detail['status']} (revision {detail['revision']})"
    ok = (detail["status"], detail["revision"], detail["supersedes"], detail["outcome_id"]) == (
        "CANCELLED",
        2,
        "UNKNOWN",
        first[0]["outcome_id"],
    )
    path = f"reversal / cancel-function, then {detail['decided_by']}"
    return (name, path, calls, shown, f"{took:.1f} s", "ok" if ok else "FAIL"), 0 if ok else 1


def main() -> int:
    started = time.monotonic()
    transactions = [s.transaction for s in SCENARIOS if s.transaction is not None]
    print("Starting moto (real ASL), the QFPay stand-in and the stack from template.yaml ...", flush=True)
    # Reconciliation's first check is due at once here (deployed: 5 minutes after the UNKNOWN).
    environment = {"POWERTOOLS_LOG_LEVEL": "ERROR", "RECONCILE_CHECKS_AFTER_SECONDS": "0"}
    with local_pipeline([*transactions, RISK_CONTROLLED], env_overrides=environment) as pipeline:
        run = run_scenarios(pipeline)
        row, failed = run_reconciliation(pipeline)
    run.rows.append(row)
    run.failures += failed
    _print_table(("order", "path taken", "QFPay cancel+enquiry calls", "outcome", "time", "check"), run.rows)
    elapsed = time.monotonic() - started
    print(f"\nDead-letter queue: {len(run.dead_letters)} message(s). Total time: {elapsed:.1f} s")
    if run.failures or run.dead_letters:
        print(f"{run.failures} order(s) did not reach the expected outcome.", file=sys.stderr)
        return 1
    print("Every order reached its expected outcome, exactly once.")
    return 0


def _send(pipeline: Pipeline, scenarios: Sequence[Scenario], sent_at: dict[str, float]) -> None:
    for scenario in scenarios:
        sent_at[scenario.name] = time.time()
        for _ in range(scenario.copies):
            pipeline.send(scenario.body())
    print(f"Sent {sum(s.copies for s in scenarios)} messages; waiting for their outcomes ...", flush=True)


def _rows(
    pipeline: Pipeline, seen: list[dict[str, Any]], sent_at: dict[str, float], callers: dict[str, str]
) -> tuple[list[tuple[str, ...]], int]:
    per_order = Counter(d["out_trade_no"] for d in seen)
    by_order = {d["out_trade_no"]: d for d in seen}
    rows: list[tuple[str, ...]] = []
    failures = 0
    for scenario in SCENARIOS:
        key = scenario.order()["out_trade_no"]
        calls = enquiries = 0
        if scenario.transaction is not None:
            calls = pipeline.qfpay.count("reversal", key) + pipeline.qfpay.count("close", key)
            enquiries = pipeline.qfpay.count("query", key)
        detail = by_order.get(key)
        if detail is None:
            rows.append((scenario.name, "-", f"{calls}+{enquiries}", "NO OUTCOME", "-", "FAIL"))
            failures += 1
            continue
        took = datetime.fromisoformat(detail["decided_at"]).timestamp() - sent_at[scenario.name]
        check = _check(scenario, detail, per_order[key])
        if scenario.via_caller and check == "ok":
            heard = callers.get(scenario.name, "caller did not run")
            check = (
                "ok" if heard == f"caller succeeded, heard {scenario.expected_status}" else f"FAIL ({heard})"
            )
        failures += check != "ok"
        path = f"{detail['endpoint'] or '-'} / {detail['decided_by']}"
        if detail["polls"]:
            path += f" ({detail['polls']} polls)"
        if scenario.via_caller:
            path += f", {callers.get(scenario.name, 'no caller')}"
        rows.append((scenario.name, path, f"{calls}+{enquiries}", detail["status"], f"{took:.1f} s", check))
    return rows, failures


def _check(scenario: Scenario, detail: dict[str, Any], outcomes: int) -> str:
    if outcomes != 1:
        return f"FAIL ({outcomes} outcomes)"
    got = (detail["status"], detail["decided_by"], detail["endpoint"])
    want = (scenario.expected_status, scenario.expected_decided_by, scenario.expected_endpoint)
    return "ok" if got == want else f"FAIL (expected {' / '.join(str(w) for w in want)})"


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


if __name__ == "__main__":
    sys.exit(main())
