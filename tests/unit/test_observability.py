"""Metrics are recorded for operators; they must never decide an order's fate."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cancellation import observability
from cancellation.observability import count, metrics, record_latency

LAYER = Path(__file__).resolve().parents[2] / "layers" / "cancellation" / "python"


@pytest.fixture
def no_namespace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # As in a process whose Powertools metrics were set up without POWERTOOLS_METRICS_NAMESPACE.
    monkeypatch.setattr(metrics.provider, "namespace", None)
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def test_a_metric_that_cannot_be_flushed_does_not_raise_into_the_order(
    no_namespace: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As in the local runs (POWERTOOLS_METRICS_DISABLED): log_metrics then keeps every value, and
    # Powertools' own flush at the 100th value of one metric raises SchemaValidationError without a
    # namespace. That once failed whichever order counted the 100th REJECTED outcome in a process.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for _ in range(15):  # invocations of ten orders each
        for _ in range(10):
            count("OutcomeRejected")
            record_latency("QFPayLatency", 0.1234)
        metrics.flush_metrics()  # what @metrics.log_metrics does after every invocation
    failed = [r for r in caplog.records if r.getMessage() == "metric not recorded"]
    assert {getattr(r, "metric", None) for r in failed} == {"OutcomeRejected", "QFPayLatency"}


def test_latency_is_recorded_in_milliseconds(no_namespace: None) -> None:
    record_latency("QFPayLatency", 0.1234)
    assert metrics.provider.metric_set["QFPayLatency"]["Value"] == [123.4]
    assert metrics.provider.metric_set["QFPayLatency"]["Unit"] == "Milliseconds"


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
