"""Logger, metrics and tracer shared by both functions (configured by POWERTOOLS_* variables)."""

from __future__ import annotations

import threading

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()
# Only what we call: AWS (botocore) and QFPay (http.client, under urllib3). Patching everything
# would import whatever else happens to be installed (requests, sqlite3, ...) at every cold start.
tracer = Tracer(patch_modules=["botocore", "httplib"])


_metrics_lock = threading.Lock()


def count(name: str) -> None:
    # Orders of a batch run on several threads; Powertools' metric set is a plain dict.
    with _metrics_lock:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
