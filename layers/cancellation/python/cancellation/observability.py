"""Logger, metrics and tracer shared by both functions (configured by POWERTOOLS_* variables)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()
tracer = Tracer()


def count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
