"""Metrics are recorded for operators; they must never decide an order's fate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cancellation import observability
from cancellation.observability import count, metrics, record_latency


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
