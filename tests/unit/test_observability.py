"""Metrics are recorded for operators; they must never decide an order's fate."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cancellation import observability
from cancellation.emf import Metrics
from cancellation.logs import Logger
from cancellation.observability import count, metrics, record_latency

LAYER = Path(__file__).resolve().parents[2] / "layers" / "cancellation" / "python"


# ------------------------------------------------------------------ EMF, checked against its specification

# CloudWatch's units (MetricDatum.Unit), the only ones a metric definition may name.
UNITS = {
    *("Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes"),
    *("Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count"),
    *("Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second"),
    *("Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second"),
    *("Count/Second", "None"),
}


def emf_violations(document: dict[str, Any]) -> list[str]:
    """What breaks the Embedded Metric Format specification's rules (CloudWatch drops such a
    document's metrics): _aws.Timestamp in epoch milliseconds; CloudWatchMetrics, a list of
    directives with a Namespace, Dimensions (a list of dimension sets of at most 30 names, each a
    top-level string member) and Metrics (at most 100 definitions, each naming a top-level member
    that is a number or a list of at most 100 numbers, with an optional CloudWatch unit)."""
    wrong = []
    meta = document.get("_aws")
    if not isinstance(meta, dict) or not isinstance(meta.get("Timestamp"), int) or meta["Timestamp"] < 0:
        return ["_aws.Timestamp is not a non-negative integer"]
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return ["_aws.CloudWatchMetrics is not a non-empty list"]
    for directive in directives:
        namespace = directive.get("Namespace")
        if not isinstance(namespace, str) or not 1 <= len(namespace) <= 1024:
            wrong.append(f"namespace {namespace!r}")
        for dimension_set in directive.get("Dimensions", []):
            if len(dimension_set) > 30:
                wrong.append(f"{len(dimension_set)} dimensions in one set")
            wrong += [
                f"dimension {d!r} is not a string member"
                for d in dimension_set
                if not isinstance(document.get(d), str)
            ]
        definitions = directive.get("Metrics")
        if not isinstance(definitions, list) or len(definitions) > 100:
            wrong.append("Metrics is not a list of at most 100 definitions")
            continue
        for definition in definitions:
            name, value = definition.get("Name"), document.get(definition.get("Name"))
            values = value if isinstance(value, list) else [value]
            if not 1 <= len(values) <= 100 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                wrong.append(f"{name}: {value!r} is not a number or 1 to 100 numbers")
            if "Unit" in definition and definition["Unit"] not in UNITS:
                wrong.append(f"{name}: unit {definition['Unit']!r}")
    return wrong


def written(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def values_of(documents: list[dict[str, Any]], name: str) -> list[float]:
    return [v for d in documents if name in d for v in (d[name] if isinstance(d[name], list) else [d[name]])]


DEPLOYED = {
    "POWERTOOLS_SERVICE_NAME": "qfpay-cancellation",
    "POWERTOOLS_METRICS_NAMESPACE": "QFPayCancellation",
}


def test_an_invocations_metrics_are_one_emf_document_on_stdout_with_the_service_dimension() -> None:
    out = io.StringIO()
    metrics = Metrics(environ=DEPLOYED, stream=out)

    @metrics.log_metrics
    def handler(event: object, context: object) -> str:
        metrics.add_metric("OutcomeCancelled", "Count", 1)
        metrics.add_metric("OutcomeCancelled", "Count", 1)
        metrics.add_metric("QFPayLatency", "Milliseconds", 123.4)
        return "done"

    before = int(time.time() * 1000)
    assert handler({}, None) == "done"
    [document] = written(out)
    assert emf_violations(document) == []
    assert before <= document["_aws"]["Timestamp"] <= time.time() * 1000
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "QFPayCancellation"
    assert directive["Dimensions"] == [["service"]]
    assert document["service"] == "qfpay-cancellation"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {"OutcomeCancelled": "Count", "QFPayLatency": "Milliseconds"}
    assert values_of([document], "OutcomeCancelled") == [1, 1]
    assert values_of([document], "QFPayLatency") == [123.4]
    handler({}, None)  # what was written is not written again
    assert len(written(out)) == 2
    assert values_of(written(out)[1:], "QFPayLatency") == [123.4]


def test_no_document_holds_more_values_or_metrics_than_the_specification_allows() -> None:
    out = io.StringIO()
    metrics = Metrics(environ=DEPLOYED, stream=out)
    for i in range(250):
        metrics.add_metric("OutcomeRejected", "Count", i)
    for i in range(130):
        metrics.add_metric(f"Answer{i}", "Count", 1)
    metrics.flush_metrics()
    documents = written(out)
    assert [emf_violations(d) for d in documents] == [[] for _ in documents]
    assert values_of(documents, "OutcomeRejected") == list(range(250))  # none lost, none twice
    assert sorted(
        n
        for d in documents
        for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        for n in [m["Name"]]
        if n.startswith("Answer")
    ) == sorted(f"Answer{i}" for i in range(130))


def test_metrics_recorded_from_many_threads_are_all_written_once() -> None:
    out = io.StringIO()
    metrics = Metrics(environ=DEPLOYED, stream=out)
    start = threading.Barrier(8)

    def order(n: int) -> None:
        start.wait()
        for _ in range(1000):
            metrics.add_metric("OutcomeCancelled", "Count", n)

    threads = [threading.Thread(target=order, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics.flush_metrics()
    documents = written(out)
    assert [emf_violations(d) for d in documents] == [[] for _ in documents]
    assert sorted(values_of(documents, "OutcomeCancelled")) == sorted(
        n for n in range(8) for _ in range(1000)
    )


def test_a_metric_that_cannot_be_written_does_not_raise_into_the_order(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No namespace configured: the 100th value of one metric is written at once (EMF's limit) and
    # that write fails; it once failed whichever order counted the 100th REJECTED outcome.
    monkeypatch.setattr(metrics, "namespace", None)
    metrics.clear_metrics()
    try:
        for _ in range(150):
            count("OutcomeRejected")
            record_latency("QFPayLatency", 0.1234)
    finally:
        metrics.clear_metrics()
    failed = [r for r in caplog.records if r.getMessage() == "metric not recorded"]
    assert [getattr(r, "metric", None) for r in failed] == ["OutcomeRejected"]  # its 100th value


def test_a_failed_write_at_the_end_of_an_invocation_does_not_fail_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "namespace", None)

    @metrics.log_metrics
    def handler(event: object, context: object) -> str:
        count("OutcomeCancelled")
        return "decided"

    assert handler({}, None) == "decided"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == ["metrics not written"]


def test_latency_is_recorded_in_milliseconds() -> None:
    metrics.clear_metrics()
    record_latency("QFPayLatency", 0.1234)
    recorded = metrics.metric_set["QFPayLatency"]
    metrics.clear_metrics()
    assert (recorded.unit, recorded.values) == ("Milliseconds", [123.4])


# ------------------------------------------------------------------ logs


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line a JSON object, as CloudWatch Logs Insights and the operators parse them."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Context(NamedTuple):
    function_name: str = "qfpay-cancellation-cancel"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:ap-east-1:123456789012:function:qfpay-cancellation-cancel"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"


def logger_for(test: str, **environ: str) -> tuple[Logger, io.StringIO]:
    out = io.StringIO()
    return Logger(environ={"POWERTOOLS_SERVICE_NAME": f"test-{test}", **environ}, stream=out), out


def test_a_log_line_carries_the_keys_operators_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    )
    logger, out = logger_for("keys")

    @logger.inject_lambda_context(correlation_id_path="outcome_id")
    def handler(event: dict[str, Any], context: object) -> None:
        logger.info("order rejected", extra={"reason": "bad amount"})

    handler({"outcome_id": "o-1"}, Context())
    handler({"outcome_id": "o-2"}, Context())
    first, second = log_lines(out)
    assert first["level"] == "INFO"
    assert first["message"] == "order rejected"
    assert first["service"] == "test-keys"
    assert first["location"].startswith("handler:")
    assert time.strptime(first["timestamp"][:19], "%Y-%m-%d %H:%M:%S")
    assert first["reason"] == "bad amount"
    assert first["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert first["function_request_id"] == Context().aws_request_id
    assert first["function_name"] == Context().function_name
    assert (first["cold_start"], second["cold_start"]) == (True, False)
    assert (first["correlation_id"], second["correlation_id"]) == ("o-1", "o-2")


def test_an_exception_is_logged_with_its_traceback() -> None:
    logger, out = logger_for("exception")
    try:
        raise ValueError("no such order")
    except ValueError:
        logger.exception("order failed unexpectedly")
    [line] = log_lines(out)
    assert line["level"] == "ERROR"
    assert line["exception_name"] == "ValueError"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: no such order")
    assert "xray_trace_id" not in line or line["xray_trace_id"]


@pytest.mark.parametrize(
    ("environ", "written_levels"),
    [
        ({}, ["INFO", "WARNING"]),
        ({"POWERTOOLS_LOG_LEVEL": "warning"}, ["WARNING"]),
        ({"POWERTOOLS_LOG_LEVEL": "DEBUG"}, ["DEBUG", "INFO", "WARNING"]),
        ({"POWERTOOLS_LOG_LEVEL": "DEBUG", "AWS_LAMBDA_LOG_LEVEL": "WARN"}, ["WARNING"]),
    ],
)
def test_the_level_comes_from_powertools_log_level_or_lambdas_own(
    environ: dict[str, str], written_levels: list[str]
) -> None:
    logger, out = logger_for("level-" + "-".join(environ.values()), **environ)
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    assert [line["level"] for line in log_lines(out)] == written_levels


def test_appended_keys_belong_to_the_thread_that_appended_them() -> None:
    logger, out = logger_for("threads")
    logger.append_keys(function_request_id="r-1")
    both_appended = threading.Barrier(2)

    def order(name: str) -> None:
        logger.thread_safe_append_keys(order=name, message_id=f"m-{name}")
        both_appended.wait()
        logger.info("deciding")
        logger.thread_safe_remove_keys(["order"])
        logger.info("done")

    threads = [threading.Thread(target=order, args=(name,)) for name in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logger.info("batch done")
    lines = log_lines(out)
    deciding = sorted((line["order"], line["message_id"]) for line in lines if line["message"] == "deciding")
    assert deciding == [("A", "m-A"), ("B", "m-B")]
    assert sorted(line["message_id"] for line in lines if line["message"] == "done") == ["m-A", "m-B"]
    assert not [line for line in lines if line["message"] == "done" and "order" in line]
    [last] = [line for line in lines if line["message"] == "batch done"]
    assert "order" not in last
    assert "message_id" not in last
    assert {line["function_request_id"] for line in lines} == {"r-1"}


def test_tracing_off_leaves_the_handler_as_it_is() -> None:
    def handler(event: object, context: object) -> str:
        return "done"

    assert observability.traced(False)(handler) is handler


# A handler traced with call tracing on, in a process of its own (the X-Ray SDK patches botocore
# for the whole process), sending its segments to a UDP socket standing in for the X-Ray daemon.
TRACED_HANDLER = """
import sys
sys.path.insert(0, sys.argv[1])
from cancellation.observability import traced

def handler(event, context):
    return {"order": {"task_token": "TOKEN-IN-THE-RESPONSE"}, "status": "IN_PROGRESS"}

traced(True)(handler)({}, None)
"""


def test_traces_never_capture_the_handlers_response(tmp_path: Path) -> None:
    """X-Ray keeps what Powertools captures as segment metadata, readable by anyone who may read
    traces: a handler's response (the poll function's state) is not captured."""
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(5)
    env = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": "qfpay-cancellation-poll",
        "LAMBDA_TASK_ROOT": str(tmp_path),
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{daemon.getsockname()[1]}",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "POWERTOOLS_TRACE_DISABLED": "false",
        "POWERTOOLS_SERVICE_NAME": "qfpay-cancellation",
    }
    env.pop("POWERTOOLS_TRACER_CAPTURE_RESPONSE", None)  # the code decides, not a setting
    script = tmp_path / "traced.py"
    script.write_text(TRACED_HANDLER)
    subprocess.run([sys.executable, str(script), str(LAYER)], env=env, check=True, timeout=60)  # noqa: S603
    segments = []
    with contextlib.suppress(TimeoutError):
        while True:
            segments.append(daemon.recv(65536).decode("utf-8"))
            daemon.settimeout(0.5)
    daemon.close()
    assert any("## handler" in segment for segment in segments), segments  # it was traced
    assert not [segment for segment in segments if "TOKEN-IN-THE-RESPONSE" in segment]


@pytest.mark.parametrize(
    ("respcd", "metric"), [("8888", "QFPayAnswerUndocumented"), ("1294", "QFPayAnswerFinal")]
)
def test_an_answer_qfpay_does_not_document_is_counted_apart(respcd: str, metric: str) -> None:
    """An operator sees QFPay answering codes it does not document, not hidden among final ones."""
    from tests.unit.fakes import FakeQFPay, cancel_answer  # noqa: PLC0415
    from tests.unit.test_ledger_memory import TXDTM_AS_UTC, decide  # noqa: PLC0415

    def counted() -> int:
        recorded = metrics.metric_set.get(metric)
        return len(recorded.values) if recorded else 0

    before = counted()
    decide(FakeQFPay(reversal=[cancel_answer(respcd)]), now=TXDTM_AS_UTC + 15 * 60)
    assert counted() == before + 1
