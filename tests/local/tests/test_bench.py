"""The benchmark's own arithmetic: parsing, counting, the loop model, the cost model."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from cancellation.schedule import PollSchedule

from tests.local.bench import (
    FIXED_POLL,
    PRICES,
    CostInputs,
    Usage,
    _print_final,
    cost_per_million,
    count_history,
    direct_imports,
    direct_usage,
    dynamodb_item_size,
    estimated_duration,
    format_table,
    lambda_gb_seconds,
    loop_transitions,
    loop_usage,
    median,
    memory_knee,
    net_ratio,
    paired_ratio,
    parse_importtime,
    recommend_memory,
    self_time_by_package,
    simulate_loop,
    template_environment,
    top_import_costs,
    write_units,
)

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:        50 |        150 | io
import time:       300 |        300 |       botocore.utils
import time:       200 |        500 |     botocore.client
import time:        20 |        520 |   boto3
import time:        10 |         10 |     cancellation
import time:        40 |         50 |   cancellation.qfpay
import time:       700 |       1270 | app
not an importtime line
"""


def test_median_and_net_ratio():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    # (median 1.2 - start 0.2) / (median 0.7 - start 0.2)
    assert net_ratio([1.2, 1.1, 1.3], [0.7, 0.6, 0.8], [0.2, 0.2, 0.1]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no values"):
        median([])
    with pytest.raises(ValueError, match="not slower"):
        net_ratio([1.0], [0.1], [0.2])


def test_parse_importtime_builds_the_tree():
    entries = parse_importtime(IMPORTTIME)
    assert [e.name for e in entries] == [
        "_io",
        "io",
        "botocore.utils",
        "botocore.client",
        "boto3",
        "cancellation",
        "cancellation.qfpay",
        "app",
    ]
    by_name = {e.name: e for e in entries}
    assert by_name["io"].children == ("_io",)
    assert by_name["app"].children == ("boto3", "cancellation.qfpay")
    assert by_name["boto3"].children == ("botocore.client",)
    assert by_name["cancellation.qfpay"].children == ("cancellation",)
    assert (by_name["app"].self_us, by_name["app"].cumulative_us, by_name["app"].depth) == (700, 1270, 0)
    assert [e.name for e in direct_imports(entries, "app")] == ["boto3", "cancellation.qfpay"]
    assert direct_imports(entries, "missing") == []
    assert [e.name for e in top_import_costs(entries, 2, skip=("app",))] == ["boto3", "botocore.client"]


def test_self_time_by_package_adds_up_to_the_total():
    entries = parse_importtime(IMPORTTIME)
    totals = self_time_by_package(entries)
    assert totals == {"app": 700, "botocore": 500, "_io": 100, "io": 50, "cancellation": 50, "boto3": 20}
    assert sum(totals.values()) == 1420


def test_fixed_poll_model():
    run = simulate_loop(FIXED_POLL, 120, deadline=900)
    assert (run.polls, run.transitions, run.noticed_after) == (40, 125, 120)
    assert simulate_loop(FIXED_POLL, 5, 900).noticed_after == 6
    assert loop_transitions(40, finish=4) == 124


def test_loop_model_follows_the_schedule():
    schedule = PollSchedule()
    times = [sum(schedule.wait_after(p) for p in range(n)) for n in range(1, 30)]
    for decided in (1, 5, 30, 120, 121, 122, 600):
        run = simulate_loop(schedule, decided, 900)
        noticed = next(t for t in times if t >= decided)
        assert run.noticed_after == noticed
        assert run.polls == times.index(noticed) + 1


def test_loop_model_stops_at_the_deadline():
    run = simulate_loop(PollSchedule(), math.inf, deadline=900)
    assert run.noticed_after is None
    # The last wait is clamped so that the final enquiry comes just after the deadline.
    waits_until_deadline = simulate_loop(FIXED_POLL, math.inf, deadline=10)
    assert waits_until_deadline.polls == 4  # at 3, 6, 9 and 11 (the wait clamped to the deadline)


def test_count_history():
    def entered(name: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
        details: dict[str, Any] = {"name": name}
        if state is not None:
            details["input"] = json.dumps(state)
        return {"type": "Entered", "stateEnteredEventDetails": details}

    events = [
        {"type": "ExecutionStarted"},
        entered("WaitBeforeEnquiry", {"wait_seconds": 3}),
        {"type": "WaitStateExited"},
        entered("AskEnquiry"),
        entered("IsDecided"),
        entered("WaitBeforeEnquiry", {"wait_seconds": 6}),
        entered("AskEnquiry"),
        entered("IsDecided"),
        entered("PublishOutcome"),
        entered("Decided"),
    ]
    counted = count_history(events)
    assert (counted.transitions, counted.polls, counted.waited) == (8, 2, 9)
    assert counted.states[-1] == "Decided"


def test_dynamodb_item_size_and_write_units():
    item: dict[str, dict[str, Any]] = {
        "id": {"S": "abc"},
        "expiration": {"N": "1795600000"},
        "ok": {"BOOL": True},
    }
    # id: 2 + 3; expiration: 10 + (10 digits -> 6); ok: 2 + 1
    assert dynamodb_item_size(item) == 5 + 16 + 3
    nested: dict[str, dict[str, Any]] = {"m": {"M": {"a": {"S": "xy"}}}, "l": {"L": [{"N": "5"}]}}
    # m: 1 + (3 + 1 + len("a") + len("xy")); l: 1 + (3 + 1 + number 1 digit -> 2)
    assert dynamodb_item_size(nested) == (1 + 3 + 1 + 1 + 2) + (1 + 3 + 1 + 2)
    assert [write_units(n) for n in (0, 1, 1024, 1025, 4096)] == [1, 1, 1, 2, 4]


def test_cost_per_million():
    costs = cost_per_million(Usage(transitions=10, events=1, write_units=4, sqs_requests=1.2))
    assert costs["Step Functions"] == pytest.approx(250.0)
    assert costs["EventBridge"] == pytest.approx(1.0)
    assert costs["DynamoDB"] == pytest.approx(2.5)
    assert costs["SQS"] == pytest.approx(0.48)
    assert costs["total"] == pytest.approx(250 + 1 + 2.5 + 0.48)
    assert cost_per_million(Usage(lambda_gb_seconds=1.0, lambda_requests=1))["Lambda"] == pytest.approx(
        (PRICES.lambda_arm64_per_gb_second + PRICES.lambda_per_request) * 1e6
    )


def test_usage_of_a_direct_and_a_looped_cancellation():
    inputs = CostInputs(
        batch_size=10,
        memory_mb=256,
        batch_duration=1.0,
        poll_duration=0.1,
        writes_per_order=4,
        write_units_per_write=1,
        reads_per_order=0,
        events_per_order=1,
        containers=4,
        secret_refresh_seconds=300,
        orders_per_month=1_000_000,
    )
    direct = direct_usage(inputs)
    assert direct.sqs_requests == pytest.approx(1.2)
    assert direct.lambda_requests == pytest.approx(0.1)
    assert direct.lambda_gb_seconds == pytest.approx(0.025)
    assert direct.write_units == 4
    assert direct.secrets_calls == pytest.approx(4 * 730 * 12 / 1e6)
    looped = loop_usage(inputs, polls=8, transitions=29)
    assert looped.transitions == 29
    assert looped.lambda_requests == pytest.approx(8.1)
    assert looped.lambda_gb_seconds == pytest.approx(0.025 + 8 * 0.025)


def test_lambda_arithmetic():
    assert lambda_gb_seconds(0.1234, 1024) == pytest.approx(0.124)
    assert lambda_gb_seconds(1.0, 256) == pytest.approx(0.25)
    assert estimated_duration(0.25, 0.138, 256) == pytest.approx(0.138 * 1769 / 256)
    assert estimated_duration(0.25, 0.01, 1024) == 0.25
    assert memory_knee(0.1, 0.25) == pytest.approx(707.6)
    assert recommend_memory(0.1, 0.25, peak_rss_mb=62) == 1024  # knee ~708 MB, rounded up
    assert recommend_memory(0.146, 0.25, peak_rss_mb=62) == 1024  # knee ~1,033 MB: within 10%
    assert recommend_memory(0.2, 0.25, peak_rss_mb=62) == 2048  # knee ~1,415 MB
    assert recommend_memory(0.002, 0.1, peak_rss_mb=62) == 256  # I/O-bound: the minimum
    assert recommend_memory(1.0, 0.25, peak_rss_mb=62) == 2048
    assert recommend_memory(0.1, 0.25, peak_rss_mb=300) == 1024  # room for twice the RSS first


def test_template_environment():
    template = {
        "Parameters": {"Base": {"Type": "String", "Default": "https://example.com"}, "N": {"Default": 3}},
        "Globals": {"Function": {"Environment": {"Variables": {"A": "1", "URL": {"Ref": "Base"}}}}},
        "Resources": {
            "CancelFunction": {
                "Properties": {
                    "Environment": {
                        "Variables": {
                            "A": "2",
                            "WAIT": {"Ref": "N"},
                            "LEDGER_TABLE": {"Ref": "Table"},
                            "OTHER": {"Fn::GetAtt": ["X", "Arn"]},
                        }
                    }
                }
            }
        },
    }
    assert template_environment(template) == {
        "A": "2",
        "URL": "https://example.com",
        "WAIT": "3",
        "LEDGER_TABLE": "bench-ledger",
        "OTHER": "bench-other",
    }


def test_format_table():
    text = format_table(["name", "n"], [["a", "1"], ["long name", "22"]])
    assert text.splitlines() == ["name        n", "---------  --", "a           1", "long name  22"]


def test_paired_ratio_takes_each_rounds_ratio_then_the_median() -> None:
    # Rounds 1-2 on a fast machine, round 3 on a slow one: the medians of the lists would mix them.
    handler, boto3, start = [0.26, 0.27, 0.41], [0.21, 0.22, 0.33], [0.01, 0.01, 0.02]
    assert paired_ratio(handler, boto3, start) == pytest.approx(0.25 / 0.20)  # round 1 of 1.25, 1.24, 1.26
    assert net_ratio(handler, boto3, start) == pytest.approx((0.27 - 0.01) / (0.22 - 0.01))
    with pytest.raises(ValueError, match="one value of each per round"):
        paired_ratio([0.3], [0.2, 0.2], [0.01])
    with pytest.raises(ValueError, match="not slower"):
        paired_ratio([0.3], [0.01], [0.02])


def test_the_last_lines_are_the_three_ratios_automated_checks_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_final({"poll_transitions_ratio_120s": 0.2345, "batch10_ratio": 1.4, "cold_import_ratio": 1.268})
    assert capsys.readouterr().out.splitlines() == [
        "cold_import_ratio: 1.27",
        "batch10_ratio: 1.40",
        "poll_transitions_ratio_120s: 0.23",
    ]


def test_the_batch_worker_runs_every_variant_against_the_service_as_built() -> None:
    """The batch section drives the cancel function's service from outside (its seed-style variant
    swaps the QFPay client); a refactor of the service must break this test, not CI's bench."""
    from tests.local import bench  # noqa: PLC0415

    result = bench._run_worker("batch", bench.QUICK, timeout=600)

    labels = [variant["label"] for variant in result["variants"]]
    assert labels == [variant.label for variant in bench.BATCH_VARIANTS]
    assert all(variant["cold10"] > 0 for variant in result["variants"])
