"""A caller's task token is kept only where the caller put it (its message, in the encrypted queue):
the decision ledger and the loop's execution history hold its hash at most, and the caller still
hears the loop's outcome (the cancel function with moto, the real ASL and the QFPay stand-in)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import boto3
import pytest

from tests.conftest import PipelineFactory, wait_for
from tests.e2e.test_secrets_never_leak import recorded_logs  # noqa: F401 - the fixture, shared
from tests.integration.test_cancel_integration import order_and_txn

TOKEN = "CALLER-TOKEN-7f1c0d9e2b4a4c7e9d3b5a1f6e8c2d40"


def everything_at_rest(table_name: str, state_machine_arn: str) -> list[str]:
    """The ledger's items and every execution's description and full history, as text."""
    ddb, sfn = boto3.client("dynamodb"), boto3.client("stepfunctions")
    texts = [
        json.dumps(item)
        for page in ddb.get_paginator("scan").paginate(TableName=table_name)
        for item in page["Items"]
    ]
    for summary in sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]:
        arn = summary["executionArn"]
        texts.append(json.dumps(sfn.describe_execution(executionArn=arn), default=str))
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
            texts += [json.dumps(event, default=str) for event in page["events"]]
    return texts


@pytest.mark.e2e
def test_the_loop_and_the_ledger_never_hold_the_raw_token(
    pipeline_factory: PipelineFactory,
    monkeypatch: pytest.MonkeyPatch,
    recorded_logs: Callable[[], list[str]],  # noqa: F811 - the fixture imported above
) -> None:
    from cancellation.aws import CallerNotifier  # noqa: PLC0415 - the class the handler uses
    from cancellation.models import OutcomeDetail  # noqa: PLC0415

    answered: list[tuple[str, str]] = []
    notify = CallerNotifier.notify

    def spy_notify(self: CallerNotifier, task_token: str, detail: OutcomeDetail) -> bool:
        answered.append((task_token, detail["status"]))
        return notify(self, task_token, detail)

    monkeypatch.setattr(CallerNotifier, "notify", spy_notify)  # the handler runs in this process
    order, txn = order_and_txn(41, in_progress_enquiries=2)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send({**order, "task_token": TOKEN})
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        assert wait_for(lambda: all(e["status"] != "RUNNING" for e in pipeline.executions()), timeout=30)
        at_rest = everything_at_rest(pipeline.stack.table_name, pipeline.stack.state_machine_arn)
        # The caller hears the loop's outcome, from the message that carried its token.
        heard = wait_for(lambda: answered == [(TOKEN, "CANCELLED")], timeout=40)
    assert [(o["status"], o["decided_by"]) for o in outcomes] == [("CANCELLED", "poll-loop")]
    assert any('"Type": "ExecutionStarted"' in t or "ExecutionStarted" in t for t in at_rest), "history read"
    leaked = [text[:200] for text in at_rest if TOKEN in text]
    assert not leaked, leaked
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert any(digest in text for text in at_rest), "the caller's record is keyed by the token's hash"
    assert heard, answered
    logs = recorded_logs()
    assert not [line[:200] for line in logs if TOKEN in line]
    assert any(digest in line for line in logs), "logs name the caller by the token's hash"
