"""``make demo``: every scenario through the local pipeline, then a summary table.

Exits non-zero if any order did not reach its expected outcome.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime

from tests.local.pipeline import local_pipeline
from tests.local.scenarios import SCENARIOS, Scenario

TIMEOUT_SECONDS = 60


def main() -> int:
    started = time.monotonic()
    transactions = [s.transaction for s in SCENARIOS if s.transaction is not None]
    print("Starting moto (real ASL), the QFPay stand-in and the stack from template.yaml ...", flush=True)
    with local_pipeline(transactions, env_overrides={"POWERTOOLS_LOG_LEVEL": "ERROR"}) as pipeline:
        sent_at = time.time()
        for scenario in SCENARIOS:
            pipeline.send(scenario.body())
        print(f"Sent {len(SCENARIOS)} orders; waiting for their outcomes ...", flush=True)
        pipeline.collect_outcomes(len(SCENARIOS), timeout=TIMEOUT_SECONDS)
        by_order = {d["out_trade_no"]: d for d in pipeline.outcomes.values()}
        rows, failures = [], 0
        for scenario in SCENARIOS:
            key = scenario.order()["out_trade_no"]
            found = by_order.get(key)
            calls = enquiries = 0
            if scenario.transaction is not None:
                calls = pipeline.qfpay.count("reversal", key) + pipeline.qfpay.count("close", key)
                enquiries = pipeline.qfpay.count("query", key)
            if found is None:
                rows.append((scenario.name, "-", f"{calls}+{enquiries}", "NO OUTCOME", "-", "FAIL"))
                failures += 1
                continue
            detail = found
            took = datetime.fromisoformat(detail["decided_at"]).timestamp() - sent_at
            ok = _matches(scenario, detail)
            failures += not ok
            path = f"{detail['endpoint'] or '-'} / {detail['decided_by']}"
            if detail["polls"]:
                path += f" ({detail['polls']} polls)"
            rows.append(
                (
                    scenario.name,
                    path,
                    f"{calls}+{enquiries}",
                    detail["status"],
                    f"{took:.1f} s",
                    "ok" if ok else f"FAIL (expected {scenario.expected_status})",
                )
            )
        dead = pipeline.dead_letters()
    _print_table(
        ("order", "path taken", "QFPay cancel+enquiry calls", "outcome", "time to outcome", "check"), rows
    )
    print(f"\nDead-letter queue: {len(dead)} message(s). Total time: {time.monotonic() - started:.1f} s")
    if failures or dead:
        print(f"{failures} order(s) did not reach the expected outcome.", file=sys.stderr)
        return 1
    print("Every order reached its expected outcome.")
    return 0


def _matches(scenario: Scenario, detail: dict[str, object]) -> bool:
    return (
        detail["status"] == scenario.expected_status
        and detail["decided_by"] == scenario.expected_decided_by
        and detail["endpoint"] == scenario.expected_endpoint
    )


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
