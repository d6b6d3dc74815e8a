"""Structured logs: one JSON object per line on stdout, with the keys Powertools' Logger writes
(level, location, message, timestamp, service, the Lambda context's keys, xray_trace_id, appended
keys, ``extra=``, exception). Ours instead of Powertools' at cold start: its package cost ~10 ms
of CPU per start as deployed (docs/decisions.md)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO, TypeVar, cast, overload

Handler = TypeVar("Handler", bound=Callable[..., Any])

# What AWS_LAMBDA_LOG_LEVEL (Lambda's advanced logging controls) may say, as logging's names.
LAMBDA_LOG_LEVELS = {
    "TRACE": "NOTSET",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
}
# A LogRecord's own attributes; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def log_level(environ: Mapping[str, str]) -> str:
    """Lambda's log level when set (it filters what reaches CloudWatch anyway), else
    POWERTOOLS_LOG_LEVEL, else INFO: Powertools' order."""
    lambda_level = LAMBDA_LOG_LEVELS.get(environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper())
    return lambda_level or (environ.get("POWERTOOLS_LOG_LEVEL") or "INFO").upper()


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: the fixed keys, the invocation's keys, this thread's keys, then
    the record's ``extra=``. Keys whose value is None are left out."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # Replaced, never changed in place: other threads format with it at the same time.
        self.keys: dict[str, Any] = {}
        self._per_thread = threading.local()

    def thread_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] | None = getattr(self._per_thread, "keys", None)
        if keys is None:
            keys = self._per_thread.keys = {}
        return keys

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": self.formatTime(record),
            "service": self.service,
            **self.keys,
            **self.thread_keys(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = self.formatException(record.exc_info)
            line["exception_name"] = record.exc_info[0].__name__
        trace = os.environ.get("_X_AMZN_TRACE_ID")  # Lambda sets it anew for every invocation
        line["xray_trace_id"] = trace.split(";")[0].replace("Root=", "") if trace else None
        present = {k: v for k, v in line.items() if v is not None}
        return json.dumps(present, default=str, separators=(",", ":"))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Powertools' format: 2026-11-26 10:30:00,123+0000 (local time, which Lambda keeps in UTC).
        local = time.localtime(record.created)
        return time.strftime(f"%Y-%m-%d %H:%M:%S,{int(record.msecs):03d}%z", local)


class _NotOurs(logging.Filter):
    """On handlers that were there before ours (Lambda's runtime puts one on the root logger):
    our records are written once, by our own handler."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.ours = name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != self.ours


class Logger:
    """The functions' logger, configured by POWERTOOLS_SERVICE_NAME and POWERTOOLS_LOG_LEVEL (or
    AWS_LAMBDA_LOG_LEVEL) as Powertools' was; the stdlib logger it writes through is named after
    the service."""

    def __init__(self, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.service = environ.get("POWERTOOLS_SERVICE_NAME") or "service_undefined"
        self.registered_formatter = JsonFormatter(self.service)
        self._logger = logging.getLogger(self.service)
        handler = logging.StreamHandler(sys.stdout if stream is None else stream)
        handler.setFormatter(self.registered_formatter)
        for existing in logging.getLogger().handlers:
            # pytest's capture handler stays, so that tests see every record.
            if type(existing).__name__ != "LogCaptureHandler":
                existing.addFilter(_NotOurs(self.service))
        self._logger.addHandler(handler)
        self._logger.setLevel(log_level(environ))
        # A provisioned environment is initialised ahead of its first invocation: not a cold start.
        self._cold_start = environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"

    def setLevel(self, level: str | int) -> None:
        self._logger.setLevel(level.upper() if isinstance(level, str) else level)

    def debug(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        self._logger.debug(message, extra=extra, stacklevel=2)

    def info(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        self._logger.info(message, extra=extra, stacklevel=2)

    def warning(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        self._logger.warning(message, extra=extra, stacklevel=2)

    def error(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        self._logger.error(message, extra=extra, stacklevel=2)

    def exception(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        """At ERROR, with the exception being handled and its traceback."""
        self._logger.error(message, extra=extra, exc_info=True, stacklevel=2)

    def append_keys(self, **keys: Any) -> None:
        """Keys on every line from now on, from every thread."""
        self.registered_formatter.keys = {**self.registered_formatter.keys, **keys}

    def remove_keys(self, names: Iterable[str]) -> None:
        drop = set(names)
        kept = {k: v for k, v in self.registered_formatter.keys.items() if k not in drop}
        self.registered_formatter.keys = kept

    def thread_safe_append_keys(self, **keys: Any) -> None:
        """Keys on this thread's lines only (each order of a batch runs on a thread of its own)."""
        self.registered_formatter.thread_keys().update(keys)

    def thread_safe_remove_keys(self, names: Iterable[str]) -> None:
        thread_keys = self.registered_formatter.thread_keys()
        for name in names:
            thread_keys.pop(name, None)

    @overload
    def inject_lambda_context(self, handler: Handler) -> Handler: ...

    @overload
    def inject_lambda_context(self, *, correlation_id_path: str) -> Callable[[Handler], Handler]: ...

    def inject_lambda_context(
        self, handler: Handler | None = None, *, correlation_id_path: str | None = None
    ) -> Handler | Callable[[Handler], Handler]:
        """The Lambda context's keys (and cold_start, and the event's ``correlation_id_path`` member
        as correlation_id) on every line of the invocation."""
        if handler is None:
            return functools.partial(self._with_context, correlation_id_path=correlation_id_path)
        return self._with_context(handler, None)

    def _with_context(self, handler: Handler, correlation_id_path: str | None) -> Handler:

        @functools.wraps(handler)
        def decorated(event: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
            cold_start, self._cold_start = self._cold_start, False
            self.append_keys(
                cold_start=cold_start,
                function_name=getattr(context, "function_name", None),
                function_memory_size=getattr(context, "memory_limit_in_mb", None),
                function_arn=getattr(context, "invoked_function_arn", None),
                function_request_id=getattr(context, "aws_request_id", None),
            )
            if correlation_id_path is not None:
                self.append_keys(correlation_id=_member(event, correlation_id_path))
            return handler(event, context, *args, **kwargs)

        return cast(Handler, decorated)


def _member(event: Any, path: str) -> Any:
    """``a.b`` of a JSON event, or None."""
    for name in path.split("."):
        event = event.get(name) if isinstance(event, dict) else None
    return event
