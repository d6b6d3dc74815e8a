"""Static checks of template.yaml and the state machine definition.

(a) template.yaml goes through the SAM transform (samtranslator, offline) and the result is
    linted with cfn-lint: no error, warning or informational finding.
(b) the definition is validated with AWS's amazon-states-language-service (Node; the version
    is pinned in package.json / package-lock.json: run `npm ci` at the repo root first). A
    missing node or package fails these tests: they are never skipped.
(c) what a payments team relies on: redrive, batch item failures, retry with jitter, IAM
    least privilege, encryption, log retention, outputs, substitutions, the order-timeout
    ingress rule and its queue policy, the alarms.
(d) security scanners on the transformed template: cfn-lint with AWS's serverless rules
    (cfn-lint-serverless) and checkov, zero findings; every suppression sits next to its
    resource in template.yaml with its reason, and the set of suppressions is pinned here.
    checkov pins boto3, packaging and networkx below this project's pins, so it cannot share
    .venv: it runs from its own pinned environment (CHECKOV_REQUIREMENTS), created on first
    use inside the active virtual environment, or from the executable named by $CHECKOV.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cancellation.settings import QFPaySettings, cancel_settings, poll_settings
from cfnlint.api import lint
from cfnlint.config import ManualArgs
from samtranslator.translator.transform import transform

from tests.local.aws_stack import _parameter_defaults, _Resolver, load_template
from tests.template.iam_policy import Request, decide

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ASL = ROOT / "statemachine" / "cancellation_poll.asl.json"
ASL_VALIDATOR = Path(__file__).with_name("validate_asl.mjs")
ASL_PACKAGE = ROOT / "node_modules" / "amazon-states-language-service"

# Regions the template is linted for: QFPay's Hong Kong platform, and the reference region.
LINT_REGIONS = ["ap-east-1", "us-east-1"]

LAMBDA_TRANSIENT_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}

# IAM actions that have no resource types (so "Resource": "*" is the only possible scope).
# Every one of them is explained next to its statement in template.yaml.
WILDCARD_RESOURCE_ACTIONS = {
    "states:SendTaskSuccess",  # scoped by the task token, not by an ARN
    "states:SendTaskFailure",
    "logs:CreateLogDelivery",  # Step Functions' vended log delivery
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    "xray:PutTraceSegments",  # Tracing: Active / TracingConfiguration
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
}

# docs/contracts.md, "Environment of the functions".
CANCEL_VARIABLES = {
    "QFPAY_BASE_URL",
    "QFPAY_SECRET_ID",
    "STATE_MACHINE_ARN",
    "LEDGER_TABLE",
    "EVENT_BUS_NAME",
    "CLOSE_PAY_TYPES",
    "CLOSE_HTTP_METHOD",
    "POLL_FIRST_WAIT_SECONDS",
    "POLL_MAX_WAIT_SECONDS",
    "POLL_DEADLINE_SECONDS",
    "RETRY_BASE_DELAY_SECONDS",
    "ORDER_QUEUE_MAX_RECEIVE_COUNT",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
POLL_VARIABLES = {
    "QFPAY_BASE_URL",
    "QFPAY_SECRET_ID",
    "EVENT_BUS_NAME",
    "CLOSE_PAY_TYPES",
    "CLOSE_HTTP_METHOD",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}


class _NoManagedPolicyLookup:
    """samtranslator's managed-policy loader, offline: no names to resolve."""

    def load(self) -> dict[str, str]:
        return {}


def sam_transform(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template SAM deploys (code locations replaced by S3 URIs)."""
    prepared = copy.deepcopy(template)
    for logical_id, resource in prepared["Resources"].items():
        properties = resource.get("Properties", {})
        # `sam package` uploads a local DefinitionS3Location; here the definition goes inline,
        # so that cfn-lint checks it against the substitutions too.
        location = properties.get("DefinitionS3Location")
        if resource["Type"] == "AWS::StepFunctions::StateMachine" and isinstance(location, str):
            definition_path = TEMPLATE.parent / properties.pop("DefinitionS3Location")
            properties["Definition"] = json.loads(definition_path.read_text(encoding="utf-8"))
            resource.get("Metadata", {}).pop("cfn-lint", None)  # its W3002 ignore is about the path
        for key in ("CodeUri", "ContentUri"):
            if key in properties:
                properties[key] = f"s3://artifacts-bucket/{logical_id}.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", LINT_REGIONS[0])
        transformed: dict[str, Any] = transform(prepared, {}, _NoManagedPolicyLookup())
    return transformed


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def cfn(sam: dict[str, Any]) -> dict[str, Any]:
    return sam_transform(sam)


@pytest.fixture(scope="module")
def asl() -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(ASL.read_text(encoding="utf-8"))
    return definition


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == type_}


def _findings(matches: list[Any]) -> list[str]:
    return [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches]


# ------------------------------------------------------------------ (a) SAM + cfn-lint


def test_transformed_template_lints_clean(cfn: dict[str, Any]) -> None:
    config = ManualArgs(regions=LINT_REGIONS, include_checks=["I"])
    matches = lint(json.dumps(cfn, indent=1), config=config)
    assert _findings(matches) == []


def test_sam_template_lints_clean() -> None:
    # cfn-lint reads the SAM template too (line numbers then point into template.yaml).
    config = ManualArgs(regions=LINT_REGIONS, include_checks=["I"])
    matches = lint(TEMPLATE.read_text(encoding="utf-8"), config=config)
    assert _findings(matches) == []


def test_lint_can_fail(cfn: dict[str, Any]) -> None:
    broken = copy.deepcopy(cfn)
    function = next(iter(resources_of(broken, "AWS::Lambda::Function").values()))
    function["Properties"]["Runtime"] = "python2.7"
    function["Properties"]["Timeout"] = 9000
    ids = {m.rule.id for m in lint(json.dumps(broken), config=ManualArgs(regions=LINT_REGIONS))}
    assert ids, "cfn-lint found nothing in a template with a retired runtime and a bad timeout"


def test_transform_keeps_the_logical_ids_others_rely_on(cfn: dict[str, Any]) -> None:
    expected = {
        "OrderTimeoutQueue": "AWS::SQS::Queue",
        "OrderTimeoutDeadLetterQueue": "AWS::SQS::Queue",
        "CancelFunction": "AWS::Lambda::Function",
        "PollFunction": "AWS::Lambda::Function",
        "CancellationStateMachine": "AWS::StepFunctions::StateMachine",
        "OutcomeEventBus": "AWS::Events::EventBus",
        "QFPayCredentialsSecret": "AWS::SecretsManager::Secret",
        "IdempotencyTable": "AWS::DynamoDB::Table",
    }
    assert {name: cfn["Resources"][name]["Type"] for name in expected} == expected
    assert resources_of(cfn, "AWS::Lambda::LayerVersion"), "CancellationLayer became no layer"


# ------------------------------------------------------------------ (b) ASL validation


def _validate_asl(path: Path) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the ASL validation needs Node.js (20+)")
    if not ASL_PACKAGE.is_dir():
        pytest.fail("amazon-states-language-service is not installed: run `npm ci` at the repo root")
    result = subprocess.run(  # noqa: S603 - fixed arguments, our own script
        [node, str(ASL_VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"validate_asl.mjs crashed ({result.returncode}): {result.stderr}")
    diagnostics: list[dict[str, Any]] = json.loads(result.stdout)["diagnostics"]
    return result.returncode, diagnostics


def test_state_machine_definition_is_valid_asl() -> None:
    returncode, diagnostics = _validate_asl(ASL)
    assert diagnostics == []
    assert returncode == 0


def _bad_start_at(definition: dict[str, Any]) -> None:
    definition["StartAt"] = "NoSuchState"


def _unreachable_state(definition: dict[str, Any]) -> None:
    definition["States"]["Orphan"] = {"Type": "Pass", "End": True}


def _seconds_and_seconds_path(definition: dict[str, Any]) -> None:
    definition["States"]["WaitBeforeEnquiry"]["Seconds"] = 3


def _next_to_nowhere(definition: dict[str, Any]) -> None:
    definition["States"]["AskEnquiry"]["Next"] = "Nowhere"


@pytest.mark.parametrize(
    "break_it", [_bad_start_at, _unreachable_state, _seconds_and_seconds_path, _next_to_nowhere]
)
def test_asl_validation_reports_a_broken_definition(
    break_it: Any, asl: dict[str, Any], tmp_path: Path
) -> None:
    broken = copy.deepcopy(asl)
    break_it(broken)
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(broken, indent=2), encoding="utf-8")
    returncode, diagnostics = _validate_asl(path)
    assert returncode == 1
    assert diagnostics, "the validator accepted a broken definition"


# ------------------------------------------------------------------ (c) structure


def test_queue_visibility_covers_six_cancel_timeouts_and_the_batching_window(
    sam: dict[str, Any], cfn: dict[str, Any]
) -> None:
    timeout = cfn["Resources"]["CancelFunction"]["Properties"]["Timeout"]
    visibility = cfn["Resources"]["OrderTimeoutQueue"]["Properties"]["VisibilityTimeout"]
    longest_window = sam["Parameters"]["CancelBatchingWindowSeconds"]["MaxValue"]
    assert timeout == 150
    assert visibility >= 6 * timeout
    assert visibility >= 6 * timeout + longest_window


def test_the_functions_know_their_timeouts_and_the_defaults_pass_their_start_checks(
    cfn: dict[str, Any],
) -> None:
    """Lambda does not tell a function its timeout: the template repeats it (and the queue's
    visibility timeout) in the environment, and the functions check at start that their QFPay
    requests fit it and that a ledger record outlives its order. With every parameter at its
    default, both functions start."""
    resources = cfn["Resources"]
    resolver = _evaluated(cfn)
    environments = {
        name: {
            variable: str(resolver.scalar(value))
            for variable, value in resources[name]["Properties"]["Environment"]["Variables"].items()
        }
        for name in ("CancelFunction", "PollFunction")
    }
    for name, environment in environments.items():
        assert environment["FUNCTION_TIMEOUT_SECONDS"] == str(resources[name]["Properties"]["Timeout"])
    cancel = environments["CancelFunction"]
    queue = resources["OrderTimeoutQueue"]["Properties"]
    assert cancel["ORDER_QUEUE_VISIBILITY_TIMEOUT_SECONDS"] == str(queue["VisibilityTimeout"])
    settings = cancel_settings(cancel)
    assert settings.function_timeout == 150
    assert settings.visibility_timeout == 930
    assert settings.loop.deadline_seconds == int(cfn["Parameters"]["PollDeadlineSeconds"]["Default"])
    assert poll_settings(environments["PollFunction"]).timeouts.read == 10
    # The checks bite on the template's values: the old timeout of each is refused.
    with pytest.raises(ValueError, match="FUNCTION_TIMEOUT_SECONDS"):
        cancel_settings({**cancel, "FUNCTION_TIMEOUT_SECONDS": "90"})
    with pytest.raises(ValueError, match="FUNCTION_TIMEOUT_SECONDS"):
        poll_settings({**environments["PollFunction"], "FUNCTION_TIMEOUT_SECONDS": "60"})


def test_queue_redrives_to_the_dead_letter_queue(cfn: dict[str, Any]) -> None:
    queue = cfn["Resources"]["OrderTimeoutQueue"]["Properties"]
    dlq = cfn["Resources"]["OrderTimeoutDeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["OrderTimeoutDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["MessageRetentionPeriod"] > queue.get("MessageRetentionPeriod", 4 * 24 * 3600)
    # A caller's message held while the loop runs is answered on its last receive: the function
    # must know which receive that is.
    cancel = cfn["Resources"]["CancelFunction"]["Properties"]["Environment"]["Variables"]
    assert cancel["ORDER_QUEUE_MAX_RECEIVE_COUNT"] == str(queue["RedrivePolicy"]["maxReceiveCount"])


def test_cancel_function_reads_the_queue_with_batch_item_failures(cfn: dict[str, Any]) -> None:
    mappings = [
        m["Properties"]
        for m in resources_of(cfn, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": "CancelFunction"}
    ]
    assert len(mappings) == 1
    mapping = mappings[0]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["OrderTimeoutQueue", "Arn"]}
    assert mapping.get("FunctionResponseTypes") == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == {"Ref": "CancelBatchSize"}
    assert mapping["MaximumBatchingWindowInSeconds"] == {"Ref": "CancelBatchingWindowSeconds"}
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "CancelMaximumConcurrency"}}


def _states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, including those of Parallel branches and Map iterators."""
    for name, state in definition.get("States", {}).items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch)
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from _states(state[key])


def _calls_lambda(state: dict[str, Any]) -> bool:
    resource = str(state.get("Resource", ""))
    return ":lambda:" in resource or (resource.startswith("${") and "Function" in resource)


def _retried_with_jitter(state: dict[str, Any]) -> set[str]:
    return {
        error
        for retrier in state.get("Retry", [])
        if retrier.get("JitterStrategy") == "FULL"
        and retrier.get("MaxAttempts", 3) > 0
        and retrier.get("BackoffRate", 2.0) > 1
        for error in retrier["ErrorEquals"]
    }


def test_every_lambda_task_that_sends_nothing_retries_transient_errors_with_jitter(
    asl: dict[str, Any],
) -> None:
    lambda_tasks = [
        (name, state)
        for name, state in _states(asl)
        if state["Type"] == "Task" and _calls_lambda(state) and name != "AskEnquiry"
    ]
    assert {name for name, _ in lambda_tasks} >= {"ConcludeAfterTaskError"}
    for name, state in lambda_tasks:
        missing = LAMBDA_TRANSIENT_ERRORS - _retried_with_jitter(state)
        assert not missing, f"{name} does not retry {missing} with jitter"


def test_a_turn_that_may_have_sent_a_cancel_is_never_retried_with_the_same_input(asl: dict[str, Any]) -> None:
    """AskEnquiry may send the loop's one resend. Lambda's service errors may come after the poll
    function ran (its resend sent, the state saying so lost): retried with the same input, the turn
    would send it again. Only throttling, which refuses the invocation before it runs, is retried;
    the rest go to ConcludeAfterTaskError, which counts the resend as spent."""
    state = asl["States"]["AskEnquiry"]
    assert _retried_with_jitter(state) == {"Lambda.TooManyRequestsException"}
    assert all(
        set(retrier["ErrorEquals"]) <= {"Lambda.TooManyRequestsException"}
        for retrier in state.get("Retry", [])
    )
    [to_conclude] = [c for c in state["Catch"] if c["Next"] == "ConcludeAfterTaskError"]
    assert to_conclude["ErrorEquals"] == ["States.ALL"]


def test_every_task_is_retried_and_notifications_cannot_fail_the_loop(asl: dict[str, Any]) -> None:
    for name, state in _states(asl):
        if state["Type"] == "Task":
            assert state.get("Retry"), f"{name} has no Retry"
    for name in ("ReportSuccessToCaller", "ReportFailureToCaller"):
        state = asl["States"][name]
        assert state["ResultPath"] is None
        catchers = [c for c in state["Catch"] if c["ErrorEquals"] == ["States.ALL"]]
        assert catchers, f"{name} must catch everything: the outcome is already published"
        assert asl["States"][catchers[0]["Next"]]["Type"] != "Fail"


def test_a_caller_is_answered_even_when_the_outcome_cannot_be_published(asl: dict[str, Any]) -> None:
    """A publish that fails after its retries still reaches the caller's answer, and the execution
    then fails (alarmed) instead of succeeding as if the outcome had gone out."""
    for name in ("PublishOutcome", "PublishUnknownOutcome"):
        (catcher,) = asl["States"][name]["Catch"]
        assert catcher["ErrorEquals"] == ["States.ALL"]
        assert catcher["ResultPath"] == "$.publish_error"
        assert catcher["Next"] == asl["States"][name]["Next"] == "HasCallerToken"
    first = asl["States"]["EndByStatus"]["Choices"][0]
    assert (first["Variable"], first["IsPresent"]) == ("$.publish_error", True)
    assert asl["States"][first["Next"]]["Type"] == "Fail"


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _branches(statement: dict[str, Any]) -> list[dict[str, Any]]:
    """A statement, or each statement an Fn::If may put in its place (AWS::NoValue left out)."""
    if set(statement) == {"Fn::If"}:
        _, if_true, if_false = statement["Fn::If"]
        return [s for s in (if_true, if_false) if isinstance(s, dict) and s != {"Ref": "AWS::NoValue"}]
    return [statement]


def _role_statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement a role's inline policies may hold, whichever way the conditions go."""
    return [
        branch
        for policy in role["Properties"].get("Policies", [])
        for statement in _statements(policy["PolicyDocument"])
        for branch in _branches(statement)
    ]


def test_iam_statements_use_wildcard_resources_only_where_iam_has_no_resource_type(
    cfn: dict[str, Any],
) -> None:
    roles = resources_of(cfn, "AWS::IAM::Role")
    assert set(roles) == {
        "CancelFunctionRole",
        "PollFunctionRole",
        "CancellationStateMachineRole",
        "ReconcileFunctionRole",
        "DeadLetterFunctionRole",
    }
    assert not resources_of(cfn, "AWS::IAM::Policy")
    assert not resources_of(cfn, "AWS::IAM::ManagedPolicy")
    for role_name, role in roles.items():
        for statement in _role_statements(role):
            if statement.get("Effect") != "Allow":
                continue
            actions = set(_as_list(statement["Action"]))
            assert not any(a == "*" or a.endswith(":*") for a in actions), (role_name, actions)
            if "*" in _as_list(statement["Resource"]):
                assert actions <= WILDCARD_RESOURCE_ACTIONS, (role_name, actions - WILDCARD_RESOURCE_ACTIONS)


def test_no_role_has_a_managed_policy_after_the_transform(cfn: dict[str, Any]) -> None:
    """SAM's generated roles carry AWSLambdaBasicExecutionRole (logs on "*"),
    AWSLambdaSQSQueueExecutionRole (every queue of the account) and the X-Ray policies; the
    template's explicit roles carry none: every grant is a statement of the template."""
    for name, role in resources_of(cfn, "AWS::IAM::Role").items():
        assert role["Properties"].get("ManagedPolicyArns", []) == [], name
    functions = resources_of(cfn, "AWS::Lambda::Function")
    assert {name: f["Properties"]["Role"] for name, f in functions.items()} == {
        "CancelFunction": {"Fn::GetAtt": ["CancelFunctionRole", "Arn"]},
        "PollFunction": {"Fn::GetAtt": ["PollFunctionRole", "Arn"]},
        "ReconcileFunction": {"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]},
        "DeadLetterFunction": {"Fn::GetAtt": ["DeadLetterFunctionRole", "Arn"]},
    }
    machine = cfn["Resources"]["CancellationStateMachine"]["Properties"]
    assert machine["RoleArn"] == {"Fn::GetAtt": ["CancellationStateMachineRole", "Arn"]}


def granted_actions(role: dict[str, Any]) -> set[str]:
    """The IAM actions a role's policies allow (tests/e2e/test_pipeline_e2e.py checks the code's calls)."""
    return {action for s in _role_statements(role) for action in _as_list(s["Action"])}


XRAY_WRITE = {a for a in WILDCARD_RESOURCE_ACTIONS if a.startswith("xray:")}
LOGS_TO_OWN_GROUP = {"logs:CreateLogStream", "logs:PutLogEvents"}


def test_each_role_gets_only_what_its_code_does(cfn: dict[str, Any]) -> None:
    resources = cfn["Resources"]
    assert (
        granted_actions(resources["PollFunctionRole"])
        == {
            "secretsmanager:GetSecretValue",
            "kms:Decrypt",  # the secret's key, through Secrets Manager; the data key
            "kms:GenerateDataKey",  # the ledger table's data key (the budget's records)
            "dynamodb:UpdateItem",  # the shared request budget's records only
        }
        | LOGS_TO_OWN_GROUP
        | XRAY_WRITE
    )
    assert (
        granted_actions(resources["CancelFunctionRole"])
        == {
            "secretsmanager:GetSecretValue",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "states:StartExecution",
            "states:DescribeExecution",
            "states:GetExecutionHistory",
            "events:PutEvents",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "sqs:ReceiveMessage",  # the event source mapping polls with the function's role
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:GetQueueUrl",
            "sqs:ChangeMessageVisibility",
            "sqs:SendMessage",
            "states:SendTaskSuccess",
            "states:SendTaskFailure",
        }
        | LOGS_TO_OWN_GROUP
        | XRAY_WRITE
    )
    machine = resources["CancellationStateMachineRole"]
    assert (
        granted_actions(machine)
        == {
            "lambda:InvokeFunction",
            "events:PutEvents",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "states:SendTaskSuccess",
            "states:SendTaskFailure",
        }
        | {a for a in WILDCARD_RESOURCE_ACTIONS if a.startswith("logs:")}
        | XRAY_WRITE
    )
    invoke = next(s for s in _role_statements(machine) if s["Action"] == "lambda:InvokeFunction")
    assert {"Fn::GetAtt": ["PollFunction", "Arn"]} in _as_list(invoke["Resource"])


def test_data_at_rest_is_encrypted(cfn: dict[str, Any]) -> None:
    for name, queue in resources_of(cfn, "AWS::SQS::Queue").items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, name
    table = cfn["Resources"]["IdempotencyTable"]["Properties"]
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    log_groups = resources_of(cfn, "AWS::Logs::LogGroup")
    assert len(log_groups) == 5
    for name, group in log_groups.items():
        assert "KmsKeyId" in group["Properties"], f"{name} is not encrypted with our key"
        assert "RetentionInDays" in group["Properties"], f"{name} keeps logs forever"
    for key in resources_of(cfn, "AWS::KMS::Key").values():
        assert key["Properties"]["EnableKeyRotation"] is True


def test_functions_and_state_machine_log_to_their_own_groups_and_trace(cfn: dict[str, Any]) -> None:
    log_groups = set(resources_of(cfn, "AWS::Logs::LogGroup"))
    for name in ("CancelFunction", "PollFunction"):
        properties = cfn["Resources"][name]["Properties"]
        assert properties["LoggingConfig"]["LogGroup"]["Ref"] in log_groups
        assert properties["TracingConfig"] == {"Mode": "Active"}
        assert properties["Runtime"] == "python3.13"
        assert properties["Architectures"] == ["arm64"]
        assert properties["MemorySize"] == {"CancelFunction": 1024, "PollFunction": 256}[name]
        assert properties["Handler"] == "app.lambda_handler"
    # One turn always fits: the Enquiry (two requests where its window touches two calendar months)
    # and a resend, each with its 1108 re-read, at the functions' QFPay timeouts (none is set in
    # the template: the defaults), plus the secret's read.
    assert "QFPAY_READ_TIMEOUT_SECONDS" not in json.dumps(cfn["Resources"]["PollFunction"])
    turn = QFPaySettings(base_url="", secret_id="").request_budget(requests=6)
    assert turn + 3 <= cfn["Resources"]["PollFunction"]["Properties"]["Timeout"] <= 90
    machine = cfn["Resources"]["CancellationStateMachine"]["Properties"]
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    (destination,) = machine["LoggingConfiguration"]["Destinations"]
    assert destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0] in log_groups


def test_function_environments_follow_the_contract(cfn: dict[str, Any]) -> None:
    cancel = cfn["Resources"]["CancelFunction"]["Properties"]["Environment"]["Variables"]
    poll = cfn["Resources"]["PollFunction"]["Properties"]["Environment"]["Variables"]
    assert set(cancel) >= CANCEL_VARIABLES
    assert set(poll) >= POLL_VARIABLES
    assert cancel["STATE_MACHINE_ARN"] == {"Ref": "CancellationStateMachine"}
    assert cancel["LEDGER_TABLE"] == {"Ref": "IdempotencyTable"}
    assert cancel["POWERTOOLS_SERVICE_NAME"] == "qfpay-cancellation"
    # Call tracing (the X-Ray SDK) only when the CallTracing parameter asks for it.
    assert (
        cancel["POWERTOOLS_TRACE_DISABLED"]
        == poll["POWERTOOLS_TRACE_DISABLED"]
        == {"Fn::If": ["TraceCalls", "false", "true"]}
    )
    assert cfn["Conditions"]["TraceCalls"] == {"Fn::Equals": [{"Ref": "CallTracing"}, "Enabled"]}
    secret_id = {
        "Fn::If": [
            "CreateQFPaySecret",
            {"Ref": "QFPayCredentialsSecret"},
            {"Ref": "ExistingQFPaySecretArn"},
        ]
    }
    assert cancel["QFPAY_SECRET_ID"] == poll["QFPAY_SECRET_ID"] == secret_id
    assert cfn["Resources"]["QFPayCredentialsSecret"]["Condition"] == "CreateQFPaySecret"
    assert cfn["Conditions"]["CreateQFPaySecret"] == {"Fn::Equals": [{"Ref": "ExistingQFPaySecretArn"}, ""]}


def test_parameters_and_defaults(sam: dict[str, Any]) -> None:
    parameters = sam["Parameters"]
    defaults = {name: spec.get("Default") for name, spec in parameters.items()}
    assert defaults == {
        "Stage": "dev",
        "QFPayBaseUrl": "https://test-openapi-hk.qfapi.com",
        "ExistingQFPaySecretArn": "",
        "ClosePayTypes": "800008,800208,801008",
        "CloseHttpMethod": "GET",
        "PollFirstWaitSeconds": 3,
        "PollMaxWaitSeconds": 60,
        "PollDeadlineSeconds": 900,
        "CancelBatchSize": 10,
        "CancelMaximumConcurrency": 4,
        "PollMaximumConcurrency": 10,
        "CancelBatchingWindowSeconds": 1,
        "OrderTimeoutEventSource": "shop.checkout",
        "OrderTimeoutDetailType": "Order Timed Out",
        "OrderTimeoutEventBusName": "",
        "ReconcileChecksAfterSeconds": "300,3600,86400,172800,259200,345600,432000",
        "AlarmTopicArn": "",
        "CallTracing": "Disabled",
        "ExistingQFPaySecretKmsKeyArn": "",
        "OrderProducerPrincipalArns": "",
    }
    assert parameters["OrderProducerPrincipalArns"]["Type"] == "CommaDelimitedList"
    assert parameters["Stage"]["AllowedValues"] == ["dev", "staging", "prod"]
    assert parameters["CallTracing"]["AllowedValues"] == ["Enabled", "Disabled"]
    assert parameters["CloseHttpMethod"]["AllowedValues"] == ["GET", "POST"]
    url_pattern = re.compile(parameters["QFPayBaseUrl"]["AllowedPattern"])
    assert url_pattern.fullmatch("https://openapi-hk.qfapi.com")
    assert not url_pattern.fullmatch("http://openapi-hk.qfapi.com")
    topic_pattern = re.compile(parameters["AlarmTopicArn"]["AllowedPattern"])
    assert topic_pattern.fullmatch("")
    assert topic_pattern.fullmatch("arn:aws:sns:ap-east-1:123456789012:payments-oncall")
    assert not topic_pattern.fullmatch("payments-oncall")
    bus_pattern = re.compile(parameters["OrderTimeoutEventBusName"]["AllowedPattern"])
    assert bus_pattern.fullmatch("")  # the stack's own ingress bus
    assert bus_pattern.fullmatch("default")
    assert bus_pattern.fullmatch("shop-events")
    assert not bus_pattern.fullmatch("arn:aws:events:ap-east-1:123456789012:event-bus/shop-events")


def test_outputs_are_present(cfn: dict[str, Any]) -> None:
    assert set(cfn["Outputs"]) >= {
        "OrderTimeoutQueueUrl",
        "OrderTimeoutDeadLetterQueueUrl",
        "OutcomeEventBusName",
        "CancellationStateMachineArn",
        "QFPayCredentialsSecretId",
        "OrderTimeoutRuleArn",
        "LoopUnknownOutcomeQueueUrl",
        "OrderIngressBusArn",
        "DataEncryptionKeyArn",
    }
    assert cfn["Outputs"]["OrderIngressBusArn"]["Condition"] == "CreateOrderIngressBus"
    assert cfn["Outputs"]["OrderTimeoutQueueUrl"]["Value"] == {"Ref": "OrderTimeoutQueue"}
    assert cfn["Outputs"]["OrderTimeoutRuleArn"]["Value"] == {"Fn::GetAtt": ["OrderTimeoutRule", "Arn"]}
    assert cfn["Outputs"]["OutcomeEventBusName"]["Value"] == {"Ref": "OutcomeEventBus"}
    assert cfn["Outputs"]["CancellationStateMachineArn"]["Value"] == {"Ref": "CancellationStateMachine"}


def test_every_placeholder_in_the_definition_has_a_substitution(sam: dict[str, Any]) -> None:
    placeholders = set(re.findall(r"\$\{([^}]+)\}", ASL.read_text(encoding="utf-8")))
    machine = sam["Resources"]["CancellationStateMachine"]["Properties"]
    assert machine["DefinitionS3Location"] == "statemachine/cancellation_poll.asl.json"
    substitutions = set(machine["DefinitionSubstitutions"])
    assert placeholders == substitutions == {"PollFunctionArn", "EventBusName"}


def test_definition_follows_the_contract(asl: dict[str, Any]) -> None:
    states = asl["States"]
    assert asl["StartAt"] == "WaitBeforeEnquiry"
    assert states["WaitBeforeEnquiry"] == {
        "Type": "Wait",
        "SecondsPath": "$.wait_seconds",
        "Next": "AskEnquiry",
    }
    for name in ("AskEnquiry", "ConcludeAfterTaskError"):
        task = states[name]
        assert task["Resource"] == "arn:aws:states:::lambda:invoke"
        assert task["Parameters"] == {"FunctionName": "${PollFunctionArn}", "Payload.$": "$"}
        assert task["OutputPath"] == "$.Payload"
        assert task["Next"] == "IsDecided"
    throttled, catch = states["AskEnquiry"]["Catch"]
    # Our own throttling never concludes the loop: the turn is asked again after the wait.
    assert throttled == {
        "ErrorEquals": ["Lambda.TooManyRequestsException"],
        "ResultPath": "$.throttled",
        "Next": "WaitBeforeEnquiry",
    }
    assert catch == {
        "ErrorEquals": ["States.ALL"],
        "ResultPath": "$.task_error",
        "Next": "ConcludeAfterTaskError",
    }
    (conclude_catch,) = states["ConcludeAfterTaskError"]["Catch"]
    assert conclude_catch == {
        "ErrorEquals": ["States.ALL"],
        "ResultPath": "$.conclude_error",
        "Next": "DescribeBrokenLoop",
    }
    assert states["EnquiryLoopBroken"]["Type"] == "Fail"

    choices = {c["StringEquals"]: c["Next"] for c in states["IsDecided"]["Choices"]}
    assert all(c["Variable"] == "$.status" for c in states["IsDecided"]["Choices"])
    assert choices == {"IN_PROGRESS": "WaitBeforeEnquiry", "UNKNOWN": "PublishUnknownOutcome"}
    assert states["IsDecided"]["Default"] == "PublishOutcome"

    for name in ("PublishOutcome", "PublishUnknownOutcome"):
        publish = states[name]
        assert publish["Resource"] == "arn:aws:states:::events:putEvents"
        assert publish["ResultPath"] is None
        assert publish["Parameters"]["Entries"] == [
            {
                "EventBusName": "${EventBusName}",
                "Source": "qfpay.cancellation",
                "DetailType": "Payment Cancellation Outcome",
                "Detail.$": "$.outcome",
            }
        ]

    success = states["ReportSuccessToCaller"]
    assert success["Resource"] == "arn:aws:states:::aws-sdk:sfn:sendTaskSuccess"
    assert success["Parameters"] == {
        "TaskToken.$": "$.order.task_token",
        "Output.$": "States.JsonToString($.outcome)",
    }
    failure = states["ReportFailureToCaller"]
    assert failure["Resource"] == "arn:aws:states:::aws-sdk:sfn:sendTaskFailure"
    assert failure["Parameters"]["Cause.$"] == "$.outcome.reason"
    errors = {state["Result"] for state in states.values() if state.get("Next") == "ReportFailureToCaller"}
    assert errors == {"Cancellation.Rejected", "Cancellation.Unknown"}
    assert states["Decided"] == {"Type": "Succeed"}
    assert states["NotConfirmedByDeadline"]["Type"] == "Fail"
    assert states["NotConfirmedByDeadline"]["Error"] == "Cancellation.Unknown"


OUTCOME_SCHEMA = ROOT / "events" / "schemas" / "payment-cancellation-outcome.schema.json"


def test_a_broken_loop_still_publishes_an_unknown_outcome_with_every_field(asl: dict[str, Any]) -> None:
    """The poll function failed twice: a Pass state describes the outcome from the state."""
    states = asl["States"]
    describe = states["DescribeBrokenLoop"]
    assert describe["Type"] == "Pass"
    assert describe["ResultPath"] == "$.outcome"
    fields = {key.removesuffix(".$"): value for key, value in describe["Parameters"].items()}
    schema = json.loads(OUTCOME_SCHEMA.read_text(encoding="utf-8"))
    # Every field of a first outcome; only corrections carry "supersedes".
    assert set(fields) == set(schema["required"]) == set(schema["properties"]) - {"supersedes"}
    assert describe["Parameters"]["revision"] == 1
    assert describe["Parameters"]["status"] == "UNKNOWN"
    assert describe["Parameters"]["decided_by"] == "poll-loop"
    assert describe["Parameters"]["decided_at.$"] == "$$.State.EnteredTime"
    assert describe["Parameters"]["outcome_id.$"] == "$.outcome_id"
    for name in ("out_trade_no", "syssn", "mchid", "pay_type"):
        assert describe["Parameters"][f"{name}.$"] == f"$.order.{name}"
    # QFPay's figures were not read; the message's are published beside them.
    assert (describe["Parameters"]["txamt"], describe["Parameters"]["txcurrcd"]) == (None, None)
    for name in ("txamt", "txcurrcd"):
        assert describe["Parameters"][f"message_{name}.$"] == f"$.order.{name}"
    for name in ("endpoint", "respcd", "resperr", "reversal_syssn", "attempts", "polls", "resent"):
        assert describe["Parameters"][f"{name}.$"] == f"$.{name}"
    assert "a person must look" in describe["Parameters"]["reason.$"]

    # Then: status UNKNOWN, the UNKNOWN publish and caller path, and a Fail of its own.
    mark = states[describe["Next"]]
    assert mark == {
        "Type": "Pass",
        "Result": "UNKNOWN",
        "ResultPath": "$.status",
        "Next": "PublishUnknownOutcome",
    }
    assert states["PublishUnknownOutcome"]["Next"] == "HasCallerToken"
    # After the one for a failed publish (its Fail must not claim the outcome went out).
    first_end_choice = states["EndByStatus"]["Choices"][1]
    assert first_end_choice == {
        "Variable": "$.conclude_error",
        "IsPresent": True,
        "Next": "EnquiryLoopBroken",
    }
    assert states["EnquiryLoopBroken"]["Error"] == "Cancellation.EnquiryLoopBroken"
    assert "published" in states["EnquiryLoopBroken"]["Cause"]


def test_globals(sam: dict[str, Any]) -> None:
    function = sam["Globals"]["Function"]
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["MemorySize"] == 256
    assert function["Tracing"] == "Active"
    assert function["Layers"] == [{"Ref": "CancellationLayer"}]


def test_the_layer_is_built_by_its_makefile(sam: dict[str, Any]) -> None:
    """`sam build` runs layers/cancellation/Makefile's build-CancellationLayer in ContentUri (what
    it builds is checked in tests/template/test_build_artifact.py)."""
    layer = sam["Resources"]["CancellationLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert layer["Properties"]["CompatibleRuntimes"] == [sam["Globals"]["Function"]["Runtime"]]
    assert layer["Properties"]["CompatibleArchitectures"] == sam["Globals"]["Function"]["Architectures"]
    content = TEMPLATE.parent / layer["Properties"]["ContentUri"]
    assert "build-CancellationLayer:" in (content / "Makefile").read_text(encoding="utf-8")
    assert (content / "requirements.txt").is_file()
    assert (content / "python" / "cancellation" / "__init__.py").is_file()


# ------------------------------------------------------------------ ingress and alarms


def test_order_timeout_events_are_routed_to_the_queue(cfn: dict[str, Any]) -> None:
    rule = cfn["Resources"]["OrderTimeoutRule"]
    assert rule["Type"] == "AWS::Events::Rule"
    properties = rule["Properties"]
    assert properties["EventBusName"] == {
        "Fn::If": ["CreateOrderIngressBus", {"Ref": "OrderIngressBus"}, {"Ref": "OrderTimeoutEventBusName"}]
    }
    assert properties["EventPattern"] == {
        "source": [{"Ref": "OrderTimeoutEventSource"}],
        "detail-type": [{"Ref": "OrderTimeoutDetailType"}],
    }
    assert properties["State"] == "ENABLED"
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["OrderTimeoutQueue", "Arn"]}
    # The whole event goes to the queue: the cancel function unwraps the EventBridge envelope.
    assert not {"Input", "InputPath", "InputTransformer"} & set(target)
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["OrderTimeoutDeadLetterQueue", "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] >= 3600


def _queue_policy_statements(cfn: dict[str, Any], queue: str) -> list[dict[str, Any]]:
    policies = [
        policy["Properties"]
        for policy in resources_of(cfn, "AWS::SQS::QueuePolicy").values()
        if {"Ref": queue} in policy["Properties"]["Queues"]
    ]
    assert len(policies) == 1, f"{queue} must have exactly one policy (SQS keeps only one)"
    return _statements(policies[0]["PolicyDocument"])


@pytest.mark.parametrize(
    "queue", ["OrderTimeoutQueue", "OrderTimeoutDeadLetterQueue", "LoopUnknownOutcomeQueue"]
)
def test_queue_policies_deny_plain_http(cfn: dict[str, Any], queue: str) -> None:
    statements = _queue_policy_statements(cfn, queue)
    tls = [s for s in statements if s.get("Sid") == "DenyPlainHttp"]
    assert len(tls) == 1
    assert (tls[0]["Effect"], tls[0]["Principal"], tls[0]["Action"]) == ("Deny", "*", "sqs:*")
    assert {"Fn::GetAtt": [queue, "Arn"]} in _as_list(tls[0]["Resource"])
    assert tls[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_ingress_policy_keeps_its_logical_id(sam: dict[str, Any]) -> None:
    # Renaming a queue policy makes CloudFormation create the new one and then delete the old,
    # which empties the queue's (single) policy: the original logical id stays.
    policy = sam["Resources"]["OrderTimeoutQueuesTlsOnlyPolicy"]
    assert policy["Type"] == "AWS::SQS::QueuePolicy"
    assert policy["Properties"]["Queues"] == [
        {"Ref": "OrderTimeoutQueue"},
        {"Ref": "OrderTimeoutDeadLetterQueue"},
    ]


def test_the_loop_unknown_rule_matches_only_the_loops_unknown_outcomes(cfn: dict[str, Any]) -> None:
    properties = cfn["Resources"]["LoopUnknownOutcomeRule"]["Properties"]
    assert properties["EventBusName"] == {"Ref": "OutcomeEventBus"}
    assert properties["EventPattern"] == {
        "source": ["qfpay.cancellation"],
        "detail-type": ["Payment Cancellation Outcome"],
        "detail": {"status": ["UNKNOWN"], "decided_by": ["poll-loop"]},
    }
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["LoopUnknownOutcomeQueue", "Arn"]}


ALARMS = {
    "OrderTimeoutDeadLetterQueueAlarm",
    "UnknownOutcomeAlarm",
    "CancellationStateMachineFailedAlarm",
    "SignatureRejectedAlarm",
    "CancelFunctionErrorsAlarm",
    "NeedsAttentionAlarm",
    "ReconcileFunctionErrorsAlarm",
    "DeadLetteredAlarm",
}
ALARM_ACTION = {"Fn::If": ["NotifyAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}


def _alarm(cfn: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = cfn["Resources"][name]["Properties"]
    return properties


def test_every_alarm_fires_on_the_first_occurrence_and_notifies_the_optional_topic(
    cfn: dict[str, Any],
) -> None:
    assert set(resources_of(cfn, "AWS::CloudWatch::Alarm")) == ALARMS
    assert cfn["Conditions"]["NotifyAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    for name in ALARMS:
        alarm = _alarm(cfn, name)
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold", name
        assert alarm["Threshold"] == 0, name
        assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 1, name
        assert alarm["TreatMissingData"] == "notBreaching", name
        assert alarm["AlarmActions"] == alarm["OKActions"] == ALARM_ACTION, name
        assert len(alarm["AlarmDescription"]) > 40, f"{name}: say what to do"


def _single_metric(alarm: dict[str, Any]) -> tuple[str, str, dict[str, Any], str]:
    dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    return alarm["Namespace"], alarm["MetricName"], dimensions, alarm["Statistic"]


def test_dead_letter_queue_alarm(cfn: dict[str, Any]) -> None:
    assert _single_metric(_alarm(cfn, "OrderTimeoutDeadLetterQueueAlarm")) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"QueueName": {"Fn::GetAtt": ["OrderTimeoutDeadLetterQueue", "QueueName"]}},
        "Maximum",
    )


def _powertools(sam: dict[str, Any]) -> tuple[str, str]:
    variables = sam["Globals"]["Function"]["Environment"]["Variables"]
    return variables["POWERTOOLS_METRICS_NAMESPACE"], variables["POWERTOOLS_SERVICE_NAME"]


def test_unknown_outcome_alarm_counts_both_deciders(sam: dict[str, Any], cfn: dict[str, Any]) -> None:
    namespace, service = _powertools(sam)
    metrics = {m["Id"]: m for m in _alarm(cfn, "UnknownOutcomeAlarm")["Metrics"]}
    returned = [m for m in metrics.values() if m.get("ReturnData", True)]
    assert len(returned) == 1
    expression = returned[0]["Expression"]
    stats = {m["Id"]: m["MetricStat"] for m in metrics.values() if "MetricStat" in m}
    assert set(stats) == {"cancelfunction", "loop"}
    assert all(f"FILL({name}, 0)" in expression for name in stats)

    # The cancel function's Powertools metric: one per UNKNOWN outcome it decides.
    cancel = stats["cancelfunction"]
    assert cancel["Metric"] == {
        "Namespace": namespace,
        "MetricName": "OutcomeUnknown",
        "Dimensions": [{"Name": "service", "Value": service}],
    }
    # The state machine's: MatchedEvents of the rule on the outcome bus (a custom bus reports
    # with EventBusName and RuleName; the name is the last part of the rule's ARN).
    loop = stats["loop"]
    assert loop["Metric"]["Namespace"] == "AWS/Events"
    assert loop["Metric"]["MetricName"] == "MatchedEvents"
    dimensions = {d["Name"]: d["Value"] for d in loop["Metric"]["Dimensions"]}
    assert dimensions == {
        "EventBusName": {"Ref": "OutcomeEventBus"},
        "RuleName": {
            "Fn::Select": [2, {"Fn::Split": ["/", {"Fn::GetAtt": ["LoopUnknownOutcomeRule", "Arn"]}]}]
        },
    }
    assert cancel["Stat"] == loop["Stat"] == "Sum"
    assert cancel["Period"] == loop["Period"]


def test_failed_executions_alarm(cfn: dict[str, Any]) -> None:
    assert _single_metric(_alarm(cfn, "CancellationStateMachineFailedAlarm")) == (
        "AWS/States",
        "ExecutionsFailed",
        {"StateMachineArn": {"Ref": "CancellationStateMachine"}},
        "Sum",
    )


def test_signature_rejected_alarm(sam: dict[str, Any], cfn: dict[str, Any]) -> None:
    namespace, service = _powertools(sam)
    assert _single_metric(_alarm(cfn, "SignatureRejectedAlarm")) == (
        namespace,
        "SignatureRejected",
        {"service": service},
        "Sum",
    )


def test_cancel_function_errors_alarm(cfn: dict[str, Any]) -> None:
    assert _single_metric(_alarm(cfn, "CancelFunctionErrorsAlarm")) == (
        "AWS/Lambda",
        "Errors",
        {"FunctionName": {"Ref": "CancelFunction"}},
        "Sum",
    )


def test_the_metric_names_the_alarms_use_are_the_ones_the_code_publishes() -> None:
    layer = ROOT / "layers" / "cancellation" / "python" / "cancellation"
    service = (layer / "service.py").read_text(encoding="utf-8")
    assert 'count("SignatureRejected")' in service
    # OutcomeUnknown is built from the status, by count_kind, in both functions (the cancel
    # function's delivery of a decision counts it).
    assert 'count_kind("Outcome", detail["status"])' in (layer / "delivery.py").read_text(encoding="utf-8")
    assert 'count_kind("Outcome", status.value)' in (layer / "poll.py").read_text(encoding="utf-8")
    from cancellation.observability import count_kind, metrics  # noqa: PLC0415

    metrics.clear_metrics()
    count_kind("Outcome", "UNKNOWN")
    published = set(metrics.metric_set)
    metrics.clear_metrics()
    assert published == {"OutcomeUnknown"}


def _alarmed_metrics(cfn: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """(MetricName, Dimensions) of every alarm, or alarm's metric-math input, on ``namespace``."""
    found = []
    for resource in cfn["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        alarm = resource["Properties"]
        stats = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
        found += [m for m in [alarm, *stats] if m.get("Namespace") == namespace]
    return found


def test_every_alarm_on_our_namespace_watches_a_metric_as_the_functions_write_it(
    sam: dict[str, Any], cfn: dict[str, Any]
) -> None:
    """The EMF document the functions write (with the template's variables) names the metric in
    the alarm's namespace, with the alarm's dimensions and values, and as a count."""
    from cancellation.emf import Metrics  # noqa: PLC0415
    from cancellation.observability import count, metrics  # noqa: PLC0415

    variables = sam["Globals"]["Function"]["Environment"]["Variables"]
    written = Metrics(environ={k: v for k, v in variables.items() if isinstance(v, str)})
    watched = _alarmed_metrics(cfn, variables["POWERTOOLS_METRICS_NAMESPACE"])
    assert {m["MetricName"] for m in watched} >= {"OutcomeUnknown", "SignatureRejected", "DeadLettered"}
    for metric in watched:
        metrics.clear_metrics()
        count(metric["MetricName"])
        [document] = written.documents(metrics.metric_set, 0)
        metrics.clear_metrics()
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == metric["Namespace"]
        assert directive["Metrics"] == [{"Name": metric["MetricName"], "Unit": "Count"}]
        assert directive["Dimensions"] == [[d["Name"] for d in metric["Dimensions"]]]
        assert {d["Name"]: document[d["Name"]] for d in metric["Dimensions"]} == {
            d["Name"]: d["Value"] for d in metric["Dimensions"]
        }


# ------------------------------------------------------------------ (d) security scanners

SERVERLESS_RULES = "cfn_lint_serverless.rules"


def _serverless_lint(template: dict[str, Any]) -> list[Any]:
    config = ManualArgs(regions=LINT_REGIONS, include_checks=["I"], append_rules=[SERVERLESS_RULES])
    return list(lint(json.dumps(template, indent=1), config=config))


def test_transformed_template_passes_the_serverless_rules(cfn: dict[str, Any]) -> None:
    assert _findings(_serverless_lint(cfn)) == []


def test_serverless_rules_are_loaded_and_can_fail(cfn: dict[str, Any]) -> None:
    broken = copy.deepcopy(cfn)
    del broken["Resources"]["CancelFunction"]["Properties"]["TracingConfig"]  # WS1000
    del broken["Resources"]["OrderTimeoutRule"]["Properties"]["Targets"][0]["DeadLetterConfig"]  # ES4000
    ids = {m.rule.id for m in _serverless_lint(broken)}
    assert {"WS1000", "ES4000"} <= ids


# Where template.yaml silences a cfn-lint rule, and why (the reasons are next to the resources).
CFN_LINT_IGNORES = {
    None: {"ES1001"},  # template-wide: SAM's generated SQS event source mapping
    "OrderTimeoutDeadLetterQueue": {"ES6000"},
    "LoopUnknownOutcomeQueue": {"ES6000"},
    "LoopUnknownOutcomeRule": {"ES4000"},
    "ReconciliationIntakeRule": {"ES4000"},
    "ReconciliationIntakeQueue": {"ES6000"},
    "ReconcileFunction": {"WS1004"},
    "ReconcileScheduleRule": {"ES4000"},
    "ReconcileSchedulePermission": {"ES1007"},
    "CancelFunction": {"WS1004"},
    "PollFunction": {"WS1004"},
    "DeadLetterFunction": {"WS1004"},
}


def test_cfn_lint_suppressions_are_the_known_ones(cfn: dict[str, Any]) -> None:
    found: dict[str | None, set[str]] = {}
    template_level = cfn.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks")
    if template_level:
        found[None] = set(template_level)
    for name, resource in cfn["Resources"].items():
        ignored = resource.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks")
        if ignored:
            found[name] = set(ignored)
    assert found == CFN_LINT_IGNORES


def test_the_template_wide_es1001_ignore_only_covers_sqs_event_sources(cfn: dict[str, Any]) -> None:
    mappings = resources_of(cfn, "AWS::Lambda::EventSourceMapping")
    assert mappings
    for name, mapping in mappings.items():
        source = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        assert cfn["Resources"][source]["Type"] == "AWS::SQS::Queue", name


CHECKOV_SKIPS = {
    ("CKV_AWS_116", "ReconcileFunction"),  # scheduled: a failed pass is redone by the next
    ("CKV_AWS_117", "ReconcileFunction"),
    ("CKV_AWS_173", "ReconcileFunction"),
    ("CKV_AWS_116", "CancelFunction"),  # no async invocations: no Lambda DLQ
    ("CKV_AWS_116", "PollFunction"),
    ("CKV_AWS_117", "CancelFunction"),  # no VPC: QFPay is on the internet
    ("CKV_AWS_117", "PollFunction"),
    ("CKV_AWS_115", "CancelFunction"),  # concurrency bounded by the event source mapping
    ("CKV_AWS_173", "CancelFunction"),  # no secret in the environment
    ("CKV_AWS_173", "PollFunction"),
    ("CKV_AWS_116", "DeadLetterFunction"),  # as CancelFunction's, on the DLQ
    ("CKV_AWS_117", "DeadLetterFunction"),
    ("CKV_AWS_115", "DeadLetterFunction"),
    ("CKV_AWS_173", "DeadLetterFunction"),
}


def _checkov_executable() -> Path:
    """$CHECKOV, or checkov in its pinned environment (.venv/checkov, built by `make`)."""
    configured = os.environ.get("CHECKOV")
    executable = Path(configured) if configured else ROOT / ".venv" / "checkov" / "bin" / "checkov"
    if not executable.is_file():
        pytest.fail(f"checkov not found at {executable}: run `make install` (or set $CHECKOV)")
    return executable


def _break_for_checkov(cfn: dict[str, Any]) -> dict[str, Any]:
    """A copy with an unencrypted log group kept forever and an unencrypted queue."""
    broken = copy.deepcopy(cfn)
    group = broken["Resources"]["CancelFunctionLogGroup"]["Properties"]
    del group["KmsKeyId"], group["RetentionInDays"]
    del broken["Resources"]["OrderTimeoutQueue"]["Properties"]["KmsMasterKeyId"]
    return broken


@pytest.fixture(scope="module")
def checkov(cfn: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov's JSON report for the transformed template and for a broken copy (one run)."""
    executable = _checkov_executable()
    folder = tmp_path_factory.mktemp("checkov")
    files = {"template": folder / "template.json", "broken": folder / "broken.json"}
    files["template"].write_text(json.dumps(cfn, indent=1), encoding="utf-8")
    files["broken"].write_text(json.dumps(_break_for_checkov(cfn), indent=1), encoding="utf-8")
    command = [str(executable), "--framework", "cloudformation", "--output", "json", "--skip-download"]
    for path in files.values():
        command += ["--file", str(path)]
    # --skip-download: never call Prisma Cloud (no network is needed or used).
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=folder)  # noqa: S603
    if result.returncode not in (0, 1):
        pytest.fail(f"checkov crashed ({result.returncode}): {result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (cloudformation,) = [r for r in reports if r["check_type"] == "cloudformation"]
    by_file: dict[str, dict[str, Any]] = {key: {"failed": [], "skipped": [], "passed": []} for key in files}
    names = {path.name: key for key, path in files.items()}
    for kind in ("failed", "skipped", "passed"):
        for check in cloudformation["results"][f"{kind}_checks"]:
            by_file[names[Path(check["file_path"]).name]][kind].append(check)
    assert cloudformation["summary"]["parsing_errors"] == 0
    return by_file


def _resource_name(check: dict[str, Any]) -> str:
    return str(check["resource"]).rsplit(".", 1)[-1]


def test_checkov_finds_nothing_in_the_transformed_template(checkov: dict[str, dict[str, Any]]) -> None:
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in checkov["template"]["failed"]]
    assert failed == []
    assert len(checkov["template"]["passed"]) > 30


def test_checkov_suppressions_are_the_known_ones_and_explained(checkov: dict[str, dict[str, Any]]) -> None:
    skipped = checkov["template"]["skipped"]
    assert {(c["check_id"], _resource_name(c)) for c in skipped} == CHECKOV_SKIPS
    for check in skipped:
        comment = check["check_result"].get("suppress_comment") or ""
        assert len(comment) > 40, f"{check['check_id']} on {check['resource']} needs its reason"


def test_checkov_can_fail(checkov: dict[str, dict[str, Any]]) -> None:
    failed = {(c["check_id"], _resource_name(c)) for c in checkov["broken"]["failed"]}
    assert ("CKV_AWS_27", "OrderTimeoutQueue") in failed
    assert ("CKV_AWS_158", "CancelFunctionLogGroup") in failed  # not encrypted with KMS
    assert ("CKV_AWS_66", "CancelFunctionLogGroup") in failed  # no retention


def test_every_queue_log_group_and_table_is_encrypted_and_logs_expire(cfn: dict[str, Any]) -> None:
    queues = resources_of(cfn, "AWS::SQS::Queue")
    assert set(queues) == {
        "OrderTimeoutQueue",
        "OrderTimeoutDeadLetterQueue",
        "LoopUnknownOutcomeQueue",
        "ReconciliationIntakeQueue",
    }
    for name, queue in queues.items():
        assert queue["Properties"]["KmsMasterKeyId"] == {"Ref": "DataEncryptionKey"}, name
        assert "SqsManagedSseEnabled" not in queue["Properties"], name
    for name, group in resources_of(cfn, "AWS::Logs::LogGroup").items():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["LogEncryptionKey", "Arn"]}, name
        assert group["Properties"]["RetentionInDays"] == {
            "Fn::FindInMap": ["StageSettings", {"Ref": "Stage"}, "LogRetentionDays"]
        }, name
    for table in resources_of(cfn, "AWS::DynamoDB::Table").values():
        assert table["Properties"]["SSESpecification"] == {
            "SSEEnabled": True,
            "SSEType": "KMS",
            "KMSMasterKeyId": {"Ref": "DataEncryptionKey"},
        }


def test_both_functions_share_one_request_budget_per_merchant(
    sam: dict[str, Any], cfn: dict[str, Any]
) -> None:
    """QFPay's limits are kept by the shared budget, not by a static split over containers: both
    functions take slots from the same table, and the poll function can touch nothing else there."""
    variables = sam["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["BUDGET_TABLE"] == {"Ref": "IdempotencyTable"}
    for function in ("CancelFunction", "PollFunction"):
        own = sam["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
        assert "BUDGET_TABLE" not in own, function
    (budget,) = [
        s
        for s in _role_statements(cfn["Resources"]["PollFunctionRole"])
        if s["Action"] == "dynamodb:UpdateItem"
    ]
    assert budget["Resource"] == {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}
    assert budget["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["budget#*"]}}
    poll = sam["Resources"]["PollFunction"]["Properties"]
    assert poll["ReservedConcurrentExecutions"] == {"Ref": "PollMaximumConcurrency"}
    # No per-container share of QFPay's limits is left to configure.
    assert "max_requests_per_minute" not in QFPaySettings._fields


# ------------------------------------------------------------------ fences (who may do what)
# The resource policies evaluated as IAM does (tests/template/iam_policy.py): moto stores them but
# enforces none, so this is where "only who may" is checked, on the transformed template with
# the parameters a deployment would pass.

ACCOUNT = "123456789012"
REGION = LINT_REGIONS[0]
OTHER_ACCOUNT_PRODUCER = "arn:aws:iam::111122223333:role/shop-checkout"
CALLER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/order-workflow"
STRANGER = f"arn:aws:iam::{ACCOUNT}:role/anyone-with-broad-iam"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/Admin"
PRODUCERS = {"OrderProducerPrincipalArns": f"{OTHER_ACCOUNT_PRODUCER},{CALLER_ROLE}"}
EXISTING_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:merchant-qfpay-AbCdEf"
EXISTING_SECRET_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class _Attributes(dict[str, str]):
    """Ref and GetAtt of one resource in the evaluated template: ARNs shaped as AWS makes them."""

    def __init__(self, logical_id: str, type_: str) -> None:
        service = type_.split("::")[1].lower()
        kind = {
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/stack-{logical_id}",
            "AWS::Events::EventBus": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/stack-{logical_id}",
            "AWS::Events::Rule": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/stack-{logical_id}",
            "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{logical_id}",
            "AWS::SecretsManager::Secret": (
                f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{logical_id}-AbCdEf"
            ),
        }.get(type_, f"arn:aws:{service}:{REGION}:{ACCOUNT}:{logical_id}")
        super().__init__(
            Arn=kind, Ref=kind if type_ == "AWS::SecretsManager::Secret" else f"stack-{logical_id}"
        )
        self.logical_id = logical_id

    def __missing__(self, attribute: str) -> str:
        return f"stack-{self.logical_id}-{attribute}"


def _evaluated(cfn: dict[str, Any], parameters: dict[str, str] | None = None) -> _Resolver:
    values = _parameter_defaults(cfn)
    values.update(parameters or {})
    pseudo = {
        "AWS::StackName": "stack",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
    }
    resolver = _Resolver(cfn, values, pseudo)
    for name, resource in cfn["Resources"].items():
        resolver.resources[name] = _Attributes(name, resource["Type"])
    return resolver


def _arn(resolver: _Resolver, logical_id: str) -> str:
    return resolver.resources[logical_id]["Arn"]


def _queue_policy(resolver: _Resolver) -> list[dict[str, Any]]:
    policy = resolver.resolve(resolver.template["Resources"]["OrderTimeoutQueuesTlsOnlyPolicy"]["Properties"])
    statements: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return statements


def _bus_policy(resolver: _Resolver, bus: str) -> list[dict[str, Any]]:
    """Every EventBusPolicy statement the template puts on ``bus`` with these parameters."""
    statements = []
    for name, resource in resolver.template["Resources"].items():
        if resource["Type"] != "AWS::Events::EventBusPolicy" or not resolver.exists(name):
            continue
        properties = resolver.resolve(resource["Properties"])
        if properties["EventBusName"] == resolver.resources[bus]["Ref"]:
            statements.append(properties["Statement"])
    return statements


def _send(queue_arn: str, principal: str | None = None, rule: str | None = None) -> Request:
    context = {"aws:SecureTransport": "true"}
    if rule is not None:
        context["aws:SourceArn"] = rule
        context["aws:SourceAccount"] = ACCOUNT
        return Request("sqs:SendMessage", queue_arn, service="events.amazonaws.com", context=context)
    return Request("sqs:SendMessage", queue_arn, principal_arn=principal, context=context)


def test_only_the_rule_sends_orders_when_no_producer_is_named(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn)
    policy = _queue_policy(resolver)
    queue, dlq, rule = (
        _arn(resolver, n) for n in ("OrderTimeoutQueue", "OrderTimeoutDeadLetterQueue", "OrderTimeoutRule")
    )
    assert decide(policy, _send(queue, rule=rule)) == "Allow"
    assert decide(policy, _send(dlq, rule=rule)) == "Allow"  # the rule target's dead letters
    # Anyone else is refused, whatever IAM allows them: a principal of this account, the
    # account's admin, another rule (EventBridge does not check who claims a source).
    for request in (
        _send(queue, principal=STRANGER),
        _send(queue, principal=ADMIN),
        _send(queue, principal=OTHER_ACCOUNT_PRODUCER),
        _send(queue, rule=f"arn:aws:events:{REGION}:{ACCOUNT}:rule/someone-elses-rule"),
        _send(dlq, principal=STRANGER),
    ):
        assert decide(policy, request) == "Deny", request
    plain_http = _send(queue, rule=rule)
    plain_http.context["aws:SecureTransport"] = "false"
    assert decide(policy, plain_http) == "Deny"


def test_named_producers_may_send_orders_and_nobody_else(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn, PRODUCERS)
    policy = _queue_policy(resolver)
    queue, dlq, rule = (
        _arn(resolver, n) for n in ("OrderTimeoutQueue", "OrderTimeoutDeadLetterQueue", "OrderTimeoutRule")
    )
    # Another account's producer is allowed by the queue policy itself (it needs that).
    assert decide(policy, _send(queue, principal=OTHER_ACCOUNT_PRODUCER)) == "Allow"
    # A caller workflow's role of this account.
    assert decide(policy, _send(queue, principal=CALLER_ROLE)) == "Allow"
    # Only the role named: not another role whose name starts the same way.
    assert decide(policy, _send(queue, principal=f"{CALLER_ROLE}-2")) == "Deny"
    assert decide(policy, _send(queue, rule=rule)) == "Allow"
    assert decide(policy, _send(queue, principal=STRANGER)) == "Deny"
    assert decide(policy, _send(queue, principal="arn:aws:iam::111122223333:role/other-team")) == "Deny"
    # Producers send orders, not dead letters.
    assert decide(policy, _send(dlq, principal=OTHER_ACCOUNT_PRODUCER)) == "Deny"


def test_only_the_loop_unknown_rule_copies_into_its_queue(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn, PRODUCERS)
    policy = resolver.resolve(resolver.template["Resources"]["LoopUnknownOutcomeQueuePolicy"]["Properties"])
    statements = policy["PolicyDocument"]["Statement"]
    queue = _arn(resolver, "LoopUnknownOutcomeQueue")
    assert decide(statements, _send(queue, rule=_arn(resolver, "LoopUnknownOutcomeRule"))) == "Allow"
    assert decide(statements, _send(queue, rule=_arn(resolver, "OrderTimeoutRule"))) == "Deny"
    assert decide(statements, _send(queue, principal=STRANGER)) == "Deny"


def _put_events(bus_arn: str, principal: str, source: str = "shop.checkout") -> Request:
    context = {"events:source": source, "events:detail-type": "Order Timed Out"}
    return Request("events:PutEvents", bus_arn, principal_arn=principal, context=context)


def test_the_ingress_bus_takes_events_only_from_named_producers(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn)
    assert resolver.exists("OrderIngressBus")
    rule = resolver.resolve(cfn["Resources"]["OrderTimeoutRule"]["Properties"])
    assert rule["EventBusName"] == resolver.resources["OrderIngressBus"]["Ref"]
    bus = _arn(resolver, "OrderIngressBus")
    # Nobody named: nobody may put events, not even the account's admin.
    for principal in (STRANGER, ADMIN, OTHER_ACCOUNT_PRODUCER):
        assert decide(_bus_policy(resolver, "OrderIngressBus"), _put_events(bus, principal)) == "Deny"

    resolver = _evaluated(cfn, PRODUCERS)
    policy = _bus_policy(resolver, "OrderIngressBus")
    assert decide(policy, _put_events(bus, OTHER_ACCOUNT_PRODUCER)) == "Allow"
    # ... for the order source only: anything else it puts is not allowed by the bus.
    assert decide(policy, _put_events(bus, OTHER_ACCOUNT_PRODUCER, source="shop.refunds")) == "Neither"
    assert decide(policy, _put_events(bus, CALLER_ROLE)) == "Allow"
    assert decide(policy, _put_events(bus, STRANGER)) == "Deny"


def test_an_existing_ingress_bus_is_used_as_named_without_a_bus_of_ours(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn, {"OrderTimeoutEventBusName": "default"})
    assert not resolver.exists("OrderIngressBus")
    assert not resolver.exists("OrderIngressBusDenyOthers")
    assert not resolver.exists("OrderIngressBusAllowProducers")
    assert resolver.resolve(cfn["Resources"]["OrderTimeoutRule"]["Properties"])["EventBusName"] == "default"


def test_only_our_functions_and_state_machine_publish_outcomes(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn, PRODUCERS)
    policy = _bus_policy(resolver, "OutcomeEventBus")
    bus = _arn(resolver, "OutcomeEventBus")
    outcome = {"events:source": "qfpay.cancellation", "events:detail-type": "Payment Cancellation Outcome"}

    def put(principal: str) -> Request:
        return Request("events:PutEvents", bus, principal_arn=principal, context=outcome)

    # Our publishers are not denied (their roles' PublishOutcomes statements allow them).
    assert decide(policy, put(_arn(resolver, "CancelFunctionRole"))) == "Neither"
    assert decide(policy, put(_arn(resolver, "DeadLetterFunctionRole"))) == "Neither"
    assert decide(policy, put(_arn(resolver, "CancellationStateMachineRole"))) == "Neither"
    # A forged REFUND_REQUIRED from anyone else, the poll function and producers included.
    for principal in (STRANGER, ADMIN, OTHER_ACCOUNT_PRODUCER, _arn(resolver, "PollFunctionRole")):
        assert decide(policy, put(principal)) == "Deny", principal


def test_only_the_functions_read_the_merchants_secret(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn)
    policy = resolver.resolve(cfn["Resources"]["QFPayCredentialsSecretPolicy"]["Properties"])
    assert policy["SecretId"] == resolver.resources["QFPayCredentialsSecret"]["Ref"]
    assert policy["BlockPublicPolicy"] is True
    statements = policy["ResourcePolicy"]["Statement"]
    secret = _arn(resolver, "QFPayCredentialsSecret")

    def call(action: str, principal: str) -> Request:
        return Request(action, secret, principal_arn=principal)

    for role in ("CancelFunctionRole", "PollFunctionRole", "DeadLetterFunctionRole"):
        assert decide(statements, call("secretsmanager:GetSecretValue", _arn(resolver, role))) == "Neither"
    for principal in (STRANGER, ADMIN, _arn(resolver, "CancellationStateMachineRole")):
        assert decide(statements, call("secretsmanager:GetSecretValue", principal)) == "Deny", principal
    # The admins still write the merchant's real values in.
    assert decide(statements, call("secretsmanager:PutSecretValue", ADMIN)) == "Neither"


def _statements_by_sid(resolver: _Resolver, role: str) -> dict[str, tuple[set[str], list[str]]]:
    properties = resolver.resolve(resolver.template["Resources"][role]["Properties"])
    return {
        s["Sid"]: (set(_as_list(s["Action"])), _as_list(s["Resource"]))
        for policy in properties["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
    }


def test_each_role_statement_names_its_resource(cfn: dict[str, Any]) -> None:
    """Issue 10: the queue, the log group, the table... and "*" only where IAM has no resource type."""
    r = _evaluated(cfn)
    arn = functools.partial(_arn, r)
    executions = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:stack-CancellationStateMachine-Name:*"
    expected_resources = {
        "CancelFunctionRole": {
            "WriteOwnLogs": [arn("CancelFunctionLogGroup")],
            "ReceiveOrders": [arn("OrderTimeoutQueue")],
            "UseDataKey": [arn("DataEncryptionKey")],
            "ReadQFPayCredentials": [r.resources["QFPayCredentialsSecret"]["Ref"]],
            "DecryptQFPayCredentials": [arn("QFPaySecretKey")],
            "StartEnquiryLoop": [r.resources["CancellationStateMachine"]["Ref"]],
            "ReadEnquiryLoopResult": [executions],
            "PublishOutcomes": [arn("OutcomeEventBus")],
            "DecisionLedger": [arn("IdempotencyTable")],
            "NotifyTaskTokenCallers": ["*"],
            "WriteTraces": ["*"],
        },
        "PollFunctionRole": {
            "WriteOwnLogs": [arn("PollFunctionLogGroup")],
            "ReadQFPayCredentials": [r.resources["QFPayCredentialsSecret"]["Ref"]],
            "DecryptQFPayCredentials": [arn("QFPaySecretKey")],
            "SharedRequestBudget": [arn("IdempotencyTable")],
            "UseDataKey": [arn("DataEncryptionKey")],
            "WriteTraces": ["*"],
        },
        "DeadLetterFunctionRole": {
            "WriteOwnLogs": [arn("DeadLetterFunctionLogGroup")],
            "ReadQFPayCredentials": [r.resources["QFPayCredentialsSecret"]["Ref"]],
            "DecryptQFPayCredentials": [arn("QFPaySecretKey")],
            "ReceiveDeadLetters": [arn("OrderTimeoutDeadLetterQueue")],
            "UseDataKey": [arn("DataEncryptionKey")],
            "DecisionLedger": [arn("IdempotencyTable")],
            "PublishOutcomes": [arn("OutcomeEventBus")],
            "StartEnquiryLoop": [r.resources["CancellationStateMachine"]["Ref"]],
            "ReadEnquiryLoopResult": [executions],
            "NotifyTaskTokenCallers": ["*"],
            "WriteTraces": ["*"],
        },
        "CancellationStateMachineRole": {
            "InvokePollFunction": [arn("PollFunction"), f"{arn('PollFunction')}:*"],
            "PublishOutcomes": [arn("OutcomeEventBus")],
            "UseDataKey": [arn("DataEncryptionKey")],
            "NotifyTaskTokenCallers": ["*"],
            "DeliverExecutionLogs": ["*"],
            "WriteTraces": ["*"],
        },
    }
    for role, expected in expected_resources.items():
        assert {sid: resources for sid, (_, resources) in _statements_by_sid(r, role).items()} == expected, (
            role
        )
    # The queue and the log group are the only ones named: no other queue, no logs on "*".
    cancel = _statements_by_sid(r, "CancelFunctionRole")
    assert cancel["ReceiveOrders"][0] >= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    assert cancel["WriteOwnLogs"][0] == LOGS_TO_OWN_GROUP


def test_the_secrets_key_is_decrypted_only_through_secrets_manager(cfn: dict[str, Any]) -> None:
    via_secrets_manager = {"StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}
    for parameters, key in (
        ({}, "QFPaySecretKey"),  # the secret the stack creates, with its own key
        (
            {"ExistingQFPaySecretArn": EXISTING_SECRET, "ExistingQFPaySecretKmsKeyArn": EXISTING_SECRET_KEY},
            EXISTING_SECRET_KEY,
        ),
    ):
        resolver = _evaluated(cfn, parameters)
        key_arn = key if key.startswith("arn:") else _arn(resolver, key)
        for role in ("CancelFunctionRole", "PollFunctionRole", "DeadLetterFunctionRole"):
            properties = resolver.resolve(cfn["Resources"][role]["Properties"])
            statements = properties["Policies"][0]["PolicyDocument"]["Statement"]
            (decrypt,) = [s for s in statements if s["Sid"] == "DecryptQFPayCredentials"]
            assert (decrypt["Action"], decrypt["Resource"]) == ("kms:Decrypt", key_arn)
            assert decrypt["Condition"] == via_secrets_manager
            read = Request("kms:Decrypt", key_arn, principal_arn=_arn(resolver, role))
            assert decide([decrypt], read) == "Neither"  # a direct Decrypt is not granted
            read.context["kms:ViaService"] = f"secretsmanager.{REGION}.amazonaws.com"
            assert decide([decrypt], read) == "Allow"

    # An existing secret under the AWS managed key: nothing to grant, and no key or policy of ours.
    resolver = _evaluated(cfn, {"ExistingQFPaySecretArn": EXISTING_SECRET})
    for name in ("QFPaySecretKey", "QFPayCredentialsSecret", "QFPayCredentialsSecretPolicy"):
        assert not resolver.exists(name), name
    sids = set(_statements_by_sid(resolver, "PollFunctionRole"))
    assert "DecryptQFPayCredentials" not in sids
    assert _statements_by_sid(resolver, "PollFunctionRole")["ReadQFPayCredentials"][1] == [EXISTING_SECRET]


def test_secret_queues_table_and_executions_are_encrypted_with_keys_of_ours(cfn: dict[str, Any]) -> None:
    resources = cfn["Resources"]
    assert resources["QFPayCredentialsSecret"]["Properties"]["KmsKeyId"] == {"Ref": "QFPaySecretKey"}
    assert resources["QFPaySecretKey"]["Condition"] == "CreateQFPaySecret"
    machine = resources["CancellationStateMachine"]["Properties"]
    assert machine["EncryptionConfiguration"] == {
        "Type": "CUSTOMER_MANAGED_KMS_KEY",
        "KmsKeyId": {"Fn::GetAtt": ["DataEncryptionKey", "Arn"]},
        "KmsDataKeyReusePeriodSeconds": 300,
    }
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is False
    for name in ("OrderTimeoutQueue", "OrderTimeoutDeadLetterQueue", "LoopUnknownOutcomeQueue"):
        assert resources[name]["Properties"]["KmsMasterKeyId"] == {"Ref": "DataEncryptionKey"}, name
    assert resources["IdempotencyTable"]["Properties"]["SSESpecification"]["KMSMasterKeyId"] == {
        "Ref": "DataEncryptionKey"
    }
    assert set(resources_of(cfn, "AWS::KMS::Key")) == {
        "LogEncryptionKey",
        "QFPaySecretKey",
        "DataEncryptionKey",
    }


def test_key_policies_let_in_only_this_account_eventbridge_and_named_producers(cfn: dict[str, Any]) -> None:
    resolver = _evaluated(cfn, PRODUCERS)
    for name in ("QFPaySecretKey", "DataEncryptionKey"):
        statements = resolver.resolve(cfn["Resources"][name]["Properties"])["KeyPolicy"]["Statement"]
        key = _arn(resolver, name)
        for statement in statements:
            assert statement["Effect"] == "Allow"
            assert statement["Principal"] != "*", (name, statement)
            assert statement["Principal"].get("AWS") != "*", (name, statement)
        # Another account's principal and a rule of another account get nothing from the key.
        assert decide(
            statements, Request("kms:Decrypt", key, principal_arn="arn:aws:iam::999999999999:role/x")
        ) == ("Neither")
        foreign_rule = {"aws:SourceAccount": "999999999999"}
        decrypt = Request("kms:GenerateDataKey", key, service="events.amazonaws.com", context=foreign_rule)
        assert decide(statements, decrypt) == "Neither"
    data = resolver.resolve(cfn["Resources"]["DataEncryptionKey"]["Properties"])["KeyPolicy"]["Statement"]
    data_key = _arn(resolver, "DataEncryptionKey")
    ours = {"aws:SourceAccount": ACCOUNT}
    assert decide(
        data, Request("kms:GenerateDataKey", data_key, service="events.amazonaws.com", context=ours)
    ) == ("Allow")
    via_sqs = {"kms:ViaService": f"sqs.{REGION}.amazonaws.com"}
    producer = Request("kms:GenerateDataKey", data_key, principal_arn=OTHER_ACCOUNT_PRODUCER, context=via_sqs)
    assert decide(data, producer) == "Allow"
    # Only through SQS: the producer cannot decrypt the ledger's or the loop's data directly.
    assert decide(data, Request("kms:Decrypt", data_key, principal_arn=OTHER_ACCOUNT_PRODUCER)) == "Neither"
    secret_key = resolver.resolve(cfn["Resources"]["QFPaySecretKey"]["Properties"])["KeyPolicy"]["Statement"]
    assert decide(secret_key, producer) == "Neither"


def test_traces_never_capture_a_handlers_response(cfn: dict[str, Any]) -> None:
    """With CallTracing on, Powertools would copy each handler's response (outcomes, the loop's
    state with a caller's task token) into X-Ray metadata."""
    for name in ("CancelFunction", "PollFunction"):
        variables = cfn["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert variables["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false", name


def test_the_cancel_function_may_read_and_start_a_loop_that_follows_an_ended_one(cfn: dict[str, Any]) -> None:
    """A hand-off that finds the order's loop ended reads it (DescribeExecution, and its history
    for an UNKNOWN outcome) and may start the loop that follows it, ``<name>-<time>``: the role
    allows exactly that on this state machine's executions, and nothing on another machine's."""
    resolver = _evaluated(cfn)
    properties = resolver.resolve(cfn["Resources"]["CancelFunctionRole"]["Properties"])
    statements = [s for policy in properties["Policies"] for s in _statements(policy["PolicyDocument"])]
    machine = resolver.resources["CancellationStateMachine"]["Ref"]
    executions = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:stack-CancellationStateMachine-Name"
    name = "order-5d41402abc4b2a76b9719d911017c592"
    for execution in (f"{executions}:{name}", f"{executions}:{name}-1795600000"):
        for action in ("states:DescribeExecution", "states:GetExecutionHistory"):
            assert decide(statements, Request(action, execution)) == "Allow", (action, execution)
    assert decide(statements, Request("states:StartExecution", machine)) == "Allow"
    other = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:someone-elses-machine:{name}"
    assert decide(statements, Request("states:DescribeExecution", other)) == "Neither"


def test_dead_letters_are_settled_by_a_function_of_their_own_that_only_looks_payments_up(
    cfn: dict[str, Any],
) -> None:
    """OrderTimeoutDeadLetterQueue feeds DeadLetterFunction (SAM's event source mapping, with
    batch item failures): an order message that dead-lettered ends in an outcome and its caller is
    answered. Its role reads the merchant's secret (to look a payment named by out_trade_no up
    with QFPay's Enquiry; its code never sends a cancel) and holds nothing on the order queue. Its
    Timeout fits the look-up, and the DLQ's visibility timeout is six times that."""
    resources = cfn["Resources"]
    (mapping,) = [
        m["Properties"]
        for m in resources_of(cfn, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": "DeadLetterFunction"}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["OrderTimeoutDeadLetterQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 2}
    function = resources["DeadLetterFunction"]["Properties"]
    assert function["Role"] == {"Fn::GetAtt": ["DeadLetterFunctionRole", "Arn"]}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "DeadLetterFunctionLogGroup"}
    assert (
        granted_actions(resources["DeadLetterFunctionRole"])
        == {
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "secretsmanager:GetSecretValue",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "events:PutEvents",
            "states:StartExecution",
            "states:DescribeExecution",
            "states:GetExecutionHistory",
            "states:SendTaskSuccess",
            "states:SendTaskFailure",
        }
        | LOGS_TO_OWN_GROUP
        | XRAY_WRITE
    )
    # SAM adds no managed policy to an explicit role.
    assert "ManagedPolicyArns" not in resources["DeadLetterFunctionRole"]["Properties"]
    environment = function["Environment"]["Variables"]
    assert environment["FUNCTION_TIMEOUT_SECONDS"] == str(function["Timeout"])
    dlq = resources["OrderTimeoutDeadLetterQueue"]["Properties"]
    assert dlq["VisibilityTimeout"] >= 6 * function["Timeout"]
    assert environment["ORDER_QUEUE_MAX_RECEIVE_COUNT"] == str(
        resources["OrderTimeoutQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    )
    alarm = resources["DeadLetteredAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Threshold"]) == (
        "QFPayCancellation",
        "DeadLettered",
        0,
    )
