"""Logger, metrics and (when asked for) call tracing, shared by the functions (configured by
POWERTOOLS_* variables). The logger and metrics are our own small writers of the formats
Powertools wrote (logs.py, emf.py): a cold start with call tracing off never imports Powertools."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from cancellation.emf import Metrics
from cancellation.logs import Logger

logger = Logger()


def _metrics_not_written(exc: Exception) -> None:
    logger.exception("metrics not written", extra={"reason": str(exc)})


metrics = Metrics(on_error=_metrics_not_written)

Handler = TypeVar("Handler", bound=Callable[..., Any])


def traced(enabled: bool) -> Callable[[Handler], Handler]:
    """The handler wrapped by Powertools' Tracer when call tracing is on: X-Ray subsegments for
    every AWS and QFPay call. When it is off the X-Ray SDK is never imported (about a fifth of a
    cold start); Lambda's active tracing still records every invocation."""
    if not enabled:
        return lambda handler: handler
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - only when call tracing is on

    # Only what we call: AWS (botocore) and QFPay (http.client, under urllib3). Patching everything
    # would import whatever else happens to be installed (requests, sqlite3, ...).
    tracer = Tracer(patch_modules=["botocore", "httplib"])

    def capture(handler: Handler) -> Handler:
        # Never the response as trace metadata: anyone who may read traces would read the loop's
        # state. Fixed here, whatever POWERTOOLS_TRACER_CAPTURE_RESPONSE says.
        return cast(Handler, tracer.capture_lambda_handler(handler, capture_response=False))

    return capture


def count(name: str) -> None:
    _add_metric(name, "Count", 1)


def count_kind(prefix: str, kind: str) -> None:
    """``count("OutcomeNotCharged")`` for ("Outcome", "NOT_CHARGED"): one metric name per status
    or answer class, the same from both functions."""
    count(prefix + kind.title().replace("_", ""))


def record_latency(name: str, seconds: float) -> None:
    _add_metric(name, "Milliseconds", round(seconds * 1000, 1))


def _add_metric(name: str, unit: str, value: float) -> None:
    """A metric never decides an order's fate: the 100th value of one metric is written at once
    (EMF's limit), and a write that fails (no namespace configured) must not fail the order."""
    try:
        metrics.add_metric(name=name, unit=unit, value=value)
    except Exception:
        logger.exception("metric not recorded", extra={"metric": name})
