"""Metrics as CloudWatch Embedded Metric Format documents, one JSON line each on stdout, which
CloudWatch Logs turns into metrics (namespace POWERTOOLS_METRICS_NAMESPACE, dimension ``service``
from POWERTOOLS_SERVICE_NAME): what Powertools' Metrics wrote for us, without importing its package
at cold start (docs/decisions.md)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TextIO, TypeVar, cast

Handler = TypeVar("Handler", bound=Callable[..., Any])

_log = logging.getLogger(__name__)  # our own records at DEBUG, as Powertools' Metrics wrote them
# The EMF specification's limits: values of one metric, and metrics of one directive, per document.
MAX_VALUES = 100
MAX_METRICS = 100


class Recorded(NamedTuple):
    unit: str
    values: list[float]


class MetricsNotWritten(Exception):
    """Metrics that could not be written (no namespace configured); the values are dropped."""


class Metrics:
    """Values recorded from any thread, written at the end of each invocation by ``log_metrics``
    (and at once when one metric reaches the specification's 100 values)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        stream: TextIO | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.namespace: str | None = environ.get("POWERTOOLS_METRICS_NAMESPACE") or None
        self.service: str | None = environ.get("POWERTOOLS_SERVICE_NAME") or None
        # The local runs turn writing off (as Powertools' variable did): values are dropped.
        self.disabled = environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true", "on", "yes")
        self._stream = stream
        # Called inside the ``except`` block of a failed write at the end of an invocation.
        self._on_error = on_error
        self._lock = threading.Lock()
        self._recorded: dict[str, Recorded] = {}

    @property
    def metric_set(self) -> dict[str, Recorded]:
        """What is recorded and not yet written (a copy)."""
        with self._lock:
            return {name: Recorded(r.unit, list(r.values)) for name, r in self._recorded.items()}

    def add_metric(self, name: str, unit: str, value: float) -> None:
        """Raises MetricsNotWritten when the 100th value of ``name`` had to be written and could not."""
        _log.debug("Adding metric: %s (%s) %s", name, unit, value)
        with self._lock:
            recorded = self._recorded.setdefault(name, Recorded(unit, []))
            recorded.values.append(float(value))
            full = len(recorded.values) >= MAX_VALUES
        if full:
            self.flush_metrics()

    def clear_metrics(self) -> None:
        with self._lock:
            self._recorded = {}

    def flush_metrics(self) -> None:
        """Writes and forgets every value recorded (the values are forgotten even if not written)."""
        with self._lock:
            recorded, self._recorded = self._recorded, {}
        if not recorded or self.disabled:
            return
        if self.namespace is None:
            raise MetricsNotWritten(f"no POWERTOOLS_METRICS_NAMESPACE: {sorted(recorded)} not written")
        stream = sys.stdout if self._stream is None else self._stream
        for document in self.documents(recorded, int(time.time() * 1000)):
            stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        stream.flush()

    def documents(self, recorded: Mapping[str, Recorded], timestamp_ms: int) -> Iterator[dict[str, Any]]:
        """As many documents as the limits need: at most MAX_METRICS metrics, each with at most
        MAX_VALUES values."""
        pending = {name: list(r.values) for name, r in recorded.items()}
        while pending:
            names = list(pending)[:MAX_METRICS]
            document: dict[str, Any] = {
                "_aws": {
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": self.namespace,
                            "Dimensions": [["service"]] if self.service else [[]],
                            "Metrics": [{"Name": name, "Unit": recorded[name].unit} for name in names],
                        }
                    ],
                },
            }
            if self.service:
                document["service"] = self.service
            for name in names:
                document[name], pending[name] = pending[name][:MAX_VALUES], pending[name][MAX_VALUES:]
                if not pending[name]:
                    del pending[name]
            yield document

    def log_metrics(self, handler: Handler) -> Handler:
        """Writes the invocation's metrics when the handler returns or raises. A failure to write
        is handed to ``on_error`` and then never fails the invocation (its orders are decided)."""

        @functools.wraps(handler)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                try:
                    self.flush_metrics()
                except Exception as exc:  # reported, never raised into the invocation
                    if self._on_error is None:
                        raise
                    self._on_error(exc)

        return cast(Handler, decorated)
