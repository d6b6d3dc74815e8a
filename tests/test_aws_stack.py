"""tests/local/aws_stack.py builds, in moto, what template.yaml declares."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.local.aws_stack import Stack, create_stack, load_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
CREDENTIALS = {"app_code": "LOCALAPPCODE", "client_key": "LOCALCLIENTKEY", "sign_type": "MD5"}
BASE_URL = "http://127.0.0.1:8765"

# docs/contracts.md, "Environment of the functions".
CANCEL_VARIABLES = {
    "QFPAY_BASE_URL",
    "QFPAY_SECRET_ID",
    "STATE_MACHINE_ARN",
    "IDEMPOTENCY_TABLE",
    "EVENT_BUS_NAME",
    "CLOSE_PAY_TYPES",
    "CLOSE_HTTP_METHOD",
    "POLL_FIRST_WAIT_SECONDS",
    "POLL_MAX_WAIT_SECONDS",
    "POLL_DEADLINE_SECONDS",
    "RETRY_BASE_DELAY_SECONDS",
}
POLL_VARIABLES = {
    "QFPAY_BASE_URL",
    "QFPAY_SECRET_ID",
    "EVENT_BUS_NAME",
    "CLOSE_PAY_TYPES",
    "CLOSE_HTTP_METHOD",
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-east-1")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stands in for tests.local.lambda_runtime: records the register_function calls."""
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("tests.local.lambda_runtime")

    def register_function(
        function_name: str, code_dir: Path, handler: str, environment: dict[str, str]
    ) -> None:
        calls.append(
            {
                "function_name": function_name,
                "code_dir": code_dir,
                "handler": handler,
                "environment": environment,
            }
        )

    fake.register_function = register_function  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests.local.lambda_runtime", fake)
    return calls


@pytest.fixture
def stack(aws_env: None, registered: list[dict[str, Any]]) -> Iterator[Stack]:
    with mock_aws():
        yield create_stack(
            template_path=TEMPLATE,
            credentials=CREDENTIALS,
            qfpay_base_url=BASE_URL,
            env_overrides={"POWERTOOLS_LOG_LEVEL": "DEBUG"},
        )


@pytest.fixture
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def _queue_attributes(url: str) -> dict[str, str]:
    attributes: dict[str, str] = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["All"]
    )["Attributes"]
    return attributes


def test_queue_and_dlq_have_the_template_properties(stack: Stack, template: dict[str, Any]) -> None:
    queue_properties = template["Resources"]["OrderTimeoutQueue"]["Properties"]
    dlq_properties = template["Resources"]["OrderTimeoutDeadLetterQueue"]["Properties"]
    queue = _queue_attributes(stack.queue_url)
    dlq = _queue_attributes(stack.dlq_url)

    assert int(queue["VisibilityTimeout"]) == queue_properties["VisibilityTimeout"]
    assert stack.visibility_timeout == queue_properties["VisibilityTimeout"]
    assert int(queue["MessageRetentionPeriod"]) == queue_properties["MessageRetentionPeriod"]
    assert int(dlq["MessageRetentionPeriod"]) == dlq_properties["MessageRetentionPeriod"] == 1209600
    assert queue["SqsManagedSseEnabled"] == dlq["SqsManagedSseEnabled"] == "true"

    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == stack.dlq_arn == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == stack.max_receive_count == 5
    assert queue["QueueArn"] == stack.queue_arn


def test_visibility_timeout_can_be_shortened_for_local_runs(
    aws_env: None, registered: list[dict[str, Any]]
) -> None:
    with mock_aws():
        stack = create_stack(
            template_path=TEMPLATE,
            credentials=CREDENTIALS,
            qfpay_base_url=BASE_URL,
            visibility_timeout=5,
            stack_name="short-visibility",
        )
        assert _queue_attributes(stack.queue_url)["VisibilityTimeout"] == "5"
        assert stack.visibility_timeout == 5
        assert stack.queue_url.endswith("short-visibility-OrderTimeoutQueue")


def test_sqs_event_settings_come_from_the_template(stack: Stack) -> None:
    assert stack.batch_size == 10
    assert stack.maximum_concurrency == 2
    assert stack.maximum_batching_window_seconds == 1
    assert stack.function_response_types == ["ReportBatchItemFailures"]


def test_bus_secret_and_table_exist(stack: Stack, template: dict[str, Any]) -> None:
    bus = boto3.client("events").describe_event_bus(Name=stack.bus_name)
    assert bus["Arn"] == stack.bus_arn
    assert stack.bus_name == "qfpay-cancel-local-outcomes"  # the template's !Sub of the name

    secret = boto3.client("secretsmanager").get_secret_value(SecretId=stack.secret_id)
    assert json.loads(secret["SecretString"]) == CREDENTIALS
    assert secret["ARN"] == stack.secret_id

    dynamodb = boto3.client("dynamodb")
    table = dynamodb.describe_table(TableName=stack.table_name)["Table"]
    properties = template["Resources"]["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == properties["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb.describe_time_to_live(TableName=stack.table_name)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiration"
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    backups = dynamodb.describe_continuous_backups(TableName=stack.table_name)
    pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"


def test_functions_match_the_template(stack: Stack, template: dict[str, Any]) -> None:
    lambda_ = boto3.client("lambda")
    globals_ = template["Globals"]["Function"]
    for name, logical_id in (
        (stack.cancel_function_name, "CancelFunction"),
        (stack.poll_function_name, "PollFunction"),
    ):
        properties = template["Resources"][logical_id]["Properties"]
        config = lambda_.get_function_configuration(FunctionName=name)
        assert config["Handler"] == properties["Handler"] == "app.lambda_handler"
        assert config["Runtime"] == globals_["Runtime"] == "python3.13"
        assert config["Timeout"] == properties["Timeout"]
        assert config["MemorySize"] == globals_["MemorySize"]
        assert config["Architectures"] == globals_["Architectures"]
        assert config["Environment"]["Variables"] == stack.function_environments[name]
    assert stack.cancel_function_arn.endswith(f":function:{stack.cancel_function_name}")


def test_environments_are_resolved_to_the_local_resources(stack: Stack) -> None:
    cancel, poll = stack.cancel_environment, stack.poll_environment
    assert set(cancel) >= CANCEL_VARIABLES
    assert set(poll) >= POLL_VARIABLES
    for environment in (cancel, poll):
        assert all(isinstance(value, str) for value in environment.values())
        assert not any("${" in value or "Ref" in value for value in environment.values())
        assert environment["QFPAY_BASE_URL"] == BASE_URL  # the argument replaces the parameter
        assert environment["QFPAY_SECRET_ID"] == stack.secret_id  # Fn::If -> the created secret
        assert environment["EVENT_BUS_NAME"] == stack.bus_name
        assert environment["CLOSE_PAY_TYPES"] == "800008,800208,801008"
        assert environment["CLOSE_HTTP_METHOD"] == "GET"
        assert environment["POWERTOOLS_SERVICE_NAME"] == "qfpay-cancellation"
        assert environment["POWERTOOLS_LOG_LEVEL"] == "DEBUG"  # env_overrides come last
    assert cancel["STATE_MACHINE_ARN"] == stack.state_machine_arn
    assert cancel["IDEMPOTENCY_TABLE"] == stack.table_name
    assert (
        cancel["POLL_FIRST_WAIT_SECONDS"],
        cancel["POLL_MAX_WAIT_SECONDS"],
        cancel["POLL_DEADLINE_SECONDS"],
    ) == ("3", "60", "900")
    assert cancel["RETRY_BASE_DELAY_SECONDS"] == "10"
    assert "STATE_MACHINE_ARN" not in poll


def test_each_function_is_registered_with_the_local_runtime(
    stack: Stack, registered: list[dict[str, Any]]
) -> None:
    by_name = {call["function_name"]: call for call in registered}
    assert set(by_name) == {stack.cancel_function_name, stack.poll_function_name}
    assert by_name[stack.cancel_function_name]["code_dir"] == ROOT / "functions" / "cancel"
    assert by_name[stack.poll_function_name]["code_dir"] == ROOT / "functions" / "poll"
    for name, call in by_name.items():
        assert call["handler"] == "app.lambda_handler"
        assert call["environment"] == stack.function_environments[name]


def test_state_machine_definition_is_fully_substituted(stack: Stack) -> None:
    described = boto3.client("stepfunctions").describe_state_machine(stateMachineArn=stack.state_machine_arn)
    assert described["type"] == "STANDARD"
    definition = described["definition"]
    assert "${" not in definition
    states = json.loads(definition)["States"]
    assert states["AskEnquiry"]["Parameters"]["FunctionName"] == stack.poll_function_arn
    assert states["ConcludeAfterTaskError"]["Parameters"]["FunctionName"] == stack.poll_function_arn
    entry = states["PublishOutcome"]["Parameters"]["Entries"][0]
    assert entry["EventBusName"] == stack.bus_name


def test_an_event_on_the_bus_reaches_read_outcomes(stack: Stack) -> None:
    events = boto3.client("events")
    detail = {"outcome_id": "o-1", "status": "CANCELLED", "reason": "reversed"}
    answer = events.put_events(
        Entries=[
            {
                "EventBusName": stack.bus_name,
                "Source": "qfpay.cancellation",
                "DetailType": "Payment Cancellation Outcome",
                "Detail": json.dumps(detail),
            },
            {  # not ours: the observer's rule must not pick it up
                "EventBusName": stack.bus_name,
                "Source": "someone.else",
                "DetailType": "Other",
                "Detail": "{}",
            },
        ]
    )
    assert answer["FailedEntryCount"] == 0

    assert stack.read_outcomes(wait_seconds=5) == [detail]
    assert stack.read_outcomes(wait_seconds=0) == []  # drained
