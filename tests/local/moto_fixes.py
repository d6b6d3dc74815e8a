"""Fixes to moto 5.2.5 so local runs answer task tokens as AWS does, and a burst's queue stays fast.

Two concern answering a caller's task token, not our code:
- its ``aws-sdk:*`` integration passes the PascalCase parameter names Step Functions uses
  (``TaskToken``, ``Output``) straight to boto3, which only knows the SFN API's own camelCase
  names, so the loop's ``ReportSuccessToCaller`` / ``ReportFailureToCaller`` fail with
  ``States.Runtime``; Step Functions maps them to the API's member names;
- its ``SendTaskFailure`` handler drops ``cause``.

Four keep moto's cost per request flat as a queue grows, with the same answers (a burst puts
thousands of messages in one queue; moto's cost per receive grew with the square of its length,
so a run measured moto, not the budget: ``docs/rate-limits.md``):
- SQS's receive checks each message's retention by computing *every* queue attribute, the three
  message counts included, each a scan of the queue: it reads the retention period alone;
- the visible-message list and the three counts read the clock once per scan, not once per message;
- EventBridge's input transformer builds a new JSONPath parser (its grammar tables) for every
  path of every event it delivers: a path's parse is kept, as it never changes;
- its HTTP dispatcher lists moto's package folder on every request, under a lock shared by all
  requests: the list, which never changes while moto runs, is read once.

:class:`tests.local.moto_server.LocalAws` installs them while it runs. They patch private moto
methods: moto is pinned, and ``tests/local/tests/test_lambda_runtime_canary.py`` fails if a target moves.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import botocore.session
import jsonpath_ng.ext
from jsonpath_ng import JSONPath
from moto import backends
from moto.core.responses import EmptyResult
from moto.core.utils import unix_time_millis
from moto.sqs.models import Message, Queue, SQSBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.responses import StepFunctionResponse

PATCH_TARGETS: tuple[tuple[Any, str], ...] = (
    (StateTaskServiceAwsSdk, "_normalise_parameters"),
    (StepFunctionResponse, "send_task_failure"),
    (SQSBackend, "is_message_valid_based_on_retention_period"),
    (Queue, "messages"),
    (Queue, "approximate_number_of_messages"),
    (Queue, "approximate_number_of_messages_delayed"),
    (Queue, "approximate_number_of_messages_not_visible"),
    (backends, "list_of_moto_modules"),
    (jsonpath_ng.ext, "parse"),
)
_originals: dict[tuple[type[Any], str], Any] = {}


def _aws_sdk_parameters_by_member_name(
    self: StateTaskServiceAwsSdk,
    parameters: dict[str, Any],
    boto_service_name: str | None = None,
    service_action_name: str | None = None,
) -> None:
    """What Step Functions does for aws-sdk tasks: PascalCase names -> the API's member names."""
    service = self._get_boto_service_name(boto_service_name)
    action = service_action_name or self.resource.api_action
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(action[:1].upper() + action[1:]).input_shape
    members = {name.lower(): name for name in shape.members} if shape is not None else {}
    for key in list(parameters):
        member = members.get(key.lower())
        if member is not None and member != key:
            parameters[member] = parameters.pop(key)


def _send_task_failure_with_cause(self: StepFunctionResponse) -> Any:
    """moto's SendTaskFailure handler, passing ``cause`` on as the API does."""
    backend: Any = self.stepfunction_backend  # the executing backend takes a cause; the base class not
    backend.send_task_failure(
        self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
    )
    return EmptyResult()


def _retained(self: SQSBackend, queue_name: str, message: Message) -> bool:
    """moto's retention check, reading the one attribute it needs instead of all of them."""
    retention_seconds = float(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return bool(retention_seconds + message.sent_timestamp / 1000 > unix_time_millis() / 1000)  # type: ignore[operator]


def _visible(queue: Queue) -> list[Message]:
    now = unix_time_millis()  # Message.visible and .delayed, with one reading of the clock
    return [m for m in list(queue._messages) if now > m.visible_at and not now < m.delayed_until]


def _count_delayed(queue: Queue) -> int:
    now = unix_time_millis()
    return sum(1 for m in list(queue._messages) if now < m.delayed_until)


def _count_not_visible(queue: Queue) -> int:
    now = unix_time_millis()
    return sum(1 for m in list(queue._messages) if not now > m.visible_at)


@functools.cache
def _moto_modules() -> tuple[str, ...]:
    return tuple(_ORIGINAL_MODULE_LIST())


_ORIGINAL_MODULE_LIST = backends.list_of_moto_modules


def _list_of_moto_modules() -> Iterable[str]:
    return _moto_modules()


_ORIGINAL_JSONPATH_PARSE = jsonpath_ng.ext.parse  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1024)
def _parsed(path: str) -> JSONPath:
    return _ORIGINAL_JSONPATH_PARSE(path)


def _jsonpath_parse(path: str, debug: bool | None = None) -> JSONPath:
    return _ORIGINAL_JSONPATH_PARSE(path, debug) if debug else _parsed(path)


_FIXES = (
    _aws_sdk_parameters_by_member_name,
    _send_task_failure_with_cause,
    _retained,
    property(_visible),
    property(lambda queue: len(_visible(queue))),
    property(_count_delayed),
    property(_count_not_visible),
    _list_of_moto_modules,
    _jsonpath_parse,
)


def install() -> None:
    for (owner, name), fix in zip(PATCH_TARGETS, _FIXES, strict=True):
        if (owner, name) not in _originals:
            _originals[(owner, name)] = getattr(owner, name)  # AttributeError if moto moved it
            setattr(owner, name, fix)


def uninstall() -> None:
    for (owner, name), original in list(_originals.items()):
        setattr(owner, name, original)
        del _originals[(owner, name)]


def is_installed() -> bool:
    return all(getattr(owner, name) is fix for (owner, name), fix in zip(PATCH_TARGETS, _FIXES, strict=True))
