"""Logger, metrics and (when asked for) call tracing, shared by both functions (configured by
POWERTOOLS_* variables)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()

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


_metrics_lock = threading.Lock()


def count(name: str) -> None:
    _add_metric(name, MetricUnit.Count, 1)


def count_kind(prefix: str, kind: str) -> None:
    """``count("OutcomeNotCharged")`` for ("Outcome", "NOT_CHARGED"): one metric name per status
    or answer class, the same from both functions."""
    count(prefix + kind.title().replace("_", ""))


def record_latency(name: str, seconds: float) -> None:
    _add_metric(name, MetricUnit.Milliseconds, round(seconds * 1000, 1))


def _add_metric(name: str, unit: MetricUnit, value: float) -> None:
    """A metric never decides an order's fate: Powertools flushes by itself at 100 values of one
    metric, and a flush that fails (no namespace configured) must not fail the order with it."""
    try:
        # Orders of a batch run on several threads; Powertools' metric set is a plain dict.
        with _metrics_lock:
            metrics.add_metric(name=name, unit=unit, value=value)
    except Exception:
        logger.exception("metric not recorded", extra={"metric": name})
