"""SqsEventSource delivers SQS messages to a Lambda function as Lambda's poller does."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

# The handlers import Powertools' batch utilities on their cold start; importing them here
# first keeps that slow import out of the 1 s visibility windows the tests measure.
from aws_lambda_powertools.utilities import batch as _warm_batch  # noqa: F401
from aws_lambda_powertools.utilities.parser.models import SqsModel

from tests.local import lambda_runtime
from tests.local.moto_server import LocalAws
from tests.local.sqs_delivery import DeliveryResult, SqsEventSource, _failed_ids

VISIBILITY = 1  # seconds
MAX_RECEIVE = 2

# Processes records with Powertools' BatchProcessor (so its SQSRecord data class must accept
# our records) and writes what it read from each record, through SQSRecord, to SEEN_PATH.
POWERTOOLS_HANDLER = """
import json
import os

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record):
    attributes = record.message_attributes
    attribute = attributes["kind"] if "kind" in attributes else None  # [] wraps, .get does not
    seen = {
        "id": record.message_id,
        "body": record.body,
        "receive_count": int(record.attributes.approximate_receive_count),
        "kind": attribute.string_value if attribute else None,
        "queue_url": record.queue_url,
        "region": record.aws_region,
        "md5": record.md5_of_body,
    }
    with open(os.environ["SEEN_PATH"], "a") as seen_file:
        seen_file.write(json.dumps(seen) + "\\n")
    if record.body.startswith("fail"):
        raise ValueError(f"cannot process {record.body}")


def lambda_handler(event, context):
    if any(r["body"] == "crash" for r in event["Records"]):
        raise RuntimeError("the whole batch crashed")
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
"""

# Answers whatever the first record's body asks it to ({"respond": ...}).
SCRIPTED_HANDLER = """
import json
import time


def lambda_handler(event, context):
    order = json.loads(event["Records"][0]["body"])
    time.sleep(order.get("sleep", 0))
    respond = order.get("respond")
    if respond == "fail-all":
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    return respond
"""


@pytest.fixture
def aws(local_aws: LocalAws) -> LocalAws:
    """conftest's session moto server, reset before and after each test."""
    return local_aws


@pytest.fixture
def sqs(aws: LocalAws) -> Any:
    return boto3.client("sqs")


@pytest.fixture
def queues(sqs: Any) -> dict[str, str]:
    dlq = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName="orders",
        Attributes={
            "VisibilityTimeout": str(VISIBILITY),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE}),
        },
    )["QueueUrl"]
    return {"queue": queue, "dlq": dlq}


def deploy(aws: LocalAws, tmp_path: Path, name: str, source: str) -> Path:
    code_dir = tmp_path / name
    code_dir.mkdir()
    (code_dir / "app.py").write_text(textwrap.dedent(source))
    seen_path = tmp_path / f"{name}-seen.jsonl"
    aws.create_function(name, code_dir, "app.lambda_handler", {"SEEN_PATH": str(seen_path)})
    return seen_path


@pytest.fixture
def powertools_fn(aws: LocalAws, tmp_path: Path) -> Path:
    """Deploys the Powertools handler; returns the file it writes what it saw to."""
    return deploy(aws, tmp_path, "cancel-like", POWERTOOLS_HANDLER)


@pytest.fixture
def scripted_fn(aws: LocalAws, tmp_path: Path) -> str:
    deploy(aws, tmp_path, "scripted", SCRIPTED_HANDLER)
    return "scripted"


def source_for(sqs: Any, queue_url: str, function_name: str, **options: Any) -> SqsEventSource:
    return SqsEventSource(sqs, boto3.client("lambda"), queue_url, function_name, **options)


def send(sqs: Any, queue_url: str, *bodies: str) -> list[str]:
    return [sqs.send_message(QueueUrl=queue_url, MessageBody=b)["MessageId"] for b in bodies]


def seen(seen_path: Path) -> list[dict[str, Any]]:
    if not seen_path.exists():
        return []
    return [json.loads(line) for line in seen_path.read_text().splitlines()]


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight)."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def batch_sizes(function_name: str) -> list[int]:
    return [len(i.payload["Records"]) for i in lambda_runtime.invocations(function_name)]


def test_records_have_the_lambda_sqs_event_shape(
    aws: LocalAws, sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    body = json.dumps({"out_trade_no": "T-1", "txamt": 100})
    message_id = sqs.send_message(
        QueueUrl=queues["queue"],
        MessageBody=body,
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "order-timeout"},
            "attempt": {"DataType": "Number", "StringValue": "3"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01qf"},
        },
    )["MessageId"]

    result = source_for(sqs, queues["queue"], "cancel-like").poll_once()

    assert result == DeliveryResult(received=1, deleted=1, invocations=1)
    [invocation] = lambda_runtime.invocations("cancel-like")
    [record] = invocation.payload["Records"]
    queue_arn = f"arn:aws:sqs:{aws.region}:{aws.account_id}:orders"
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["messageId"] == message_id
    assert record["receiptHandle"]
    assert record["body"] == body
    assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()  # noqa: S324
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queue_arn
    assert record["awsRegion"] == aws.region
    attributes = record["attributes"]
    assert {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    } <= set(attributes)
    assert attributes["ApproximateReceiveCount"] == "1"
    assert attributes["SentTimestamp"].isdigit()
    assert abs(int(attributes["SentTimestamp"]) / 1000 - time.time()) < 60
    assert record["messageAttributes"] == {
        "kind": {
            "stringValue": "order-timeout",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "attempt": {
            "stringValue": "3",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number",
        },
        "blob": {
            "binaryValue": base64.b64encode(b"\x00\x01qf").decode(),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    # Powertools' parser model validates the whole event...
    parsed = SqsModel.model_validate(invocation.payload)
    assert parsed.Records[0].messageId == message_id
    # ...and its SQSRecord data class read every field inside the function.
    [read] = seen(powertools_fn)
    assert read["id"] == message_id
    assert read["receive_count"] == 1
    assert read["kind"] == "order-timeout"
    assert read["queue_url"] == f"https://sqs.{aws.region}.amazonaws.com/{aws.account_id}/orders"
    assert read["region"] == aws.region
    assert read["md5"] == record["md5OfBody"]
    assert queue_counts(sqs, queues["queue"]) == (0, 0)


def test_batch_size_is_respected(sqs: Any, queues: dict[str, str], powertools_fn: Path) -> None:
    send(sqs, queues["queue"], *(f"ok-{i}" for i in range(7)))
    source = source_for(sqs, queues["queue"], "cancel-like", batch_size=3)

    delivered = source.run(until=lambda: len(seen(powertools_fn)) == 7, timeout=10)

    assert batch_sizes("cancel-like") == [3, 3, 1]
    assert delivered == DeliveryResult(received=7, deleted=7, invocations=3)
    assert source.total == delivered
    assert queue_counts(sqs, queues["queue"]) == (0, 0)


def test_a_batch_size_above_ten_takes_several_receives(
    sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    send(sqs, queues["queue"], *(f"ok-{i}" for i in range(15)))

    result = source_for(sqs, queues["queue"], "cancel-like", batch_size=12).poll_once()

    assert result == DeliveryResult(received=12, deleted=12, invocations=1)
    assert batch_sizes("cancel-like") == [12]
    assert queue_counts(sqs, queues["queue"]) == (3, 0)


def test_a_partial_failure_deletes_only_the_successes_and_the_failure_comes_back(
    sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    ok_1, failing, ok_2 = send(sqs, queues["queue"], "ok-1", "fail-1", "ok-2")
    source = source_for(sqs, queues["queue"], "cancel-like")

    first = source.poll_once()

    assert first == DeliveryResult(received=3, deleted=2, failed=1, invocations=1)
    assert queue_counts(sqs, queues["queue"]) == (0, 1)  # only the failure, in flight
    assert source.poll_once() == DeliveryResult()  # invisible until the timeout passes

    time.sleep(VISIBILITY + 0.2)
    second = source.poll_once()

    assert second.received == 1
    [again] = lambda_runtime.invocations("cancel-like")[-1].payload["Records"]
    assert again["messageId"] == failing
    assert again["attributes"]["ApproximateReceiveCount"] == "2"
    assert [s["receive_count"] for s in seen(powertools_fn) if s["id"] == failing] == [1, 2]
    assert {s["id"] for s in seen(powertools_fn)} == {ok_1, failing, ok_2}


def test_after_max_receive_count_failures_the_message_lands_in_the_dlq(
    sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    [failing] = send(sqs, queues["queue"], "fail-forever")
    source = source_for(sqs, queues["queue"], "cancel-like")

    def in_dlq() -> bool:
        return queue_counts(sqs, queues["dlq"])[0] == 1

    delivered = source.run(until=in_dlq, timeout=MAX_RECEIVE * VISIBILITY + 8)

    # Powertools raises when every record of a batch failed: each try is a function error.
    assert delivered.received == MAX_RECEIVE
    assert delivered.function_errors == MAX_RECEIVE
    assert delivered.deleted == 0
    assert [s["receive_count"] for s in seen(powertools_fn)] == list(range(1, MAX_RECEIVE + 1))
    [dead] = sqs.receive_message(QueueUrl=queues["dlq"], MessageSystemAttributeNames=["All"])["Messages"]
    assert dead["MessageId"] == failing
    assert dead["Body"] == "fail-forever"
    assert queue_counts(sqs, queues["queue"]) == (0, 0)


def test_a_function_error_leaves_the_whole_batch(
    sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    ids = send(sqs, queues["queue"], "ok-1", "crash", "ok-2")
    source = source_for(sqs, queues["queue"], "cancel-like")

    result = source.poll_once()

    assert result == DeliveryResult(received=3, failed=3, function_errors=1, invocations=1)
    assert lambda_runtime.invocations("cancel-like")[-1].error == "RuntimeError"
    assert queue_counts(sqs, queues["queue"]) == (0, 3)

    time.sleep(VISIBILITY + 0.2)
    source.poll_once()

    records = lambda_runtime.invocations("cancel-like")[-1].payload["Records"]
    assert sorted(r["messageId"] for r in records) == sorted(ids)
    assert {r["attributes"]["ApproximateReceiveCount"] for r in records} == {"2"}


@pytest.mark.parametrize(
    "respond",
    [
        {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-this-batch"}]},
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"messageId": "wrong key name"}]},
        {"batchItemFailures": "not a list"},
        "not an object",
    ],
)
def test_an_answer_lambda_cannot_use_fails_the_whole_batch(
    sqs: Any, queues: dict[str, str], scripted_fn: str, respond: Any
) -> None:
    send(sqs, queues["queue"], json.dumps({"respond": respond}), json.dumps({}))

    result = source_for(sqs, queues["queue"], scripted_fn).poll_once()

    assert result == DeliveryResult(received=2, failed=2, invocations=1, invalid_responses=1)
    assert queue_counts(sqs, queues["queue"]) == (0, 2)


@pytest.mark.parametrize(
    "respond",
    [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, {"status": "done"}],
)
def test_an_empty_answer_is_a_complete_success(
    sqs: Any, queues: dict[str, str], scripted_fn: str, respond: Any
) -> None:
    send(sqs, queues["queue"], json.dumps({"respond": respond}), json.dumps({}))

    result = source_for(sqs, queues["queue"], scripted_fn).poll_once()

    assert result == DeliveryResult(received=2, deleted=2, invocations=1)
    assert queue_counts(sqs, queues["queue"]) == (0, 0)


def test_without_report_batch_item_failures_the_answer_is_ignored(
    sqs: Any, queues: dict[str, str], scripted_fn: str
) -> None:
    send(sqs, queues["queue"], json.dumps({"respond": "fail-all"}), json.dumps({}))
    source = source_for(sqs, queues["queue"], scripted_fn, report_batch_item_failures=False)

    assert source.poll_once() == DeliveryResult(received=2, deleted=2, invocations=1)
    assert queue_counts(sqs, queues["queue"]) == (0, 0)


def test_concurrent_pollers_invoke_in_parallel_and_deliver_each_message_once(
    sqs: Any, queues: dict[str, str], scripted_fn: str
) -> None:
    ids = send(sqs, queues["queue"], *(json.dumps({"sleep": 0.3, "n": n}) for n in range(6)))
    source = source_for(sqs, queues["queue"], scripted_fn, batch_size=1)

    delivered = source.run(
        until=lambda: queue_counts(sqs, queues["queue"]) == (0, 0), timeout=15, concurrency=3
    )

    assert delivered == DeliveryResult(received=6, deleted=6, invocations=6)
    calls = lambda_runtime.invocations(scripted_fn)
    assert sorted(c.payload["Records"][0]["messageId"] for c in calls) == sorted(ids)
    overlapping = max(
        sum(
            1
            for other in calls
            if other.started_at < call.started_at + call.duration
            and call.started_at < other.started_at + other.duration
        )
        for call in calls
    )
    assert overlapping >= 2


def test_run_gives_up_after_its_timeout(sqs: Any, queues: dict[str, str], scripted_fn: str) -> None:
    source = source_for(sqs, queues["queue"], scripted_fn)
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        source.run(until=lambda: False, timeout=0.3)

    assert time.monotonic() - started < 3


def test_background_polling_delivers_until_stopped(
    sqs: Any, queues: dict[str, str], powertools_fn: Path
) -> None:
    source = source_for(sqs, queues["queue"], "cancel-like")
    source.start()
    try:
        send(sqs, queues["queue"], "ok-1", "ok-2")
        deadline = time.monotonic() + 10
        while len(seen(powertools_fn)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        total = source.stop()

    assert total.deleted == 2


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", set()),
        (b"null", set()),
        (b"{not json", None),
        (b"[]", None),
        (b'{"batchItemFailures": [{"itemIdentifier": "a"}]}', {"a"}),
        (b'{"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "z"}]}', None),
    ],
)
def test_reading_a_batch_item_failures_answer(payload: bytes, expected: set[str] | None) -> None:
    assert _failed_ids(payload, {"a", "b"}) == expected
