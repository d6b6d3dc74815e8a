"""The whole pipeline, locally: moto (real ASL) + our handlers + the QFPay stand-in + SQS delivery.

Used by the demo (``python -m tests.local.demo``) and by the end-to-end tests, so both exercise
exactly the same path: orders are sent to the queue built from ``template.yaml``, delivered to the
cancel function with SQS-to-Lambda semantics, and their outcomes read back from the bus.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.local import lambda_runtime
from tests.local.aws_stack import Stack, create_stack
from tests.local.moto_server import LocalAws
from tests.local.qfpay_limits import MerchantRateLimits, Outage
from tests.local.qfpay_standin import Merchant, QFPayStandIn, Transaction
from tests.local.sqs_delivery import SqsEventSource

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
CALLER_ASL = REPO / "statemachine" / "examples" / "order_cancellation_caller.asl.json"
# What Lambda mounts at /opt/python from the layer: our handlers import the layer's package.
LAYER_PYTHON = REPO / "layers" / "cancellation" / "python"
if str(LAYER_PYTHON) not in sys.path:
    sys.path.append(str(LAYER_PYTHON))

# Recognisable so that a leak of either into logs, events or queues is easy to find.
LOCAL_APP_CODE = "LOCALAPPCODE0001"
LOCAL_CLIENT_KEY = "LOCALCLIENTKEY0000000000000000001"

# Local runs shorten waits through configuration (copied into each execution's input),
# never by editing the state machine.
LOCAL_ENVIRONMENT = {
    "POLL_FIRST_WAIT_SECONDS": "1",
    "POLL_MAX_WAIT_SECONDS": "2",
    "POLL_BACKOFF_FACTOR": "1.5",
    "POLL_DEADLINE_SECONDS": "30",
    "RETRY_BASE_DELAY_SECONDS": "1",
    "RETRY_MAX_DELAY_SECONDS": "2",
    "QFPAY_READ_TIMEOUT_SECONDS": "2",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
}
LOCAL_VISIBILITY_TIMEOUT = (
    10  # the deployed queue's is 6x the function timeout; retries back off by themselves
)


@dataclass
class Pipeline:
    aws: LocalAws
    qfpay: QFPayStandIn
    stack: Stack
    source: SqsEventSource
    merchant: Merchant
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # by outcome_id

    def send(self, body: str | dict[str, Any]) -> str:
        text = body if isinstance(body, str) else json.dumps(body)
        answer = boto3.client("sqs").send_message(QueueUrl=self.stack.queue_url, MessageBody=text)
        return str(answer["MessageId"])

    def collect_outcomes(self, expected: int, timeout: float) -> list[dict[str, Any]]:
        """Outcomes seen on the bus so far, waiting until ``expected`` distinct orders have one."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            for detail in self.stack.read_outcomes(wait_seconds=0.2):
                seen.append(detail)
                self.outcomes.setdefault(detail["outcome_id"], detail)
            if len(self.outcomes) >= expected or time.monotonic() >= deadline:
                return seen

    def rotate_credentials(self, client_key: str, sign_type: str = "SHA256") -> None:
        """QFPay issues a new key and the secret is updated; the functions still hold the old one
        in their cache, so their next call is answered 1108 and they must re-read the secret."""
        app_code = self.merchant.app_code
        self.merchant = Merchant(app_code=app_code, client_key=client_key, mchid=self.merchant.mchid)
        self.qfpay.set_merchant(self.merchant)
        secret = {"app_code": app_code, "client_key": client_key, "sign_type": sign_type}
        boto3.client("secretsmanager").put_secret_value(
            SecretId=self.stack.secret_id, SecretString=json.dumps(secret)
        )

    def dead_letters(self) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        answer = sqs.receive_message(
            QueueUrl=self.stack.dlq_url, MaxNumberOfMessages=10, AttributeNames=["All"]
        )
        return list(answer.get("Messages", []))

    def run_caller(self, order: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Run the example caller workflow (statemachine/examples) with ``order``: it sends the order
        with a task token and waits for our answer. Returns the finished execution and its history."""
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name=f"order-cancellation-caller-{uuid.uuid4().hex[:8]}",
            definition=caller_definition(self.stack.queue_url),
            roleArn=self.stack.role_arn,
        )["stateMachineArn"]
        started = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"order": order}))
        deadline = time.monotonic() + timeout
        while True:
            execution: dict[str, Any] = sfn.describe_execution(executionArn=started["executionArn"])
            if execution["status"] != "RUNNING":
                history = sfn.get_execution_history(executionArn=started["executionArn"], maxResults=1000)
                execution["history"] = history["events"]
                return execution
            if time.monotonic() > deadline:
                raise TimeoutError(f"the caller workflow is still waiting after {timeout} s")
            time.sleep(0.1)

    def dead_letters_count(self) -> int:
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.dlq_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def executions(self) -> list[dict[str, Any]]:
        sfn = boto3.client("stepfunctions")
        return list(sfn.list_executions(stateMachineArn=self.stack.state_machine_arn)["executions"])


def caller_definition(queue_url: str) -> str:
    """The example caller's ASL with our queue URL substituted (as SAM would)."""
    text = CALLER_ASL.read_text(encoding="utf-8")
    # The value lands inside a JSON string: keep it valid JSON.
    definition = text.replace("${OrderTimeoutQueueUrl}", json.dumps(queue_url)[1:-1])
    if "${" in definition:
        raise ValueError("the caller definition has a substitution this helper does not know")
    return definition


@contextmanager
def local_pipeline(
    transactions: Sequence[Transaction] = (),
    *,
    aws: LocalAws | None = None,
    env_overrides: dict[str, str] | None = None,
    merchant: Merchant | None = None,
    concurrency: int | None = None,
    close_methods: tuple[str, ...] = ("GET", "POST"),
    rate_limits: MerchantRateLimits | None = None,
    outage: Outage | None = None,
    sub_merchants: Sequence[Merchant] = (),
) -> Iterator[Pipeline]:
    """Start everything; on exit stop delivery and the stand-in (and moto, if started here)."""
    # The local Lambda runtime applies each function's environment to this process (its handlers
    # read their settings at import): what one pipeline's functions were given must not reach the
    # next pipeline's, which may not set the variable at all.
    environment_before = dict(os.environ)
    own_aws = aws is None
    local_aws = aws or LocalAws()
    if own_aws:
        local_aws.start()
    merchant = merchant or Merchant(app_code=LOCAL_APP_CODE, client_key=LOCAL_CLIENT_KEY)
    qfpay = QFPayStandIn(
        [merchant],
        transactions=transactions,
        close_methods=close_methods,
        rate_limits=rate_limits,
        outage=outage,
        sub_merchants=sub_merchants,
    ).start()
    source: SqsEventSource | None = None
    try:
        stack = create_stack(
            template_path=TEMPLATE,
            credentials={
                "app_code": merchant.app_code,
                "client_key": merchant.client_key,
                "sign_type": "MD5",
            },
            qfpay_base_url=qfpay.base_url,
            env_overrides={**LOCAL_ENVIRONMENT, **(env_overrides or {})},
            visibility_timeout=LOCAL_VISIBILITY_TIMEOUT,
        )
        source = SqsEventSource(
            boto3.client("sqs"),
            boto3.client("lambda"),
            stack.queue_url,
            stack.cancel_function_name,
            batch_size=stack.batch_size,
            report_batch_item_failures="ReportBatchItemFailures" in stack.function_response_types,
        )
        source.start(concurrency=concurrency or stack.maximum_concurrency or 2)
        yield Pipeline(local_aws, qfpay, stack, source, merchant)
    finally:
        if source is not None:
            source.stop()
        qfpay.stop()
        lambda_runtime.clear_invocations()
        if own_aws:
            local_aws.stop()
        for name in set(os.environ) - set(environment_before):
            del os.environ[name]
        os.environ.update(environment_before)
