"""tests/local/aws_stack.py builds, in moto, what template.yaml declares."""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from moto import mock_aws

from tests.local import lambda_runtime
from tests.local.aws_stack import Stack, StackTemplateError, create_stack, load_template
from tests.local.moto_server import LocalAws
from tests.local.tests.test_lambda_runtime_canary import wait_for_execution
from tests.template.test_template import CANCEL_VARIABLES, POLL_VARIABLES

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "template.yaml"
CREDENTIALS = {"app_code": "LOCALAPPCODE", "client_key": "LOCALCLIENTKEY", "sign_type": "MD5"}
BASE_URL = "http://127.0.0.1:8765"

# docs/contracts.md, "Environment of the functions".


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
    data_key = boto3.client("kms").describe_key(KeyId=queue["KmsMasterKeyId"])["KeyMetadata"]
    assert dlq["KmsMasterKeyId"] == queue["KmsMasterKeyId"] == data_key["KeyId"]
    assert data_key["Description"] == template["Resources"]["DataEncryptionKey"]["Properties"]["Description"]

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
    assert stack.maximum_concurrency == 4
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
    assert table["AttributeDefinitions"] == properties["AttributeDefinitions"]
    # The reconciliation due list: the sparse index the template declares.
    (index,) = table["GlobalSecondaryIndexes"]
    (declared,) = properties["GlobalSecondaryIndexes"]
    assert (index["IndexName"], index["KeySchema"]) == (declared["IndexName"], declared["KeySchema"])
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
        assert config["MemorySize"] == properties.get("MemorySize", globals_["MemorySize"])
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
    assert cancel["LEDGER_TABLE"] == stack.table_name
    assert (
        cancel["POLL_FIRST_WAIT_SECONDS"],
        cancel["POLL_MAX_WAIT_SECONDS"],
        cancel["POLL_DEADLINE_SECONDS"],
    ) == ("3", "60", "900")
    assert cancel["RETRY_BASE_DELAY_SECONDS"] == "10"
    assert "STATE_MACHINE_ARN" not in poll
    reconcile = stack.reconcile_environment
    assert reconcile["LEDGER_TABLE"] == stack.table_name
    assert reconcile["RECONCILE_INTAKE_QUEUE_URL"] == stack.intake_queue_url
    assert reconcile["RECONCILE_CHECKS_AFTER_SECONDS"] == "300,3600,86400,172800,259200,345600,432000"


def test_each_function_is_registered_with_the_local_runtime(
    stack: Stack, registered: list[dict[str, Any]]
) -> None:
    by_name = {call["function_name"]: call for call in registered}
    assert set(by_name) == {
        stack.cancel_function_name,
        stack.poll_function_name,
        stack.reconcile_function_name,
        stack.dead_letter_function_name,
    }
    assert by_name[stack.dead_letter_function_name]["code_dir"] == ROOT / "functions" / "deadletter"
    assert by_name[stack.cancel_function_name]["code_dir"] == ROOT / "functions" / "cancel"
    assert by_name[stack.poll_function_name]["code_dir"] == ROOT / "functions" / "poll"
    assert by_name[stack.reconcile_function_name]["code_dir"] == ROOT / "functions" / "reconcile"
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


# ------------------------------------------------------------------ ingress (OrderTimeoutRule)


def _receive_all(queue_url: str, wait_seconds: float = 0.0) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    deadline = time.monotonic() + wait_seconds
    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if not messages and (bodies or time.monotonic() >= deadline):
            return bodies
        if not messages:
            time.sleep(0.1)


def _put(bus: str, source: str, detail_type: str, detail: dict[str, Any]) -> None:
    answer = boto3.client("events").put_events(
        Entries=[
            {"EventBusName": bus, "Source": source, "DetailType": detail_type, "Detail": json.dumps(detail)}
        ]
    )
    assert answer["FailedEntryCount"] == 0


def test_order_timeout_events_with_the_template_pattern_reach_the_queue(
    stack: Stack, template: dict[str, Any]
) -> None:
    parameters = template["Parameters"]
    source = parameters["OrderTimeoutEventSource"]["Default"]
    detail_type = parameters["OrderTimeoutDetailType"]["Default"]
    order = json.loads((ROOT / "events" / "eventbridge-order-timeout.json").read_text())["detail"]
    # No OrderTimeoutEventBusName: the stack's own ingress bus.
    assert parameters["OrderTimeoutEventBusName"]["Default"] == ""
    assert stack.ingress_bus_name == f"{stack.stack_name}-orders"
    assert stack.ingress_event_pattern == {"source": [source], "detail-type": [detail_type]}

    _put(stack.ingress_bus_name, source, detail_type, order)
    _put(stack.ingress_bus_name, "someone.else", detail_type, {**order, "out_trade_no": "NOT-OURS-1"})
    _put(stack.ingress_bus_name, source, "Order Paid", {**order, "out_trade_no": "NOT-OURS-2"})

    delivered = _receive_all(stack.queue_url, wait_seconds=5)
    # Only the matching event, whole: the cancel function takes the order from its detail.
    assert [event["detail"] for event in delivered] == [order]
    assert delivered[0]["source"] == source
    assert delivered[0]["detail-type"] == detail_type
    assert _receive_all(stack.dlq_url) == []


def test_the_rule_targets_the_queue_with_retries_and_the_dlq(stack: Stack, template: dict[str, Any]) -> None:
    events = boto3.client("events")
    rule = events.describe_rule(Name=stack.ingress_rule_name, EventBusName=stack.ingress_bus_name)
    assert rule["Arn"] == stack.ingress_rule_arn
    assert rule["State"] == "ENABLED"
    (target,) = events.list_targets_by_rule(
        Rule=stack.ingress_rule_name, EventBusName=stack.ingress_bus_name
    )["Targets"]
    declared = template["Resources"]["OrderTimeoutRule"]["Properties"]["Targets"][0]
    assert target["Arn"] == stack.queue_arn
    assert target["DeadLetterConfig"] == {"Arn": stack.dlq_arn}
    assert target["RetryPolicy"] == declared["RetryPolicy"]


def _queue_urls(statement: dict[str, Any], policy: dict[str, Any]) -> set[str]:
    """The URLs of the queues a statement's Resource names (ARNs mapped back to URLs)."""
    sqs = boto3.client("sqs")
    arns = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
    return {sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"] for arn in arns}


def test_the_queue_policies_name_the_local_rules(stack: Stack, template: dict[str, Any]) -> None:
    loop_rule_arn = boto3.client("events").describe_rule(
        Name=stack.loop_unknown_rule_name, EventBusName=stack.bus_name
    )["Arn"]
    for url, rule_arn in (
        (stack.queue_url, stack.ingress_rule_arn),
        (stack.dlq_url, stack.ingress_rule_arn),
        (stack.loop_unknown_queue_url, loop_rule_arn),
    ):
        policy = json.loads(_queue_attributes(url)["Policy"])
        (allow,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
        assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": rule_arn}}
        denials = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
        assert {"Bool": {"aws:SecureTransport": "false"}} in [d["Condition"] for d in denials]
        # Everybody but the rule is denied SendMessage on this queue (no producers are named).
        (senders,) = [
            d for d in denials if d["Action"] == "sqs:SendMessage" and url in _queue_urls(d, policy)
        ]
        assert senders["Condition"] == {"ArnNotEquals": {"aws:SourceArn": rule_arn}}
    # UnknownOutcomeAlarm names the rule by the last part of its ARN (rule/<bus>/<name>).
    metrics = template["Resources"]["UnknownOutcomeAlarm"]["Properties"]["Metrics"]
    (loop,) = [m["MetricStat"]["Metric"] for m in metrics if m["Id"] == "loop"]
    (rule_name,) = [d["Value"] for d in loop["Dimensions"] if d["Name"] == "RuleName"]
    index, (separator, _) = rule_name["Fn::Select"][0], rule_name["Fn::Select"][1]["Fn::Split"]
    assert loop_rule_arn.split(separator)[index] == stack.loop_unknown_rule_name


def test_the_ingress_parameters_choose_the_bus_and_the_pattern(
    aws_env: None, registered: list[dict[str, Any]]
) -> None:
    order = {"out_trade_no": "EB-CUSTOM-1", "txamt": 100, "txdtm": "2026-11-26 10:00:00"}
    with mock_aws():
        stack = create_stack(
            template_path=TEMPLATE,
            credentials=CREDENTIALS,
            qfpay_base_url=BASE_URL,
            parameters={
                "OrderTimeoutEventBusName": "shop-events",
                "OrderTimeoutEventSource": "shop.orders",
                "OrderTimeoutDetailType": "Checkout Expired",
            },
        )
        assert stack.ingress_bus_name == "shop-events"
        assert stack.ingress_rule_arn.endswith(f":rule/shop-events/{stack.ingress_rule_name}")
        _put("default", "shop.orders", "Checkout Expired", {**order, "out_trade_no": "WRONG-BUS"})
        _put("shop-events", "shop.checkout", "Order Timed Out", {**order, "out_trade_no": "OLD-DEFAULTS"})
        _put("shop-events", "shop.orders", "Checkout Expired", order)
        assert [event["detail"] for event in _receive_all(stack.queue_url, wait_seconds=5)] == [order]

        with pytest.raises(StackTemplateError, match="no such template parameters"):
            create_stack(
                template_path=TEMPLATE,
                credentials=CREDENTIALS,
                qfpay_base_url=BASE_URL,
                stack_name="typo",
                parameters={"OrderTimeoutBus": "x"},
            )


def test_the_functions_and_the_loop_run_with_the_templates_roles_and_keys(stack: Stack) -> None:
    """The local stack carries the template's roles, keys and resource policies (moto stores
    them and enforces none: tests/template/test_template.py evaluates the policies as IAM does)."""
    iam, lambda_ = boto3.client("iam"), boto3.client("lambda")
    roles = {}
    for name, logical_id in (
        (stack.cancel_function_name, "CancelFunctionRole"),
        (stack.poll_function_name, "PollFunctionRole"),
        (stack.reconcile_function_name, "ReconcileFunctionRole"),
        (stack.dead_letter_function_name, "DeadLetterFunctionRole"),
    ):
        role_arn = lambda_.get_function_configuration(FunctionName=name)["Role"]
        assert role_arn.endswith(f"role/{stack.stack_name}-{logical_id}")
        roles[logical_id] = role_arn
    sfn = boto3.client("stepfunctions")
    machine = sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)
    assert machine["roleArn"].endswith(f"role/{stack.stack_name}-CancellationStateMachineRole")
    roles["CancellationStateMachineRole"] = machine["roleArn"]
    for role_arn in roles.values():
        role_name = role_arn.rsplit("/", 1)[-1]
        assert iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        assert iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"] == []

    kms = boto3.client("kms")
    data_key = kms.describe_key(KeyId=machine["encryptionConfiguration"]["kmsKeyId"])["KeyMetadata"]
    assert machine["encryptionConfiguration"]["type"] == "CUSTOMER_MANAGED_KMS_KEY"
    table = boto3.client("dynamodb").describe_table(TableName=stack.table_name)["Table"]
    assert table["SSEDescription"]["SSEType"] == "KMS"
    assert table["SSEDescription"]["KMSMasterKeyArn"].endswith(data_key["KeyId"])  # moto: the id given

    secrets = boto3.client("secretsmanager")
    secret_key = kms.describe_key(KeyId=secrets.describe_secret(SecretId=stack.secret_id)["KmsKeyId"])
    assert secret_key["KeyMetadata"]["KeyId"] != data_key["KeyId"]
    secret_policy = json.loads(secrets.get_resource_policy(SecretId=stack.secret_id)["ResourcePolicy"])
    (deny,) = secret_policy["Statement"]
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        roles["CancelFunctionRole"],
        roles["PollFunctionRole"],
        roles["ReconcileFunctionRole"],
        roles["DeadLetterFunctionRole"],  # its look-up's Enquiry is signed
    ]

    bus_policy = json.loads(boto3.client("events").describe_event_bus(Name=stack.bus_name)["Policy"])
    (deny,) = bus_policy["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        roles["CancelFunctionRole"],
        roles["CancellationStateMachineRole"],
        roles["ReconcileFunctionRole"],
        roles["DeadLetterFunctionRole"],
    ]
    # No producers named: nobody may put events on the ingress bus.
    ingress_policy = json.loads(
        boto3.client("events").describe_event_bus(Name=stack.ingress_bus_name)["Policy"]
    )
    assert [(s["Effect"], s["Action"], "Condition" in s) for s in ingress_policy["Statement"]] == [
        ("Deny", "events:PutEvents", False)
    ]


def test_the_loops_unknown_outcomes_are_copied_to_their_queue(stack: Stack) -> None:
    base = {"outcome_id": "0" * 32, "status": "UNKNOWN", "reason": "not confirmed"}
    _put(
        stack.bus_name,
        "qfpay.cancellation",
        "Payment Cancellation Outcome",
        {**base, "decided_by": "poll-loop"},
    )
    _put(
        stack.bus_name,
        "qfpay.cancellation",
        "Payment Cancellation Outcome",
        {**base, "decided_by": "cancel-function"},  # counted by the OutcomeUnknown metric instead
    )
    _put(
        stack.bus_name,
        "qfpay.cancellation",
        "Payment Cancellation Outcome",
        {**base, "status": "CANCELLED", "decided_by": "poll-loop"},
    )
    copies = _receive_all(stack.loop_unknown_queue_url, wait_seconds=5)
    assert [(c["detail"]["status"], c["detail"]["decided_by"]) for c in copies] == [("UNKNOWN", "poll-loop")]


# ------------------------------------------------------------------ a broken poll function

OUTCOME_SCHEMA = json.loads(
    (ROOT / "events" / "schemas" / "payment-cancellation-outcome.schema.json").read_text()
)

BROKEN_POLL_FUNCTION = """
def lambda_handler(event, context):
    raise RuntimeError("the poll function is broken (test)")
"""


def _handoff_state(order: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The execution input the cancel function starts the loop with (docs/contracts.md)."""
    now = time.time()
    state: dict[str, Any] = {
        "outcome_id": "5d41402abc4b2a76b9719d911017c592",
        "order": order,
        "endpoint": "reversal",
        "reversal_syssn": "20261126000200020000000001",
        "respcd": "1143",
        "resperr": "processing",
        "reversal_pending": False,
        "attempts": 1,
        "polls": 0,
        "resent": False,
        "started_at": now,
        "deadline_at": now + 60,
        "wait_seconds": 0,
        "schedule": {"first_wait": 1, "max_wait": 2, "factor": 1.5},
        "status": "IN_PROGRESS",
    }
    state.update(overrides)
    return state


def test_a_poll_function_failing_twice_still_ends_in_an_explained_unknown_outcome(
    local_aws: LocalAws, tmp_path: Path
) -> None:
    stack = create_stack(
        template_path=TEMPLATE,
        credentials=CREDENTIALS,
        qfpay_base_url=BASE_URL,
        stack_name="broken-loop",
    )
    broken = tmp_path / "broken_poll"
    broken.mkdir()
    (broken / "app.py").write_text(BROKEN_POLL_FUNCTION)
    lambda_runtime.register_function(
        stack.poll_function_name, broken, "app.lambda_handler", stack.poll_environment
    )
    order = {
        "out_trade_no": "BROKEN-LOOP-1",
        "syssn": "20261126000101009999",
        "txamt": 880,
        "txdtm": "2026-11-26 10:02:00",
        "pay_type": "800101",
        "mchid": None,
        "udid": None,
        "txcurrcd": "HKD",
        "task_token": None,
    }
    state = _handoff_state(order)
    sfn = boto3.client("stepfunctions")
    started = sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name="order-broken", input=json.dumps(state)
    )

    finished = wait_for_execution(started["executionArn"])

    assert finished["status"] == "FAILED"
    assert finished["error"] == "Cancellation.EnquiryLoopBroken"
    calls = lambda_runtime.invocations(stack.poll_function_name)
    assert [call.error for call in calls] == ["RuntimeError", "RuntimeError"]  # asked, then concluding

    (outcome,) = stack.read_outcomes(wait_seconds=5)
    jsonschema.validate(outcome, OUTCOME_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert outcome["outcome_id"] == state["outcome_id"]
    assert outcome["status"] == "UNKNOWN"
    assert outcome["decided_by"] == "poll-loop"
    assert (outcome["out_trade_no"], outcome["syssn"], outcome["message_txamt"]) == (
        "BROKEN-LOOP-1",
        order["syssn"],
        880,
    )
    assert (outcome["mchid"], outcome["pay_type"], outcome["message_txcurrcd"]) == (None, "800101", "HKD")
    assert (outcome["txamt"], outcome["txcurrcd"]) == (None, None)  # QFPay's figures: none were read
    assert (outcome["endpoint"], outcome["respcd"], outcome["resperr"]) == ("reversal", "1143", "processing")
    assert outcome["reversal_syssn"] == state["reversal_syssn"]
    assert (outcome["attempts"], outcome["polls"], outcome["resent"]) == (1, 0, False)
    assert "failed twice" in outcome["reason"]
    assert "RuntimeError" in outcome["reason"]
    assert "a person must look" in outcome["reason"]

    # The alarm's rule sees it (a copy lands in the loop's UNKNOWN queue).
    (copy,) = _receive_all(stack.loop_unknown_queue_url, wait_seconds=5)
    assert copy["detail"] == outcome

    history = sfn.get_execution_history(executionArn=started["executionArn"], maxResults=1000)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert entered == [
        "WaitBeforeEnquiry",
        "AskEnquiry",  # raises: caught into task_error
        "ConcludeAfterTaskError",  # raises again: caught into conclude_error
        "DescribeBrokenLoop",
        "MarkBrokenLoopUnknown",
        "PublishUnknownOutcome",
        "HasCallerToken",  # task_token is present (null): no caller to notify
        "RouteCallerReport",
        "EndByStatus",
        "EnquiryLoopBroken",
    ]
