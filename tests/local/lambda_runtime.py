"""In-process Lambda runtime for moto: run our real handlers when moto's Lambda is invoked.

moto's Docker-free Lambda (``moto.awslambda_simple``) only echoes the payload. This module
patches ``LambdaSimpleBackend.invoke`` (a private method, signature as of moto 5.2.5:
``invoke(self, function_name, qualifier, body, headers, response_headers)``) so that an
invocation of a *registered* function imports the handler from its code directory and calls
it in this process, the way the Lambda Python runtime would:

* sandboxes as Lambda keeps them: an invocation takes an idle sandbox of the function (warm)
  or starts a new one (a cold start: ``<code_dir>/<module>.py`` imported under a module name
  unique to that sandbox; our functions all have an ``app.py``), so one sandbox never runs
  two invocations at once, just as a Lambda execution environment never does; the
  function's environment is applied to ``os.environ`` before the import and before
  every invocation (``os.environ`` is process-wide, so functions that run at the same time
  see each other's variables: keep shared variables consistent between functions);
* a context object like the runtime's (``aws_request_id`` per invocation,
  ``get_remaining_time_in_millis()`` counting down from the function's ``Timeout``);
* the result comes back as JSON bytes; an exception comes back as the runtime reports it
  (``X-Amz-Function-Error: Unhandled`` and ``{"errorType", "errorMessage", "requestId",
  "stackTrace"}``); a handler that ran longer than its ``Timeout`` is reported as
  ``Sandbox.Timedout`` (its side effects cannot be undone here) and gets a fresh cold start.

Crash injection (:func:`inject_crashes`, for soak tests): a plan chooses invocations that die
mid-way, as a sandbox killed by a timeout or by the kernel does. From the planned point on
(after the handler's k-th outbound HTTP request has been sent, or once the handler returned),
every thread of that invocation gets :class:`SandboxKilled` (a ``BaseException``: nothing in the
handler catches it and carries on) at its next outbound request, and a request on the wire has
its answer thrown away (the far end did the work). So the records that finished stay finished,
the ones in flight stop where they were (their orders held until their leases run out), and
the rest never start. The invocation is reported as ``Sandbox.Timedout`` after
holding until the function's deadline, or at once as ``Runtime.ExitError`` (``signal: killed``);
the sandbox is thrown away. Requests are counted and stopped in
``urllib3.connectionpool.HTTPConnectionPool.urlopen`` (both requests and botocore send through
it), patched only while a plan is set; the invocation is known through a ``ContextVar``, which
asyncio tasks and ``asyncio.to_thread`` copy into the threads that work for it.

Unregistered functions keep moto's own behaviour. Every invocation of a registered function
is recorded (see :func:`invocations`). Safe to use from several threads: the Step Functions
interpreter runs each execution in its own thread, and the moto server answers each request
in its own thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import decimal
import importlib.util
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda_simple.models import LambdaSimpleBackend
from urllib3.connectionpool import HTTPConnectionPool

__all__ = [
    "PATCH_TARGET",
    "Crash",
    "CrashPlan",
    "Invocation",
    "LambdaContext",
    "SandboxKilled",
    "clear_invocations",
    "inject_crashes",
    "install",
    "installed",
    "invocations",
    "is_installed",
    "register_function",
    "registered_functions",
    "uninstall",
    "unregister_all",
]

#: The class and method this module patches (checked by the canary test).
PATCH_TARGET: tuple[type[Any], str] = (LambdaSimpleBackend, "invoke")

_OWN_FILES = frozenset({__file__, importlib.util.__file__})


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One invocation of a registered function."""

    function_name: str
    payload: Any
    """The event the handler received (parsed JSON)."""
    request_id: str
    started_at: float
    """``time.time()`` when the handler was called."""
    duration: float
    """Seconds spent in the handler (the cold-start import is not included)."""
    cold_start: bool
    error: str | None
    """``errorType`` when the invocation failed, else ``None``."""
    response: Any
    """What the caller got back: the handler's result, or the error object."""
    invocation_type: str = "RequestResponse"


class LambdaContext:
    """The context object the Lambda Python runtime passes to a handler."""

    def __init__(
        self,
        *,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        timeout_seconds: float,
        log_group_name: str,
        log_stream_name: str,
        aws_request_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        # The real runtime reads it from AWS_LAMBDA_FUNCTION_MEMORY_SIZE: a string.
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline_ms = int(time.time() * 1000) + int(timeout_seconds * 1000)

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r})"


@dataclasses.dataclass
class _Function:
    name: str
    code_dir: Path
    handler: str
    environment: dict[str, str]
    module_name: str
    log_stream_name: str
    load_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # Handlers of idle sandboxes (each from its own import of the module).
    idle: list[Callable[[Any, Any], Any]] = dataclasses.field(default_factory=list)
    sandboxes: int = 0


_lock = threading.RLock()  # registrations, the invocation log, os.environ updates
_functions: dict[str, _Function] = {}
_invocations: list[Invocation] = []
_original_invoke: Callable[..., Any] | None = None
_module_counter = 0


class SandboxKilled(BaseException):
    """Raised in the threads of an invocation whose sandbox died (crash injection)."""


@dataclasses.dataclass(frozen=True)
class Crash:
    """How one invocation dies (see the module docstring)."""

    after_requests: int | None = None
    """Die once this many outbound HTTP requests were sent; None (or fewer sent): when the
    handler returns, its result lost."""
    error_type: str = "Sandbox.Timedout"
    """``Sandbox.Timedout`` (held until the deadline) or ``Runtime.ExitError`` (at once)."""

    def __post_init__(self) -> None:
        if self.error_type not in ("Sandbox.Timedout", "Runtime.ExitError"):
            raise ValueError(f"unsupported crash error type {self.error_type!r}")
        if self.after_requests is not None and self.after_requests < 0:
            raise ValueError("after_requests must not be negative")


#: ``plan(function_name, event)`` -> the crash of that invocation, or None to let it live.
CrashPlan = Callable[[str, Any], Crash | None]


class _Dying:
    """The state of one invocation planned to crash, shared by the threads working for it."""

    def __init__(self, crash: Crash) -> None:
        self.crash = crash
        self.requests = 0
        self.dead = crash.after_requests == 0
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if self.dead:
                raise SandboxKilled("the sandbox died")

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1
            limit = self.crash.after_requests
            self.dead = self.dead or (limit is not None and self.requests >= limit)
        self.check()

    def kill(self) -> None:
        with self._lock:
            self.dead = True


_crash_plan: CrashPlan | None = None
_dying: contextvars.ContextVar[_Dying | None] = contextvars.ContextVar("lambda_runtime_dying", default=None)
_original_urlopen: Callable[..., Any] | None = None


def inject_crashes(plan: CrashPlan | None) -> None:
    """Ask ``plan`` before every invocation of a registered function; None stops injecting."""
    global _crash_plan, _original_urlopen  # noqa: PLW0603
    with _lock:
        _crash_plan = plan
        if plan is not None and _original_urlopen is None:
            _original_urlopen = HTTPConnectionPool.urlopen
            HTTPConnectionPool.urlopen = _guarded_urlopen  # type: ignore[method-assign]
        elif plan is None and _original_urlopen is not None:
            HTTPConnectionPool.urlopen = _original_urlopen  # type: ignore[method-assign]
            _original_urlopen = None


def _guarded_urlopen(self: HTTPConnectionPool, *args: Any, **kwargs: Any) -> Any:
    original = _original_urlopen or HTTPConnectionPool.urlopen
    dying = _dying.get()
    if dying is None:
        return original(self, *args, **kwargs)
    dying.check()
    try:
        return original(self, *args, **kwargs)
    finally:
        dying.count_request()  # raises once the sandbox is dead: the answer is thrown away


class _InitError(Exception):
    """A cold start failed; carries the runtime's error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("errorMessage", ""))
        self.error = error


def register_function(function_name: str, code_dir: Path, handler: str, environment: dict[str, str]) -> None:
    """Run ``handler`` (``module.function``, from ``code_dir``) when ``function_name`` is invoked.

    Registering a name again replaces the registration (and forces a new cold start).
    The function must also exist in moto (``create_function``); this only supplies its code.
    """
    global _module_counter  # noqa: PLW0603
    if "." not in handler:
        raise ValueError(f"handler must look like 'module.function', got {handler!r}")
    code_dir = Path(code_dir)
    with _lock:
        _module_counter += 1
        safe = re.sub(r"\W", "_", function_name)
        _functions[function_name] = _Function(
            name=function_name,
            code_dir=code_dir,
            handler=handler,
            environment=dict(environment),
            module_name=f"_local_lambda_{safe}_{_module_counter}",
            log_stream_name=f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
        )


def registered_functions() -> list[str]:
    with _lock:
        return sorted(_functions)


def unregister_all() -> None:
    """Forget every registration (imported handler modules are dropped too)."""
    with _lock:
        for fn in _functions.values():
            sys.modules.pop(fn.module_name, None)
        _functions.clear()


def invocations(function_name: str | None = None) -> list[Invocation]:
    """A snapshot of the recorded invocations, oldest first (optionally of one function)."""
    with _lock:
        return [i for i in _invocations if function_name in (None, i.function_name)]


def clear_invocations() -> None:
    with _lock:
        _invocations.clear()


def is_installed() -> bool:
    cls, attr = PATCH_TARGET
    return vars(cls).get(attr) is _hooked_invoke


def install() -> None:
    """Patch moto's Docker-free Lambda backend (idempotent)."""
    global _original_invoke  # noqa: PLW0603
    with _lock:
        if is_installed():
            return
        cls, attr = PATCH_TARGET
        original = getattr(cls, attr, None)
        if original is None:  # pragma: no cover - moto changed under us
            raise RuntimeError(f"moto has no {cls.__name__}.{attr} to patch any more")
        _original_invoke = original
        setattr(cls, attr, _hooked_invoke)


def uninstall() -> None:
    """Put moto's own ``invoke`` back (idempotent)."""
    global _original_invoke  # noqa: PLW0603
    with _lock:
        if is_installed() and _original_invoke is not None:
            cls, attr = PATCH_TARGET
            setattr(cls, attr, _original_invoke)
        _original_invoke = None


def _hooked_invoke(  # noqa: PLR0917 - moto calls it with this exact signature
    self: LambdaSimpleBackend,
    function_name: str,
    qualifier: str | None,
    body: Any,
    headers: Any,
    response_headers: Any,
) -> str | bytes | None:
    record = self.get_function(function_name, qualifier)  # raises moto's 404 if unknown
    with _lock:
        fn = _functions.get(record.function_name)
        original = _original_invoke
    if fn is None:
        if original is None:  # pragma: no cover - only if uninstalled mid-request
            raise RuntimeError("local Lambda runtime hook called while not installed")
        result: str | bytes | None = original(self, function_name, qualifier, body, headers, response_headers)
        return result

    event = _parse_event(body)
    invocation_type = (headers.get("X-Amz-Invocation-Type") if headers else None) or "RequestResponse"
    version = "$LATEST" if qualifier in (None, "$LATEST") else str(record.version)
    if function_name.startswith("arn:") and qualifier is None:
        invoked_arn = function_name  # as the caller spelt it, qualified or not
    else:
        invoked_arn = (
            f"arn:{record.partition}:lambda:{record.region}:{record.account_id}"
            f":function:{record.function_name}"
        )
        if qualifier:
            invoked_arn = f"{invoked_arn}:{qualifier}"
    context_args: dict[str, Any] = {
        "function_name": record.function_name,
        "function_version": version,
        "invoked_function_arn": invoked_arn,
        "memory_limit_in_mb": int(record.memory_size),
        "timeout_seconds": float(record.timeout),
        "log_group_name": f"/aws/lambda/{record.function_name}",
        "log_stream_name": fn.log_stream_name,
    }
    response_headers["x-amz-executed-version"] = version

    if invocation_type == "DryRun":
        return b""
    if invocation_type == "Event":
        thread = threading.Thread(
            target=_run,
            args=(fn, event, context_args, {}, invocation_type),
            name=f"lambda-event-{record.function_name}",
            daemon=True,
        )
        thread.start()
        return b""

    payload = _run(fn, event, context_args, response_headers, invocation_type)
    response_headers["Content-Length"] = str(len(payload))
    return payload


def _parse_event(body: Any) -> Any:
    if body is None or body in (b"", ""):
        return {}
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else str(body)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LambdaClientError(
            "InvalidRequestContentException",
            f"Could not parse request body into json: {exc}",
        ) from exc


def _apply_environment(fn: _Function) -> None:
    with _lock:
        os.environ.update(fn.environment)


def _load_handler(fn: _Function) -> tuple[Callable[[Any, Any], Any], bool]:
    """An idle sandbox's handler, or a new sandbox's (the cold start). Give it back with
    :func:`_release` unless the sandbox is thrown away."""
    with fn.load_lock:
        if fn.idle:
            return fn.idle.pop(), False
        fn.sandboxes += 1
        module_name = f"{fn.module_name}_{fn.sandboxes}"
        module_path, _, attr = fn.handler.rpartition(".")
        file = fn.code_dir.joinpath(*module_path.split(".")).with_suffix(".py")
        _apply_environment(fn)
        try:
            module = _import_file(module_name, file, fn.code_dir)
        except SyntaxError as exc:
            raise _InitError(
                _error_object(
                    exc,
                    "Runtime.UserCodeSyntaxError",
                    f"Syntax error in module '{module_path}': {exc}",
                )
            ) from exc
        except ImportError as exc:
            raise _InitError(
                _error_object(
                    exc,
                    "Runtime.ImportModuleError",
                    f"Unable to import module '{module_path}': {exc}",
                )
            ) from exc
        except Exception as exc:  # an exception raised while the module initialises
            raise _InitError(_error_object(exc)) from exc
        handler_fn = getattr(module, attr, None)
        if not callable(handler_fn):
            raise _InitError(
                {
                    "errorMessage": f"Handler '{attr}' missing on module '{module_path}'",
                    "errorType": "Runtime.HandlerNotFound",
                    "stackTrace": [],
                }
            )
        return handler_fn, True


def _release(fn: _Function, handler_fn: Callable[[Any, Any], Any]) -> None:
    with fn.load_lock:
        fn.idle.append(handler_fn)


def _import_file(module_name: str, file: Path, code_dir: Path) -> ModuleType:
    if not file.is_file():
        raise ModuleNotFoundError(f"No module named '{file.stem}'")
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd files
        raise ImportError(f"cannot load {file.name}")
    module = importlib.util.module_from_spec(spec)
    # Lambda puts the code directory on sys.path (for sibling modules) while it imports.
    code_path = str(code_dir)
    with _lock:
        sys.modules[module_name] = module
        added = code_path not in sys.path
        if added:
            sys.path.insert(0, code_path)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        with _lock:
            sys.modules.pop(module_name, None)
        raise
    finally:
        if added:
            with _lock, contextlib.suppress(ValueError):
                sys.path.remove(code_path)
    return module


def _error_object(
    exc: BaseException, error_type: str | None = None, message: str | None = None
) -> dict[str, Any]:
    return {
        "errorMessage": str(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_list(
            # Like the runtime, show the function's frames, not the runtime's own.
            [
                f
                for f in traceback.extract_tb(exc.__traceback__)
                if f.filename not in _OWN_FILES and not f.filename.startswith("<frozen")
            ]
        ),
    }


def _json_default(value: Any) -> Any:
    # The Python runtime serialises Decimal (as DynamoDB returns numbers) as a float.
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _run(
    fn: _Function,
    event: Any,
    context_args: dict[str, Any],
    response_headers: Any,
    invocation_type: str,
) -> bytes:
    request_id = str(uuid.uuid4())
    context = LambdaContext(**context_args, aws_request_id=request_id)
    cold = False
    discard = False  # the sandbox died: the next invocation gets a fresh one
    handler_fn: Callable[[Any, Any], Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    started = time.time()
    elapsed = 0.0
    try:
        handler_fn, cold = _load_handler(fn)
    except _InitError as exc:
        error = exc.error
    else:
        _apply_environment(fn)
        # The deadline counts from the call to the handler, not from the cold start.
        context = LambdaContext(**context_args, aws_request_id=request_id)
        started = time.time()
        t0 = time.monotonic()
        with _lock:
            plan = _crash_plan
        crash = plan(fn.name, event) if plan is not None else None
        dying = _Dying(crash) if crash is not None else None
        token = _dying.set(dying)
        try:
            result = handler_fn(event, context)
            if dying is not None:  # it did not die on the way: it dies now, the result lost
                dying.kill()
                raise SandboxKilled("the sandbox died after the handler returned")
        except SandboxKilled:
            discard = True
            if crash is not None and crash.error_type == "Runtime.ExitError":
                error = {
                    "errorMessage": (
                        f"RequestId: {request_id} Error: Runtime exited with error: signal: killed"
                    ),
                    "errorType": "Runtime.ExitError",
                }
            else:  # hung until the deadline: reported as the timeout below
                time.sleep(context.get_remaining_time_in_millis() / 1000 + 0.01)
        except Exception as exc:
            error = _error_object(exc)
        except SystemExit as exc:  # the runtime process would exit: a fresh sandbox next time
            error = {
                "errorMessage": (
                    f"RequestId: {request_id} Error: Runtime exited with error: exit status {exc.code}"
                ),
                "errorType": "Runtime.ExitError",
            }
            discard = True
        finally:
            _dying.reset(token)
        elapsed = time.monotonic() - t0

    timeout = float(context_args["timeout_seconds"])
    if elapsed > timeout:
        error = {
            "errorMessage": (
                f"{datetime.now(UTC).isoformat(timespec='milliseconds').replace('+00:00', 'Z')} "
                f"{context.aws_request_id} Task timed out after {timeout:.2f} seconds"
            ),
            "errorType": "Sandbox.Timedout",
        }
        discard = True  # Lambda throws the timed-out sandbox away
    if handler_fn is not None and not discard:
        _release(fn, handler_fn)

    payload: bytes
    if error is None:
        try:
            payload = json.dumps(result, default=_json_default).encode("utf-8")
        except (TypeError, ValueError) as exc:
            error = {
                "errorMessage": f"Unable to marshal response: {exc}",
                "errorType": "Runtime.MarshalError",
                "stackTrace": [],
            }
    if error is not None:
        error = {**error, "requestId": context.aws_request_id}
        error.setdefault("stackTrace", [])
        response_headers["x-amz-function-error"] = "Unhandled"
        payload = json.dumps(error).encode("utf-8")

    with _lock:
        _invocations.append(
            Invocation(
                function_name=fn.name,
                payload=event,
                request_id=context.aws_request_id,
                started_at=started,
                duration=elapsed,
                cold_start=cold,
                error=None if error is None else str(error.get("errorType")),
                response=result if error is None else error,
                invocation_type=invocation_type,
            )
        )
    return payload


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``install()`` for the duration of a ``with`` block (restores the previous state)."""
    was_installed = is_installed()
    install()
    try:
        yield
    finally:
        if not was_installed:
            uninstall()
