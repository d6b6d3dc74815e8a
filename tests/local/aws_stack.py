"""Builds the stack's resources in moto (or any endpoint boto3 is pointed at) from template.yaml.

moto's CloudFormation cannot run this stack usefully (its state machines land in the
non-executing backend and it has no Secrets Manager support there), so this module reads
template.yaml itself and creates, with plain boto3 clients, what the template declares:

* the KMS keys (with their key policies) and the log groups (retention, key);
* the dead-letter queue and the order-timeout queue, with the template's attributes (their KMS
  key included) and a redrive policy naming the real DLQ ARN;
* the outcome event bus, the ingress bus ``OrderIngressBus`` (unless ``OrderTimeoutEventBusName``
  names another), the QFPay credentials secret (value: the given credentials; its KMS key and,
  once the roles exist, its resource policy) and the decision ledger table (key schema, TTL, SSE with
  its KMS key, point-in-time recovery);
* the template's IAM roles with their inline policies, and one more local role for what the
  template does not deploy (the example caller workflow);
* the functions (cancel, poll, reconcile, dead-letter; a tiny placeholder zip; Handler, Runtime,
  Timeout, MemorySize, Architectures, Role and Environment from the template and its Globals, with every
  Ref/GetAtt/Sub/If resolved to the local resources and the Parameters' defaults, AWS::NoValue
  left out), each also registered with ``tests.local.lambda_runtime.register_function`` so our
  real handler runs for it;
* the state machine from its ``DefinitionS3Location`` (a local path, as before ``sam package``)
  with ``DefinitionSubstitutions`` applied, its role and its ``EncryptionConfiguration``;
* the EventBridge rules: ``OrderTimeoutRule`` (other services' order-timeout events -> the
  queue, on the ingress bus, with the template's pattern, retry policy and dead-letter queue)
  and ``LoopUnknownOutcomeRule`` (the loop's UNKNOWN outcomes -> ``LoopUnknownOutcomeQueue``);
* the template's resource policies: queue policies, event bus policies, the secret's.

moto stores every policy, key and encryption setting above (they can be read back) but
enforces none: any local principal may send to the queues, put events on either bus or read the
secret, and nothing is really encrypted. tests/template/test_template.py evaluates the policies as IAM
does instead (tests/template/iam_policy.py).

* an "outcome observer": an EventBridge rule on the bus (``source: qfpay.cancellation``) that
  targets an SQS queue, read back with :meth:`Stack.read_outcomes`.

The SQS event source mapping is *not* created (moto would not deliver like Lambda's poller
does); its settings are on the :class:`Stack` for the local SQS deliverer.

Endpoints come from the standard ``AWS_ENDPOINT_URL`` variable, or moto's in-process mock when
it is active.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from cfnlint.decode.cfn_yaml import loads as load_cfn_yaml

__all__ = ["Stack", "StackTemplateError", "create_stack", "load_template"]

OUTCOME_SOURCE = "qfpay.cancellation"

QUEUE_ID = "OrderTimeoutQueue"
DLQ_ID = "OrderTimeoutDeadLetterQueue"
BUS_ID = "OutcomeEventBus"
INGRESS_BUS_ID = "OrderIngressBus"
SECRET_POLICY_ID = "QFPayCredentialsSecretPolicy"
SECRET_ID = "QFPayCredentialsSecret"
TABLE_ID = "IdempotencyTable"
CANCEL_ID = "CancelFunction"
POLL_ID = "PollFunction"
STATE_MACHINE_ID = "CancellationStateMachine"
INGRESS_RULE_ID = "OrderTimeoutRule"
LOOP_UNKNOWN_RULE_ID = "LoopUnknownOutcomeRule"
LOOP_UNKNOWN_QUEUE_ID = "LoopUnknownOutcomeQueue"
RECONCILE_ID = "ReconcileFunction"
DEAD_LETTER_ID = "DeadLetterFunction"
INTAKE_RULE_ID = "ReconciliationIntakeRule"
INTAKE_QUEUE_ID = "ReconciliationIntakeQueue"

# CloudFormation AWS::SQS::Queue properties that are SQS queue attributes of the same name.
_SQS_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "SqsManagedSseEnabled",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
)

_PLACEHOLDER_HANDLER = (
    "def lambda_handler(event, context):\n"
    "    raise RuntimeError('placeholder: tests.local.lambda_runtime runs the real handler')\n"
)

_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class StackTemplateError(ValueError):
    """template.yaml uses something this local builder cannot resolve or create."""


class _NoValue:
    """``AWS::NoValue``: the list item or property holding it is left out."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


@dataclass
class Stack:
    """What :func:`create_stack` created; names, URLs and ARNs as the functions see them."""

    stack_name: str
    region: str
    account_id: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    visibility_timeout: int
    max_receive_count: int
    bus_name: str
    bus_arn: str
    secret_id: str
    table_name: str
    role_arn: str
    cancel_function_name: str
    cancel_function_arn: str
    poll_function_name: str
    poll_function_arn: str
    state_machine_arn: str
    state_machine_definition: str
    cancel_environment: dict[str, str]
    poll_environment: dict[str, str]
    # The SQS event of CancelFunction (for the local SQS deliverer).
    batch_size: int
    maximum_concurrency: int | None
    maximum_batching_window_seconds: int
    function_response_types: list[str]
    outcome_queue_url: str
    outcome_queue_arn: str
    outcome_rule_name: str
    # OrderTimeoutRule: where other services put order-timeout events, and what it matches.
    ingress_bus_name: str
    ingress_rule_name: str
    ingress_rule_arn: str
    ingress_event_pattern: dict[str, Any]
    # LoopUnknownOutcomeRule and the queue it copies the loop's UNKNOWN outcomes to.
    loop_unknown_rule_name: str
    loop_unknown_queue_url: str
    # ReconcileFunction (invoked directly: moto runs no schedules) and its intake queue.
    reconcile_function_name: str
    reconcile_environment: dict[str, str]
    intake_queue_url: str
    # DeadLetterFunction (the DLQ's consumer; the local pipeline does not deliver the DLQ to it
    # unless a test starts an SqsEventSource for it).
    dead_letter_function_name: str = ""
    dead_letter_environment: dict[str, str] = field(default_factory=dict)
    _sqs: Any = field(repr=False, compare=False, default=None)

    @property
    def function_environments(self) -> dict[str, dict[str, str]]:
        """Environment of each function, by function name."""
        return {
            self.cancel_function_name: self.cancel_environment,
            self.poll_function_name: self.poll_environment,
            self.reconcile_function_name: self.reconcile_environment,
            self.dead_letter_function_name: self.dead_letter_environment,
        }

    def read_outcome_events(
        self, wait_seconds: float = 5.0, expected: int | None = None
    ) -> list[dict[str, Any]]:
        """Drain the observer queue: the whole EventBridge events seen on the outcome bus.

        Waits up to ``wait_seconds`` for the first event (or for ``expected`` events), then
        keeps reading until the queue answers empty. Read messages are deleted.
        """
        sqs = self._sqs or boto3.client("sqs", region_name=self.region)
        deadline = time.monotonic() + wait_seconds
        events: list[dict[str, Any]] = []
        while True:
            answer = sqs.receive_message(
                QueueUrl=self.outcome_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            for message in messages:
                events.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.outcome_queue_url, ReceiptHandle=message["ReceiptHandle"])
            if messages:
                continue
            enough = len(events) >= expected if expected is not None else bool(events)
            if enough or time.monotonic() >= deadline:
                return events
            time.sleep(0.1)

    def read_outcomes(self, wait_seconds: float = 5.0, expected: int | None = None) -> list[dict[str, Any]]:
        """The ``detail`` of each outcome event (see :meth:`read_outcome_events`)."""
        details: list[dict[str, Any]] = []
        for event in self.read_outcome_events(wait_seconds=wait_seconds, expected=expected):
            detail = event.get("detail")
            if isinstance(detail, str):
                detail = json.loads(detail)
            if not isinstance(detail, dict):
                raise TypeError(f"outcome event without a JSON object detail: {event!r}")
            details.append(detail)
        return details


def load_template(template_path: Path) -> dict[str, Any]:
    """template.yaml as plain dicts/lists/strings, short tags (!Ref, !Sub...) expanded."""
    loaded = load_cfn_yaml(template_path.read_text(encoding="utf-8"), str(template_path))
    # cfn-lint's nodes are dict/str subclasses carrying line marks; make them plain.
    plain: dict[str, Any] = json.loads(json.dumps(loaded))
    return plain


class _Resolver:
    """Resolves the intrinsic functions template.yaml uses, against the local resources."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str],
        pseudo: Mapping[str, str],
    ) -> None:
        self.template = template
        # A CommaDelimitedList parameter is a list, as CloudFormation gives it ("" -> [""]).
        types = {name: spec.get("Type") for name, spec in template.get("Parameters", {}).items()}
        self.parameters: dict[str, Any] = {
            name: value.split(",") if types.get(name) == "CommaDelimitedList" else value
            for name, value in parameters.items()
        }
        self.pseudo: dict[str, Any] = {**pseudo, "AWS::NoValue": NO_VALUE}
        # logical id -> {"Ref": ..., "Arn": ..., other attributes}
        self.resources: dict[str, dict[str, str]] = {}

    def exists(self, logical_id: str) -> bool:
        """Whether the template creates this resource with these parameters (its Condition)."""
        condition = self.template.get("Resources", {}).get(logical_id, {}).get("Condition")
        return condition is None or self.condition(condition)

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise StackTemplateError(f"unknown condition {name!r}")
        return self._condition_value(conditions[name])

    def _condition_value(self, node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            (function, args), *_ = node.items()
            if function == "Fn::Equals":
                left, right = (self.resolve(arg) for arg in args)
                return bool(left == right)
            if function == "Fn::Not":
                return not self._condition_value(args[0])
            if function == "Fn::And":
                return all(self._condition_value(arg) for arg in args)
            if function == "Fn::Or":
                return any(self._condition_value(arg) for arg in args)
            if function == "Condition":
                return self.condition(args)
        raise StackTemplateError(f"unsupported condition {node!r}")

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name]["Ref"]
        raise StackTemplateError(f"Ref to {name!r}, which is not created locally (yet)")

    def get_att(self, name: str, attribute: str) -> str:
        try:
            return self.resources[name][attribute]
        except KeyError:
            raise StackTemplateError(f"GetAtt {name}.{attribute}: not created locally (yet)") from None

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            inner = match.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            if inner in variables:
                return self.scalar(variables[inner])
            if "." in inner and not inner.startswith("AWS::"):
                name, attribute = inner.split(".", 1)
                return self.get_att(name, attribute)
            return self.scalar({"Ref": inner})

        return _SUB_VARIABLE.sub(replace, text)

    def scalar(self, node: Any) -> str:
        value = self.resolve(node)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        raise StackTemplateError(f"expected a scalar, got {value!r}")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = (self.resolve(item) for item in node)
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, args), *_ = node.items()
            if key == "Ref":
                return self.ref(args)
            if key == "Fn::GetAtt":
                name, attribute = args.split(".", 1) if isinstance(args, str) else args
                return self.get_att(name, attribute)
            if key == "Fn::Sub":
                if isinstance(args, str):
                    return self.sub(args, {})
                return self.sub(args[0], args[1])
            if key == "Fn::If":
                condition, if_true, if_false = args
                return self.resolve(if_true if self.condition(condition) else if_false)
            if key == "Fn::Join":
                separator, items = args
                return separator.join(self.scalar(item) for item in self.resolve(items))
            if key == "Fn::Select":
                index, items = args
                return self.resolve(items)[int(self.scalar(index))]
            if key == "Fn::FindInMap":
                mapping, top, second = (self.scalar(arg) for arg in args)
                return self.template["Mappings"][mapping][top][second]
            if key.startswith("Fn::") or key == "Condition":
                raise StackTemplateError(f"unsupported intrinsic {key}")
        resolved = ((key, self.resolve(value)) for key, value in node.items())
        return {key: value for key, value in resolved if value is not NO_VALUE}


def _resource(template: Mapping[str, Any], logical_id: str, type_: str) -> dict[str, Any]:
    resources = template.get("Resources", {})
    if logical_id not in resources:
        raise StackTemplateError(f"template has no resource {logical_id!r}")
    resource: dict[str, Any] = resources[logical_id]
    if resource.get("Type") != type_:
        raise StackTemplateError(f"{logical_id} is {resource.get('Type')}, expected {type_}")
    return resource


def _parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for name, spec in template.get("Parameters", {}).items():
        if "Default" not in spec:
            raise StackTemplateError(f"parameter {name} has no Default: pass it locally how?")
        default = spec["Default"]
        defaults[name] = default if isinstance(default, str) else json.dumps(default)
    return defaults


def _bus_name(bus: str) -> str:
    """The name of an event bus given by name or ARN."""
    return bus.rsplit("/", 1)[-1] if bus.startswith("arn:") else bus


def _queue_attributes(resolver: _Resolver, properties: Mapping[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name in _SQS_ATTRIBUTES:
        if name in properties:
            attributes[name] = resolver.scalar(properties[name])
    if "RedrivePolicy" in properties:
        attributes["RedrivePolicy"] = json.dumps(resolver.resolve(properties["RedrivePolicy"]))
    return attributes


def _tiny_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", _PLACEHOLDER_HANDLER)
    return buffer.getvalue()


def _function_settings(template: Mapping[str, Any], logical_id: str, resolver: _Resolver) -> dict[str, Any]:
    """Properties of one AWS::Serverless::Function merged over Globals.Function, resolved."""
    globals_ = dict(template.get("Globals", {}).get("Function", {}))
    properties = _resource(template, logical_id, "AWS::Serverless::Function")["Properties"]
    merged: dict[str, Any] = {**globals_, **properties}
    variables = {
        **globals_.get("Environment", {}).get("Variables", {}),
        **properties.get("Environment", {}).get("Variables", {}),
    }
    merged["Environment"] = {name: resolver.scalar(value) for name, value in variables.items()}
    return merged


def _sqs_event(properties: Mapping[str, Any], resolver: _Resolver) -> dict[str, Any]:
    events = [
        event["Properties"] for event in properties.get("Events", {}).values() if event.get("Type") == "SQS"
    ]
    if len(events) != 1:
        raise StackTemplateError(f"expected one SQS event on {CANCEL_ID}, found {len(events)}")
    event = events[0]
    scaling = event.get("ScalingConfig", {})
    concurrency = scaling.get("MaximumConcurrency")
    return {
        "batch_size": int(resolver.scalar(event.get("BatchSize", 10))),
        "maximum_batching_window_seconds": int(
            resolver.scalar(event.get("MaximumBatchingWindowInSeconds", 0))
        ),
        "maximum_concurrency": None if concurrency is None else int(resolver.scalar(concurrency)),
        "function_response_types": list(event.get("FunctionResponseTypes", [])),
        "queue": event.get("Queue"),
    }


def _state_machine_definition(template_dir: Path, properties: Mapping[str, Any], resolver: _Resolver) -> str:
    text = (template_dir / properties["DefinitionS3Location"]).read_text(encoding="utf-8")
    substitutions = {
        name: resolver.scalar(value) for name, value in properties.get("DefinitionSubstitutions", {}).items()
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in substitutions:
            raise StackTemplateError(f"${{{name}}} in the definition has no substitution")
        # The value lands inside a JSON string: keep it valid JSON.
        return json.dumps(substitutions[name])[1:-1]

    definition = _SUB_VARIABLE.sub(replace, text)
    json.loads(definition)  # still a JSON document
    return definition


def _create_rule(
    template: Mapping[str, Any], logical_id: str, resolver: _Resolver, events: Any, name: str
) -> dict[str, Any]:
    """One AWS::Events::Rule with an event pattern, and its targets, as the template declares them."""
    properties = resolver.resolve(_resource(template, logical_id, "AWS::Events::Rule")["Properties"])
    bus_name = _bus_name(str(properties.get("EventBusName", "default")))
    if bus_name != "default":
        try:
            events.describe_event_bus(Name=bus_name)
        except events.exceptions.ResourceNotFoundException:
            events.create_event_bus(Name=bus_name)
    pattern: dict[str, Any] = properties["EventPattern"]
    arn = events.put_rule(
        Name=name,
        EventBusName=bus_name,
        EventPattern=json.dumps(pattern),
        State=properties.get("State", "ENABLED"),
        Description=properties.get("Description", ""),
    )["RuleArn"]
    # On a custom bus, CloudFormation's Ref of a rule is "bus|rule".
    resolver.resources[logical_id] = {
        "Ref": name if bus_name == "default" else f"{bus_name}|{name}",
        "Arn": arn,
    }
    targets = [
        {
            key: target[key]
            for key in ("Id", "Arn", "RetryPolicy", "DeadLetterConfig", "Input", "InputPath")
            if key in target
        }
        for target in properties.get("Targets", [])
    ]
    if targets:
        answer = events.put_targets(Rule=name, EventBusName=bus_name, Targets=targets)
        if answer.get("FailedEntryCount"):
            raise StackTemplateError(f"{logical_id}: targets failed: {answer['FailedEntries']}")
    return {"name": name, "arn": arn, "bus_name": bus_name, "pattern": pattern}


def _logical_ids(template: Mapping[str, Any], type_: str) -> list[str]:
    return [name for name, r in template.get("Resources", {}).items() if r.get("Type") == type_]


def _create_key(template: Mapping[str, Any], logical_id: str, resolver: _Resolver, kms: Any) -> None:
    """An AWS::KMS::Key with its key policy (stored by moto, not enforced)."""
    properties = resolver.resolve(_resource(template, logical_id, "AWS::KMS::Key")["Properties"])
    metadata = kms.create_key(
        Description=properties.get("Description", ""),
        Policy=json.dumps(properties["KeyPolicy"]),
    )["KeyMetadata"]
    if properties.get("EnableKeyRotation"):
        kms.enable_key_rotation(KeyId=metadata["KeyId"])
    resolver.resources[logical_id] = {
        "Ref": metadata["KeyId"],
        "Arn": metadata["Arn"],
        "KeyId": metadata["KeyId"],
    }


def _create_log_group(
    template: Mapping[str, Any], logical_id: str, resolver: _Resolver, logs: Any, arn_prefix: str
) -> None:
    """An AWS::Logs::LogGroup (its Arn, like CloudFormation's, ends in ":*")."""
    properties = resolver.resolve(_resource(template, logical_id, "AWS::Logs::LogGroup")["Properties"])
    name = properties["LogGroupName"]
    # The same stack name may be created again in one local AWS.
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(
            logGroupName=name, **({"kmsKeyId": properties["KmsKeyId"]} if "KmsKeyId" in properties else {})
        )
    if "RetentionInDays" in properties:
        logs.put_retention_policy(logGroupName=name, retentionInDays=int(properties["RetentionInDays"]))
    resolver.resources[logical_id] = {"Ref": name, "Arn": f"{arn_prefix}:log-group:{name}:*"}


def _create_role(
    template: Mapping[str, Any], logical_id: str, resolver: _Resolver, iam: Any, name: str
) -> None:
    """An AWS::IAM::Role and its inline policies (moto stores them; it does not enforce IAM)."""
    properties = resolver.resolve(_resource(template, logical_id, "AWS::IAM::Role")["Properties"])
    if properties.get("ManagedPolicyArns"):
        raise StackTemplateError(f"{logical_id}: managed policies are not created locally")
    arn = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(properties["AssumeRolePolicyDocument"]),
        Description=properties.get("Description", ""),
    )["Role"]["Arn"]
    for policy in properties.get("Policies", []):
        iam.put_role_policy(
            RoleName=name,
            PolicyName=policy["PolicyName"],
            PolicyDocument=json.dumps(policy["PolicyDocument"]),
        )
    resolver.resources[logical_id] = {"Ref": name, "Arn": arn}


def _apply_event_bus_policies(template: Mapping[str, Any], resolver: _Resolver, events: Any) -> None:
    """Each bus's AWS::Events::EventBusPolicy statements, as one policy per bus."""
    statements: dict[str, list[dict[str, Any]]] = {}
    for logical_id in _logical_ids(template, "AWS::Events::EventBusPolicy"):
        if not resolver.exists(logical_id):
            continue
        properties = resolver.resolve(
            _resource(template, logical_id, "AWS::Events::EventBusPolicy")["Properties"]
        )
        if "Statement" not in properties:
            raise StackTemplateError(f"{logical_id}: only the Statement form is created locally")
        bus = _bus_name(str(properties.get("EventBusName", "default")))
        statements.setdefault(bus, []).append({"Sid": properties["StatementId"], **properties["Statement"]})
    for bus, bus_statements in statements.items():
        events.put_permission(
            EventBusName=bus, Policy=json.dumps({"Version": "2012-10-17", "Statement": bus_statements})
        )


def _apply_queue_policy(
    logical_id: str, properties: Mapping[str, Any], resolver: _Resolver, sqs: Any
) -> None:
    """An AWS::SQS::QueuePolicy: its document becomes the Policy attribute of each of its queues."""
    document = json.dumps(resolver.resolve(properties["PolicyDocument"]))
    queues = resolver.resolve(properties.get("Queues", []))
    if not queues:
        raise StackTemplateError(f"{logical_id} names no queue")
    for url in queues:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": document})


def _register_with_lambda_runtime(
    function_name: str, code_dir: Path, handler: str, environment: dict[str, str]
) -> None:
    # Imported here, not at module level: that module is the local Lambda runtime (it makes
    # moto run our handlers) and is only needed once functions exist.
    runtime = importlib.import_module("tests.local.lambda_runtime")
    register: Callable[..., None] = runtime.register_function
    register(
        function_name=function_name,
        code_dir=code_dir,
        handler=handler,
        environment=environment,
    )


def _register_outputs(
    cloudformation: Any, stack_name: str, outputs: dict[str, str], template: Mapping[str, Any]
) -> None:
    """A CloudFormation stack of that name whose Outputs are the local resources, so that tools
    reading a deployed stack's outputs (the operators' CLI, ``--stack``) work locally the same way.
    It holds one inert resource: the resources themselves were created above."""
    unknown = set(outputs) - set(template.get("Outputs", {}))
    if unknown:
        raise StackTemplateError(f"outputs not in template.yaml: {sorted(unknown)}")
    body = {
        "Resources": {"LocalPlaceholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    with warnings.catch_warnings():  # moto: "WaitConditionHandle ... not supported": it needs none
        warnings.simplefilter("ignore", UserWarning)
        cloudformation.create_stack(StackName=stack_name, TemplateBody=json.dumps(body))


# The local world's payments carry fixed dates (November 2026), so that every run is the same.
# Its decision ledger remembers orders for ten years, so that they stay recent payments: one older
# than the ledger's memory is asked about before its cancel (docs/ledger.md), which the tests of
# that rule set up on purpose with the deployed 48 h.
LOCAL_LEDGER_EXPIRY_SECONDS = str(3650 * 86400)


def create_stack(
    *,
    template_path: Path,
    credentials: dict[str, str],
    qfpay_base_url: str,
    env_overrides: dict[str, str] | None = None,
    visibility_timeout: int | None = None,
    stack_name: str = "qfpay-cancel-local",
    parameters: dict[str, str] | None = None,
) -> Stack:
    """Create the template's resources with boto3 and register our handlers; see the module doc.

    ``qfpay_base_url`` replaces ``QFPAY_BASE_URL`` of both functions, then ``env_overrides`` is
    applied to both. ``visibility_timeout`` replaces the queue's (local runs want it short).
    ``parameters`` replaces template Parameters' defaults (like ``sam deploy
    --parameter-overrides``); an event bus named by ``OrderTimeoutEventBusName`` that does not
    exist yet is created (it belongs to the producers, not to the template).
    """
    template_path = Path(template_path)
    template = load_template(template_path)
    template_dir = template_path.parent

    session = boto3.session.Session()
    region = session.region_name or "us-east-1"

    def client(service: str) -> Any:
        return session.client(service, region_name=region)

    sqs, events, secrets = client("sqs"), client("events"), client("secretsmanager")
    kms, logs = client("kms"), client("logs")
    dynamodb, iam, lambda_, sfn = (
        client("dynamodb"),
        client("iam"),
        client("lambda"),
        client("stepfunctions"),
    )
    account_id = str(client("sts").get_caller_identity()["Account"])
    partition = session.get_partition_for_region(region)

    parameter_values = _parameter_defaults(template)
    unknown = set(parameters or {}) - set(parameter_values)
    if unknown:
        raise StackTemplateError(f"no such template parameters: {sorted(unknown)}")
    parameter_values.update(parameters or {})
    resolver = _Resolver(
        template,
        parameter_values,
        {
            "AWS::StackName": stack_name,
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::Partition": partition,
            "AWS::URLSuffix": "amazonaws.com",
        },
    )

    def local_name(logical_id: str) -> str:
        return f"{stack_name}-{logical_id}"

    def create_queue(logical_id: str, override_visibility: int | None) -> dict[str, str]:
        properties = _resource(template, logical_id, "AWS::SQS::Queue").get("Properties", {})
        attributes = _queue_attributes(resolver, properties)
        if override_visibility is not None:
            attributes["VisibilityTimeout"] = str(override_visibility)
        url = sqs.create_queue(QueueName=local_name(logical_id), Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        resolver.resources[logical_id] = {
            "Ref": url,
            "Arn": arn,
            "QueueUrl": url,
            "QueueName": local_name(logical_id),
        }
        return attributes

    # KMS keys and log groups first: queues, secret, table, state machine and roles name them.
    for logical_id in _logical_ids(template, "AWS::KMS::Key"):
        if resolver.exists(logical_id):
            _create_key(template, logical_id, resolver, kms)
    for logical_id in _logical_ids(template, "AWS::Logs::LogGroup"):
        _create_log_group(template, logical_id, resolver, logs, f"arn:{partition}:logs:{region}:{account_id}")

    # Queues: the DLQ first, so the queue's RedrivePolicy resolves to its real ARN.
    create_queue(DLQ_ID, None)
    queue_attributes = create_queue(QUEUE_ID, visibility_timeout)
    redrive = json.loads(queue_attributes.get("RedrivePolicy", "{}"))

    # Outcome bus.
    bus_properties = _resource(template, BUS_ID, "AWS::Events::EventBus")["Properties"]
    bus_name = resolver.scalar(bus_properties["Name"])
    bus_arn = events.create_event_bus(Name=bus_name)["EventBusArn"]
    resolver.resources[BUS_ID] = {"Ref": bus_name, "Arn": bus_arn, "Name": bus_name}

    # Our ingress bus, unless OrderTimeoutEventBusName names an existing one.
    if resolver.exists(INGRESS_BUS_ID):
        ingress_properties = _resource(template, INGRESS_BUS_ID, "AWS::Events::EventBus")["Properties"]
        ingress_bus = resolver.scalar(ingress_properties["Name"])
        ingress_bus_arn = events.create_event_bus(Name=ingress_bus)["EventBusArn"]
        resolver.resources[INGRESS_BUS_ID] = {"Ref": ingress_bus, "Arn": ingress_bus_arn, "Name": ingress_bus}

    # EventBridge rules and what they deliver to; then the queue policies naming the rules.
    create_queue(LOOP_UNKNOWN_QUEUE_ID, None)
    create_queue(INTAKE_QUEUE_ID, None)
    ingress = _create_rule(template, INGRESS_RULE_ID, resolver, events, local_name(INGRESS_RULE_ID))
    loop_unknown = _create_rule(
        template, LOOP_UNKNOWN_RULE_ID, resolver, events, local_name(LOOP_UNKNOWN_RULE_ID)
    )
    _create_rule(template, INTAKE_RULE_ID, resolver, events, local_name(INTAKE_RULE_ID))
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::SQS::QueuePolicy":
            _apply_queue_policy(logical_id, resource.get("Properties", {}), resolver, sqs)

    # Credentials. The template creates this secret only without ExistingQFPaySecretArn; a
    # local run always has its own, so it is created whatever the condition says.
    secret_properties = _resource(template, SECRET_ID, "AWS::SecretsManager::Secret")["Properties"]
    create_secret: dict[str, Any] = {
        "Name": local_name(SECRET_ID),
        "Description": "QFPay credentials of the local cancellation stack",
        "SecretString": json.dumps(credentials),
    }
    if resolver.exists(SECRET_ID) and "KmsKeyId" in secret_properties:
        create_secret["KmsKeyId"] = resolver.scalar(secret_properties["KmsKeyId"])
    secret_arn = secrets.create_secret(**create_secret)["ARN"]
    resolver.resources[SECRET_ID] = {"Ref": secret_arn, "Id": secret_arn}

    # The decision ledger's table.
    table = _resource(template, TABLE_ID, "AWS::DynamoDB::Table")["Properties"]
    table_name = local_name(TABLE_ID)
    create_table: dict[str, Any] = {
        "TableName": table_name,
        "KeySchema": resolver.resolve(table["KeySchema"]),
        "AttributeDefinitions": resolver.resolve(table["AttributeDefinitions"]),
        "BillingMode": resolver.scalar(table.get("BillingMode", "PROVISIONED")),
    }
    if "GlobalSecondaryIndexes" in table:
        create_table["GlobalSecondaryIndexes"] = resolver.resolve(table["GlobalSecondaryIndexes"])
    if "SSESpecification" in table:
        sse = resolver.resolve(table["SSESpecification"])
        create_table["SSESpecification"] = {
            "Enabled": bool(sse.get("SSEEnabled", False)),
            **({"SSEType": sse["SSEType"]} if "SSEType" in sse else {}),
            **({"KMSMasterKeyId": sse["KMSMasterKeyId"]} if "KMSMasterKeyId" in sse else {}),
        }
    table_arn = dynamodb.create_table(**create_table)["TableDescription"]["TableArn"]
    if "TimeToLiveSpecification" in table:
        ttl = resolver.resolve(table["TimeToLiveSpecification"])
        dynamodb.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={
                "Enabled": bool(ttl.get("Enabled", False)),
                "AttributeName": ttl["AttributeName"],
            },
        )
    pitr = table.get("PointInTimeRecoverySpecification", {})
    if resolver.resolve(pitr.get("PointInTimeRecoveryEnabled", False)):
        dynamodb.update_continuous_backups(
            TableName=table_name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    resolver.resources[TABLE_ID] = {"Ref": table_name, "Arn": table_arn}

    # A role for what the template does not deploy (the example caller workflow): moto does not
    # enforce IAM.
    role_arn = iam.create_role(
        RoleName=local_name("LocalRole"),
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]

    # Functions and state machine refer to each other's ARNs (state machine -> poll function,
    # cancel function -> state machine): their names are ours, so the ARNs are known upfront.
    function_names = {
        CANCEL_ID: local_name(CANCEL_ID),
        POLL_ID: local_name(POLL_ID),
        RECONCILE_ID: local_name(RECONCILE_ID),
        DEAD_LETTER_ID: local_name(DEAD_LETTER_ID),
    }
    for logical_id, name in function_names.items():
        resolver.resources[logical_id] = {
            "Ref": name,
            "Arn": f"arn:{partition}:lambda:{region}:{account_id}:function:{name}",
        }
    machine_name = local_name(STATE_MACHINE_ID)
    machine_arn = f"arn:{partition}:states:{region}:{account_id}:stateMachine:{machine_name}"
    resolver.resources[STATE_MACHINE_ID] = {
        "Ref": machine_arn,
        "Arn": machine_arn,
        "Name": machine_name,
    }

    # The template's roles, with their inline policies as the template resolves them here.
    for logical_id in _logical_ids(template, "AWS::IAM::Role"):
        if resolver.exists(logical_id):
            _create_role(template, logical_id, resolver, iam, local_name(logical_id))

    environments: dict[str, dict[str, str]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for logical_id, name in function_names.items():
        merged = _function_settings(template, logical_id, resolver)
        environment = dict(merged["Environment"])
        environment["QFPAY_BASE_URL"] = qfpay_base_url
        environment["LEDGER_EXPIRY_SECONDS"] = LOCAL_LEDGER_EXPIRY_SECONDS
        environment.update(env_overrides or {})
        environments[logical_id] = environment
        settings[logical_id] = merged
        created = lambda_.create_function(
            FunctionName=name,
            Runtime=resolver.scalar(merged["Runtime"]),
            Role=resolver.scalar(merged["Role"]) if "Role" in merged else role_arn,
            Handler=resolver.scalar(merged["Handler"]),
            Code={"ZipFile": _tiny_zip()},
            Timeout=int(resolver.scalar(merged.get("Timeout", 3))),
            MemorySize=int(resolver.scalar(merged.get("MemorySize", 128))),
            Architectures=[resolver.scalar(a) for a in merged.get("Architectures", ["x86_64"])],
            Environment={"Variables": environment},
            Description=resolver.scalar(merged.get("Description", "")),
        )
        if created["FunctionArn"] != resolver.resources[logical_id]["Arn"]:
            raise StackTemplateError(
                f"{name}: ARN {created['FunctionArn']} is not the expected "
                f"{resolver.resources[logical_id]['Arn']}"
            )
        code_uri = resolver.scalar(merged["CodeUri"])
        _register_with_lambda_runtime(
            function_name=name,
            code_dir=(template_dir / code_uri).resolve(),
            handler=resolver.scalar(merged["Handler"]),
            environment=environment,
        )

    machine = _resource(template, STATE_MACHINE_ID, "AWS::StepFunctions::StateMachine")["Properties"]
    definition = _state_machine_definition(template_dir, machine, resolver)
    create_machine: dict[str, Any] = {
        "name": machine_name,
        "definition": definition,
        "roleArn": resolver.scalar(machine["RoleArn"]),
        "type": resolver.scalar(machine.get("StateMachineType", "STANDARD")),
    }
    if "EncryptionConfiguration" in machine:
        # moto keeps it (DescribeStateMachine shows it) but encrypts nothing.
        encryption = resolver.resolve(machine["EncryptionConfiguration"])
        create_machine["encryptionConfiguration"] = {
            "type": encryption["Type"],
            **({"kmsKeyId": encryption["KmsKeyId"]} if "KmsKeyId" in encryption else {}),
            **(
                {"kmsDataKeyReusePeriodSeconds": int(encryption["KmsDataKeyReusePeriodSeconds"])}
                if "KmsDataKeyReusePeriodSeconds" in encryption
                else {}
            ),
        }
    created_arn = sfn.create_state_machine(**create_machine)["stateMachineArn"]
    if created_arn != machine_arn:
        raise StackTemplateError(f"state machine ARN {created_arn}, expected {machine_arn}")

    # Resource policies naming the roles: the secret's and the event buses'. moto stores them
    # (so they can be read back) but enforces none of them; tests/template/test_template.py evaluates
    # them as IAM does.
    if resolver.exists(SECRET_POLICY_ID):
        secret_policy = resolver.resolve(
            _resource(template, SECRET_POLICY_ID, "AWS::SecretsManager::ResourcePolicy")["Properties"]
        )
        secrets.put_resource_policy(
            SecretId=secret_arn, ResourcePolicy=json.dumps(secret_policy["ResourcePolicy"])
        )
    _apply_event_bus_policies(template, resolver, events)

    sqs_event = _sqs_event(settings[CANCEL_ID], resolver)
    if resolver.resolve(sqs_event["queue"]) != resolver.resources[QUEUE_ID]["Arn"]:
        raise StackTemplateError(f"the SQS event of {CANCEL_ID} is not on {QUEUE_ID}")

    # Outcome observer: everything our state machine and functions publish, into a queue.
    observer_name = local_name("OutcomeObserver")
    observer_url = sqs.create_queue(QueueName=observer_name)["QueueUrl"]
    observer_arn = sqs.get_queue_attributes(QueueUrl=observer_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule_arn = events.put_rule(
        Name=observer_name,
        EventBusName=bus_name,
        EventPattern=json.dumps({"source": [OUTCOME_SOURCE]}),
        State="ENABLED",
    )["RuleArn"]
    sqs.set_queue_attributes(
        QueueUrl=observer_url,
        Attributes={
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": observer_arn,
                            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                        }
                    ],
                }
            )
        },
    )
    answer = events.put_targets(
        Rule=observer_name,
        EventBusName=bus_name,
        Targets=[{"Id": "outcome-observer", "Arn": observer_arn}],
    )
    if answer.get("FailedEntryCount"):
        raise StackTemplateError(f"outcome observer target failed: {answer['FailedEntries']}")

    _register_outputs(
        client("cloudformation"),
        stack_name,
        {
            "OrderTimeoutQueueUrl": resolver.resources[QUEUE_ID]["QueueUrl"],
            "OrderTimeoutDeadLetterQueueUrl": resolver.resources[DLQ_ID]["QueueUrl"],
            "OutcomeEventBusName": bus_name,
            "CancellationStateMachineArn": machine_arn,
            "LedgerTableName": table_name,
            "ReconcileFunctionName": function_names[RECONCILE_ID],
            "ReconciliationIntakeQueueUrl": resolver.resources[INTAKE_QUEUE_ID]["QueueUrl"],
        },
        template,
    )

    return Stack(
        stack_name=stack_name,
        region=region,
        account_id=account_id,
        queue_url=resolver.resources[QUEUE_ID]["QueueUrl"],
        queue_arn=resolver.resources[QUEUE_ID]["Arn"],
        dlq_url=resolver.resources[DLQ_ID]["QueueUrl"],
        dlq_arn=resolver.resources[DLQ_ID]["Arn"],
        visibility_timeout=int(queue_attributes.get("VisibilityTimeout", "30")),
        max_receive_count=int(redrive.get("maxReceiveCount", 0)),
        bus_name=bus_name,
        bus_arn=bus_arn,
        secret_id=secret_arn,
        table_name=table_name,
        role_arn=role_arn,
        cancel_function_name=function_names[CANCEL_ID],
        cancel_function_arn=resolver.resources[CANCEL_ID]["Arn"],
        poll_function_name=function_names[POLL_ID],
        poll_function_arn=resolver.resources[POLL_ID]["Arn"],
        state_machine_arn=machine_arn,
        state_machine_definition=definition,
        cancel_environment=environments[CANCEL_ID],
        poll_environment=environments[POLL_ID],
        batch_size=sqs_event["batch_size"],
        maximum_concurrency=sqs_event["maximum_concurrency"],
        maximum_batching_window_seconds=sqs_event["maximum_batching_window_seconds"],
        function_response_types=sqs_event["function_response_types"],
        outcome_queue_url=observer_url,
        outcome_queue_arn=observer_arn,
        outcome_rule_name=observer_name,
        ingress_bus_name=ingress["bus_name"],
        ingress_rule_name=ingress["name"],
        ingress_rule_arn=ingress["arn"],
        ingress_event_pattern=ingress["pattern"],
        loop_unknown_rule_name=loop_unknown["name"],
        loop_unknown_queue_url=resolver.resources[LOOP_UNKNOWN_QUEUE_ID]["QueueUrl"],
        reconcile_function_name=function_names[RECONCILE_ID],
        reconcile_environment=environments[RECONCILE_ID],
        intake_queue_url=resolver.resources[INTAKE_QUEUE_ID]["QueueUrl"],
        dead_letter_function_name=function_names[DEAD_LETTER_ID],
        dead_letter_environment=environments[DEAD_LETTER_ID],
        _sqs=sqs,
    )
