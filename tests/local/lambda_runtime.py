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
  "stackTrace"}``);
* the deadline, as Lambda enforces it: Lambda ends an invocation that runs longer than its
  ``Timeout`` (nothing of it runs afterwards) and throws its execution environment away. Here
  the handler runs in a thread of its own; once ``Timeout`` seconds have passed since it was
  called, the caller is answered ``Sandbox.Timedout`` at once, the sandbox is thrown away (the
  next invocation is a cold start), and the invocation dies as a crashed one does (below):
  none of its threads sends another request, and an answer still on the wire is thrown away
  (the far end did the work). A thread cannot be ended from outside, so the handler's thread
  runs on until its next outbound request (where it gets :class:`SandboxKilled`) or its end,
  with its result dropped: only what it does without a request (local files, logs) outlives
  the deadline.

Crash injection (:func:`inject_crashes`, for soak tests): a plan chooses invocations that die
mid-way, as a sandbox killed by a timeout or by the kernel does. From the planned point on
(after the handler's k-th outbound HTTP request has been sent, or once the handler returned),
every thread of that invocation gets :class:`SandboxKilled` (a ``BaseException``: nothing in the
handler catches it and carries on) at its next outbound request, and a request on the wire has
its answer thrown away (the far end did the work). So the records that finished stay finished,
the ones in flight stop where they were (their orders held until their leases run out), and
the rest never start. The invocation is reported as ``Sandbox.Timedout`` after
holding until the function's deadline, or at once as ``Runtime.ExitError`` (``signal: killed``);
the sandbox is thrown away.

Requests are counted and stopped in ``urllib3.connectionpool.HTTPConnectionPool.urlopen``
(both our QFPay client and botocore send through it), patched while the runtime is installed;
outside an invocation the patch only reads a ``ContextVar``. The invocation is known through
that ``ContextVar``, which asyncio tasks and ``asyncio.to_thread`` copy into the threads that
work for it.

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
    """Raised in the threads of an invocation whose sandbox died (its deadline, or crash injection)."""


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
    """How one invocation dies (at its deadline, or earlier as its crash plans), shared by the
    threads working for it."""

    def __init__(self, crash: Crash | None, deadline: float) -> None:
        self.crash = crash
        self.deadline = deadline
        """``time.monotonic()`` at which the function's ``Timeout`` ends the invocation."""
        self.requests = 0
        self.dead = crash is not None and crash.after_requests == 0
        self._lock = threading.Lock()

    def past_deadline(self) -> bool:
        return time.monotonic() >= self.deadline

    def check(self) -> None:
        with self._lock:
            self.dead = self.dead or self.past_deadline()
            if self.dead:
                raise SandboxKilled("the sandbox died")

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1
            limit = None if self.crash is None else self.crash.after_requests
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
    global _crash_plan  # noqa: PLW0603
    with _lock:
        _crash_plan = plan


def _guard_requests(on: bool) -> None:
    """Route (or stop routing) every urllib3 request through :func:`_guarded_urlopen`."""
    global _original_urlopen  # noqa: PLW0603
    with _lock:
        if on and _original_urlopen is None:
            _original_urlopen = HTTPConnectionPool.urlopen
            HTTPConnectionPool.urlopen = _guarded_urlopen  # type: ignore[method-assign]
        elif not on and _original_urlopen is not None:
            HTTPConnectionPool.urlopen = _original_urlopen  # type: ignore[method-assign]
            _original_urlopen = None


def _guarded_urlopen(self: HTTPConnectionPool, *args: Any, **kwargs: Any) -> Any:
    original = _original_urlopen or HTTPConnectionPool.urlopen
    dying = _dying.get()
    if dying is None:
        return original(self, *args, **kwargs)
    dying.check()  # dead (its deadline passed, or it crashed): the request never leaves
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
    """Patch moto's Docker-free Lambda backend, and urllib3 for the deadline (idempotent)."""
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
        _guard_requests(True)


def uninstall() -> None:
    """Put moto's own ``invoke`` and urllib3's ``urlopen`` back (idempotent)."""
    global _original_invoke  # noqa: PLW0603
    with _lock:
        if is_installed() and _original_invoke is not None:
            cls, attr = PATCH_TARGET
            setattr(cls, attr, _original_invoke)
        _original_invoke = None
        _guard_requests(False)


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


class _HandlerCall:
    """One call of a handler, in a thread of its own, so that the caller can be answered at
    the deadline while the handler is still busy (a thread cannot be ended from outside: it
    dies at its next outbound request, see :class:`_Dying`)."""

    def __init__(
        self,
        handler_fn: Callable[[Any, Any], Any],
        event: Any,
        context: LambdaContext,
        dying: _Dying,
        *,
        name: str,
    ) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._exception: BaseException | None = None
        # The invocation's ContextVar is set in the context the handler's thread runs in (and
        # that asyncio copies into the threads working for it), not in the caller's.
        invocation_context = contextvars.copy_context()
        invocation_context.run(_dying.set, dying)
        self._thread = threading.Thread(
            target=invocation_context.run,
            args=(self._call, handler_fn, event, context),
            name=name,
            daemon=True,
        )
        self._thread.start()

    def _call(self, handler_fn: Callable[[Any, Any], Any], event: Any, context: LambdaContext) -> None:
        try:
            self._result = handler_fn(event, context)
        except BaseException as exc:  # handed to the caller, as the runtime sees it
            self._exception = exc
        finally:
            self._done.set()

    def wait(self, deadline: float) -> bool:
        """True once the handler ended (returned or raised); False if ``deadline`` (monotonic) came first."""
        return self._done.wait(max(deadline - time.monotonic(), 0))

    def result(self) -> Any:
        """The handler's result; raises what the handler raised."""
        if self._exception is not None:
            raise self._exception
        return self._result


def _run(
    fn: _Function,
    event: Any,
    context_args: dict[str, Any],
    response_headers: Any,
    invocation_type: str,
) -> bytes:
    request_id = str(uuid.uuid4())
    context = LambdaContext(**context_args, aws_request_id=request_id)
    timeout = float(context_args["timeout_seconds"])
    cold = False
    discard = False  # the sandbox died: the next invocation gets a fresh one
    timed_out = False
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
        dying = _Dying(crash, deadline=t0 + timeout)
        call = _HandlerCall(handler_fn, event, context, dying, name=f"lambda-{fn.name}-{request_id[:8]}")
        try:
            if not call.wait(dying.deadline):
                # Lambda ends the invocation here; its thread dies at its next request.
                dying.kill()
                timed_out = True
            else:
                result = call.result()
                if crash is not None:  # it did not die on the way: it dies now, the result lost
                    dying.kill()
                    raise SandboxKilled("the sandbox died after the handler returned")
        except SandboxKilled:
            discard = True
            if crash is not None and crash.error_type == "Runtime.ExitError" and not dying.past_deadline():
                error = {
                    "errorMessage": (
                        f"RequestId: {request_id} Error: Runtime exited with error: signal: killed"
                    ),
                    "errorType": "Runtime.ExitError",
                }
            else:  # hung until the deadline: reported as the timeout below
                time.sleep(max(dying.deadline - time.monotonic(), 0) + 0.01)
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
        elapsed = time.monotonic() - t0

    if timed_out or elapsed > timeout:
        error = {
            "errorMessage": (
                f"{datetime.now(UTC).isoformat(timespec='milliseconds').replace('+00:00', 'Z')} "
                f"{context.aws_request_id} Task timed out after {timeout:.2f} seconds"
            ),
            "errorType": "Sandbox.Timedout",
        }
        result = None
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
