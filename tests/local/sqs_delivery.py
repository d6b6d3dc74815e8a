"""SQS -> Lambda delivery with the semantics of an AWS event source mapping.

Why not moto's own: when a queue has an event source mapping, moto's ``Queue.add_message``
invokes the function inside the ``SendMessage`` request, *one message per invocation*,
with fixed fake attributes (ApproximateReceiveCount "1", a constant SentTimestamp and MD5),
no message attributes, ignores ``batchItemFailures`` and, on a function error, makes the
messages visible again at once instead of after the visibility timeout. So do not create
event source mappings in moto for a queue served by this module (both would consume it).

What this poller does, as Lambda's SQS poller does:

* receives up to ``batch_size`` messages (several ``ReceiveMessage`` calls of up to 10
  each when ``batch_size`` > 10) with all system and message attributes, using the queue's
  own visibility timeout;
* builds the exact Lambda SQS event (``Records`` of ``messageId``, ``receiptHandle``,
  ``body``, ``attributes``, ``messageAttributes``, ``md5OfBody``, ``eventSource``,
  ``eventSourceARN``, ``awsRegion``) and invokes the function synchronously;
* on a function error (``FunctionError`` set) deletes nothing: the messages come back after
  the visibility timeout with ``ApproximateReceiveCount`` incremented;
* on success deletes every message, except, with ``report_batch_item_failures``, those
  listed in ``batchItemFailures``. A response Lambda cannot use (not JSON, not an object,
  ``batchItemFailures`` not a list, an item without a non-empty ``itemIdentifier`` naming a
  message of the batch) fails the whole batch: nothing is deleted.

Redrive to the dead-letter queue is SQS's job and moto does it: a ``ReceiveMessage`` that
finds a message already received ``maxReceiveCount`` times moves it to the DLQ of the
queue's ``RedrivePolicy`` instead of returning it (checked by ``tests/local/tests/test_sqs_delivery.py``).

Concurrency: ``run(..., concurrency=n)`` runs ``n`` pollers, like
``ScalingConfig.MaximumConcurrency``; each receives its own batch and invokes the function
in parallel. ``ReceiveMessage`` calls of one ``SqsEventSource`` are serialised, because
moto's receive is not atomic across server threads (two concurrent receives could get the
same message, which real SQS would not do within the visibility timeout).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DeliveryResult", "SqsEventSource", "build_record"]

_MAX_RECEIVE = 10  # SQS's limit per ReceiveMessage call
_DELETE_CHUNK = 10  # SQS's limit per DeleteMessageBatch call


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    """Counts of one poll, or a running total (results add up with ``+``)."""

    received: int = 0
    """Messages handed to the function."""
    deleted: int = 0
    """Messages deleted from the queue (processed)."""
    failed: int = 0
    """Messages left on the queue: item failures, failed batches and function errors."""
    function_errors: int = 0
    """Invocations that ended in a function error (``FunctionError`` set)."""
    invocations: int = 0
    """Invocations made."""
    invalid_responses: int = 0
    """Successful invocations whose ``batchItemFailures`` answer failed the whole batch."""

    def __add__(self, other: DeliveryResult) -> DeliveryResult:
        return DeliveryResult(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        )


def build_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One Lambda SQS event record from a ``ReceiveMessage`` message (boto3's shape)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    # Lambda's shape: camelCase keys, binary values base64-encoded, empty list values.
    attribute: dict[str, Any] = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = _b64(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues", []))
    attribute["binaryListValues"] = [_b64(v) for v in value.get("BinaryListValues", [])]
    attribute["dataType"] = value["DataType"]
    return attribute


def _b64(value: bytes | str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def _failed_ids(payload: bytes, batch_ids: set[str]) -> set[str] | None:
    """The message ids to keep, from a ``batchItemFailures`` answer; ``None``: all of them."""
    try:
        response = json.loads(payload) if payload else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    keep: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in batch_ids:
            return None  # empty, null, wrongly named or unknown: the whole batch failed
        keep.add(identifier)
    return keep


class SqsEventSource:
    """An event source mapping from one SQS queue to one Lambda function."""

    def __init__(  # noqa: PLR0917 - the agreed positional signature
        self,
        sqs_client: Any,
        lambda_client: Any,
        queue_url: str,
        function_name: str,
        batch_size: int = 10,
        report_batch_item_failures: bool = True,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        self.sqs = sqs_client
        self.lambda_client = lambda_client
        self.queue_url = queue_url
        self.function_name = function_name
        self.batch_size = batch_size
        self.report_batch_item_failures = report_batch_item_failures
        self.poll_interval = 0.05
        """Seconds a poller waits after finding the queue empty."""
        attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]
        self.queue_arn: str = attributes["QueueArn"]
        self.region: str = self.queue_arn.split(":")[3]
        self._receive_lock = threading.Lock()
        self._total_lock = threading.Lock()
        self._total = DeliveryResult()
        self._background: list[threading.Thread] = []
        self._background_stop = threading.Event()
        self._errors: list[BaseException] = []

    @property
    def total(self) -> DeliveryResult:
        """Everything delivered by this event source so far."""
        with self._total_lock:
            return self._total

    # -- one poll --------------------------------------------------------------------
    def poll_once(self) -> DeliveryResult:
        """Receive one batch, invoke the function with it and settle the messages."""
        messages = self._receive()
        if not messages:
            return DeliveryResult()
        event = {"Records": [build_record(m, self.queue_arn, self.region) for m in messages]}
        response = self.lambda_client.invoke(
            FunctionName=self.function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(event).encode("utf-8"),
        )
        payload: bytes = response["Payload"].read()
        received = len(messages)
        if response.get("FunctionError"):
            result = DeliveryResult(received=received, failed=received, function_errors=1, invocations=1)
        else:
            keep: set[str] | None = set()
            if self.report_batch_item_failures:
                keep = _failed_ids(payload, {m["MessageId"] for m in messages})
            if keep is None:
                result = DeliveryResult(
                    received=received, failed=received, invocations=1, invalid_responses=1
                )
            else:
                done = [m for m in messages if m["MessageId"] not in keep]
                deleted = self._delete(done)
                result = DeliveryResult(
                    received=received,
                    deleted=deleted,
                    failed=received - deleted,
                    invocations=1,
                )
        with self._total_lock:
            self._total += result
        return result

    def _receive(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        with self._receive_lock:
            while len(messages) < self.batch_size:
                answer = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(_MAX_RECEIVE, self.batch_size - len(messages)),
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                    WaitTimeSeconds=0,
                )
                batch = answer.get("Messages", [])
                messages.extend(batch)
                if not batch:
                    break
        return messages

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        deleted = 0
        for start in range(0, len(messages), _DELETE_CHUNK):
            chunk = messages[start : start + _DELETE_CHUNK]
            answer = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            deleted += len(answer.get("Successful", []))
        return deleted

    # -- keep polling ----------------------------------------------------------------
    def run(self, until: Callable[[], bool], timeout: float, concurrency: int = 1) -> DeliveryResult:
        """Poll with ``concurrency`` pollers until ``until()`` is true.

        Returns what this run delivered. Raises ``TimeoutError`` when ``until()`` is still
        false after ``timeout`` seconds, and re-raises the first error of a poller.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        before = self.total
        stop = threading.Event()
        errors: list[BaseException] = []
        pollers = [
            threading.Thread(
                target=self._poll_loop,
                args=(stop, errors),
                name=f"sqs-poller-{self.function_name}-{i}",
                daemon=True,
            )
            for i in range(concurrency)
        ]
        deadline = time.monotonic() + timeout
        finished = until()
        if not finished:
            for poller in pollers:
                poller.start()
            while not (finished := until()) and not errors and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for poller in pollers:
                poller.join()
        if errors:
            raise errors[0]
        delivered = _subtract(self.total, before)
        if not finished:
            raise TimeoutError(
                f"condition not met after {timeout} s of polling {self.queue_url} ({delivered})"
            )
        return delivered

    def start(self, concurrency: int = 1) -> None:
        """Poll in the background (for tests that watch something else meanwhile)."""
        if self._background:
            raise RuntimeError("already polling in the background")
        self._background_stop.clear()
        self._errors = []
        self._background = [
            threading.Thread(
                target=self._poll_loop,
                args=(self._background_stop, self._errors),
                name=f"sqs-poller-{self.function_name}-bg{i}",
                daemon=True,
            )
            for i in range(concurrency)
        ]
        for poller in self._background:
            poller.start()

    def stop(self) -> DeliveryResult:
        """Stop background polling; re-raises the first poller error. Returns the total."""
        self._background_stop.set()
        for poller in self._background:
            poller.join()
        self._background = []
        if self._errors:
            raise self._errors[0]
        return self.total

    def _poll_loop(self, stop: threading.Event, errors: list[BaseException]) -> None:
        while not stop.is_set():
            try:
                result = self.poll_once()
            except Exception as exc:
                errors.append(exc)
                stop.set()
                return
            if result.received == 0:
                stop.wait(self.poll_interval)


def _subtract(after: DeliveryResult, before: DeliveryResult) -> DeliveryResult:
    return DeliveryResult(
        **{f.name: getattr(after, f.name) - getattr(before, f.name) for f in dataclasses.fields(after)}
    )
