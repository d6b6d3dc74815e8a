"""Partial batch responses: what SQS is told to deliver again, and what a wiring error looks like."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cancellation.batch import NotAQueueBatch, QueueMessage, process_batch, queue_messages

QUEUE_ARN = "arn:aws:sqs:ap-east-1:123456789012:order-timeouts"


def record(message_id: str, body: str = "{}", receive_count: str | None = "1") -> dict[str, Any]:
    attributes = {"SentTimestamp": "1795600000000"}
    if receive_count is not None:
        attributes["ApproximateReceiveCount"] = receive_count
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": attributes,
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "ap-east-1",
    }


def test_a_record_is_read_as_the_fields_the_service_uses() -> None:
    (message,) = queue_messages({"Records": [record("m-1", '{"a": 1}', receive_count="3")]})
    assert message == QueueMessage("m-1", '{"a": 1}', 3, QUEUE_ARN, "handle-m-1", 1_795_600_000.0, 0)


def test_a_message_sent_back_by_the_service_keeps_its_first_attempts_time() -> None:
    requeued = record("m-1")
    requeued["messageAttributes"] = {
        "first_attempt_at": {"stringValue": "1795500000.5", "dataType": "Number"},
        "requeues": {"stringValue": "4", "dataType": "Number"},
    }
    (message,) = queue_messages({"Records": [requeued]})
    assert (message.first_attempt_at, message.requeues) == (1_795_500_000.5, 4)
    assert (message.key_id, message.sent_back) == ("m-1", False)


def test_a_message_sent_back_by_the_service_is_still_the_message_it_copies() -> None:
    copy = record("m-2")
    copy["messageAttributes"] = {"first_message_id": {"stringValue": "m-1", "dataType": "String"}}
    (message,) = queue_messages({"Records": [copy]})
    assert (message.message_id, message.key_id, message.sent_back) == ("m-2", "m-1", True)


@pytest.mark.parametrize("claimed", ["", "m-1|message=x", "x" * 101, "m 1"])
def test_a_first_message_id_that_is_no_message_id_is_ignored(claimed: str) -> None:
    copy = record("m-2")
    copy["messageAttributes"] = {"first_message_id": {"stringValue": claimed, "dataType": "String"}}
    (message,) = queue_messages({"Records": [copy]})
    assert (message.key_id, message.sent_back) == ("m-2", False)


@pytest.mark.parametrize("count", [None, "", "two", "-1"])
def test_an_unreadable_receive_count_counts_as_a_first_delivery(count: str | None) -> None:
    (message,) = queue_messages({"Records": [record("m-1", receive_count=count)]})
    assert message.receive_count == 1


@pytest.mark.parametrize(
    "event",
    [{}, {"Records": None}, {"Records": "x"}, [], "text", {"Records": [{"body": "no id"}]}, {"Records": [7]}],
)
def test_an_event_that_is_not_an_sqs_batch_fails_the_invocation_clearly(event: Any) -> None:
    with pytest.raises(NotAQueueBatch, match=r"SQS|messageId"):
        queue_messages(event)


def test_only_the_messages_that_raised_are_delivered_again() -> None:
    def handle(message: QueueMessage) -> str:
        if message.body == "bad":
            raise RuntimeError("could not")
        return "CANCELLED"

    messages = queue_messages({"Records": [record("m-1"), record("m-2", "bad"), record("m-3")]})
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert process_batch(messages, handle, pool) == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}


def test_a_batch_where_every_message_failed_lists_them_all_instead_of_failing_the_invocation() -> None:
    def handle(message: QueueMessage) -> str:
        raise RuntimeError(f"no {message.message_id}")

    messages = queue_messages({"Records": [record("m-1"), record("m-2")]})
    with ThreadPoolExecutor(max_workers=2) as pool:
        response = process_batch(messages, handle, pool)
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}


def test_an_empty_batch_has_no_failures() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert process_batch(queue_messages({"Records": []}), lambda m: None, pool) == {
            "batchItemFailures": []
        }


def test_messages_run_side_by_side_up_to_the_pool_width_and_no_further() -> None:
    width, lock = 4, threading.Lock()
    running = peak = 0
    all_in = threading.Barrier(width)

    def handle(message: QueueMessage) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        if int(message.message_id) < width:
            all_in.wait(timeout=5)  # the first `width` must all be running at once
        with lock:
            running -= 1

    messages = queue_messages({"Records": [record(str(n)) for n in range(10)]})
    with ThreadPoolExecutor(max_workers=width) as pool:
        assert process_batch(messages, handle, pool) == {"batchItemFailures": []}
    assert peak == width
