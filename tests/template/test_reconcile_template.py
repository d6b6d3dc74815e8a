"""The reconciliation part of template.yaml, SAM-transformed: what deploys."""

from __future__ import annotations

from typing import Any

import pytest

from tests.local.aws_stack import load_template
from tests.template.test_template import TEMPLATE, granted_actions, sam_transform


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return sam_transform(load_template(TEMPLATE))


def _statements(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (policy,) = cfn["Resources"]["ReconcileFunctionRole"]["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"] if "Sid" in s}


def test_the_reconcile_role_names_only_its_own_resources(cfn: dict[str, Any]) -> None:
    role = cfn["Resources"]["ReconcileFunctionRole"]
    assert "ManagedPolicyArns" not in role["Properties"]
    assert cfn["Resources"]["ReconcileFunction"]["Properties"]["Role"] == {
        "Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]
    }
    assert granted_actions(role) == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "dynamodb:UpdateItem",  # the merchants' shared request budget only
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "events:PutEvents",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
    }
    statements = _statements(cfn)
    assert statements["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": ["ReconcileFunctionLogGroup", "Arn"]}
    assert statements["ReconciliationRecords"]["Resource"] == [
        {"Fn::GetAtt": ["IdempotencyTable", "Arn"]},
        {"Fn::Sub": "${IdempotencyTable.Arn}/index/ReconciliationQueue"},
    ]
    assert statements["TakeEnrolments"]["Resource"] == {"Fn::GetAtt": ["ReconciliationIntakeQueue", "Arn"]}
    assert statements["PublishCorrectedOutcomes"]["Resource"] == {"Fn::GetAtt": ["OutcomeEventBus", "Arn"]}
    assert statements["ReadQFPayCredentials"]["Resource"] == {
        "Fn::If": ["CreateQFPaySecret", {"Ref": "QFPayCredentialsSecret"}, {"Ref": "ExistingQFPaySecretArn"}]
    }
    assert statements["WriteTraces"]["Resource"] == "*"
    assert statements["UseDataKey"]["Resource"] == {"Fn::GetAtt": ["DataEncryptionKey", "Arn"]}
    # The bus and the secret admit this role by name (everyone else is denied).
    bus = cfn["Resources"]["OutcomeEventBusPolicy"]["Properties"]["Statement"]
    assert {"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]} in bus["Condition"]["ArnNotEquals"][
        "aws:PrincipalArn"
    ]
    secret = cfn["Resources"]["QFPayCredentialsSecretPolicy"]["Properties"]["ResourcePolicy"]["Statement"][0]
    assert {"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]} in secret["Condition"]["ArnNotEquals"][
        "aws:PrincipalArn"
    ]


def test_the_function_runs_every_five_minutes_one_pass_at_a_time(cfn: dict[str, Any]) -> None:
    function = cfn["Resources"]["ReconcileFunction"]["Properties"]
    assert function["ReservedConcurrentExecutions"] == 1
    assert function["TracingConfig"] == {"Mode": "Active"}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "ReconcileFunctionLogGroup"}
    assert function["Environment"]["Variables"]["RECONCILE_INTAKE_QUEUE_URL"] == {
        "Ref": "ReconciliationIntakeQueue"
    }
    rule = cfn["Resources"]["ReconcileScheduleRule"]["Properties"]
    assert rule["ScheduleExpression"] == "rate(5 minutes)"
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["ReconcileFunction", "Arn"]}
    permission = cfn["Resources"]["ReconcileSchedulePermission"]["Properties"]
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ReconcileScheduleRule", "Arn"]}
    assert permission["Principal"] == "events.amazonaws.com"


def test_the_due_list_is_a_sparse_index_of_the_ledger_table(cfn: dict[str, Any]) -> None:
    table = cfn["Resources"]["IdempotencyTable"]["Properties"]
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "ReconciliationQueue"
    assert index["KeySchema"] == [
        {"AttributeName": "queue", "KeyType": "HASH"},
        {"AttributeName": "due_at", "KeyType": "RANGE"},
    ]
    from cancellation.aws import RECONCILIATION_INDEX  # noqa: PLC0415

    assert index["IndexName"] == RECONCILIATION_INDEX


def test_only_first_unknown_and_refund_required_outcomes_are_taken_in(cfn: dict[str, Any]) -> None:
    rule = cfn["Resources"]["ReconciliationIntakeRule"]["Properties"]
    assert rule["EventBusName"] == {"Ref": "OutcomeEventBus"}
    # Corrections (their own detail-type) never come back in.
    assert rule["EventPattern"] == {
        "source": ["qfpay.cancellation"],
        "detail-type": ["Payment Cancellation Outcome"],
        "detail": {"status": ["UNKNOWN", "REFUND_REQUIRED"]},
    }
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["ReconciliationIntakeQueue", "Arn"]}
    policy = cfn["Resources"]["ReconciliationIntakeQueuePolicy"]["Properties"]["PolicyDocument"]
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ReconciliationIntakeRule", "Arn"]}}
    }


def test_the_needs_attention_alarm_counts_the_metric_the_code_publishes(cfn: dict[str, Any]) -> None:
    alarm = cfn["Resources"]["NeedsAttentionAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("QFPayCancellation", "NeedsAttention")
    from cancellation.observability import count, metrics  # noqa: PLC0415

    metrics.clear_metrics()
    count("NeedsAttention")
    published = set(metrics.metric_set)
    metrics.clear_metrics()
    assert published == {alarm["MetricName"]}
    layer = TEMPLATE.parent / "layers" / "cancellation" / "python" / "cancellation"
    assert 'count("NeedsAttention")' in (layer / "reconciliation.py").read_text(encoding="utf-8")
    errors = cfn["Resources"]["ReconcileFunctionErrorsAlarm"]["Properties"]
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReconcileFunction"}}]
