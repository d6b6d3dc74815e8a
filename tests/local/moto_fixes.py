"""Two fixes to moto 5.2.5's Step Functions so local runs answer task tokens as AWS does.

Both concern answering a caller's task token, not our code:
- its ``aws-sdk:*`` integration passes the PascalCase parameter names Step Functions uses
  (``TaskToken``, ``Output``) straight to boto3, which only knows the SFN API's own camelCase
  names, so the loop's ``ReportSuccessToCaller`` / ``ReportFailureToCaller`` fail with
  ``States.Runtime``; Step Functions maps them to the API's member names;
- its ``SendTaskFailure`` handler drops ``cause``.

:class:`tests.local.moto_server.LocalAws` installs them while it runs. They patch private moto
methods: moto is pinned, and ``tests/local/tests/test_lambda_runtime_canary.py`` fails if a target moves.
"""

from __future__ import annotations

from typing import Any

import botocore.session
from moto.core.responses import EmptyResult
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.responses import StepFunctionResponse

PATCH_TARGETS: tuple[tuple[type[Any], str], ...] = (
    (StateTaskServiceAwsSdk, "_normalise_parameters"),
    (StepFunctionResponse, "send_task_failure"),
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


_FIXES = (_aws_sdk_parameters_by_member_name, _send_task_failure_with_cause)


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
