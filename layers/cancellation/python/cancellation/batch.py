"""SQS partial batch responses: the messages of one batch run side by side on a bounded pool, and
those whose handling raised are reported back to SQS (``batchItemFailures``) to be received again.

Powertools' batch utility does the same, but importing it loads its data classes for every event
source and asyncio, about a tenth of this function's cold start; this is all we use of it.
"""

from __future__ import annotations

import contextvars
import math
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, NamedTuple


class NotAQueueBatch(ValueError):
    """The invocation is not an SQS batch: a wiring error, so the invocation fails as a whole."""


class QueueMessage(NamedTuple):
    """What we read of one SQS record."""

    message_id: str
    body: str
    receive_count: int  # ApproximateReceiveCount: 1 on the first delivery
    queue_arn: str
    receipt_handle: str
    # When the order's first attempt began (epoch seconds) and how often it was sent back to the
    # queue since (message attributes of a requeued message; else the message's SentTimestamp).
    first_attempt_at: float | None = None
    requeues: int = 0
    # The id of the message this one is a copy of, when the cancel function sent it back itself.
    first_message_id: str | None = None

    @property
    def key_id(self) -> str:
        """The message's id for what belongs to it alone (QFPay refusing its request): a copy
        sent back to the queue is still the message it copies."""
        return self.first_message_id or self.message_id

    @property
    def sent_back(self) -> bool:
        return self.first_message_id is not None

    @classmethod
    def from_record(cls, record: Any) -> QueueMessage:
        if not isinstance(record, Mapping) or not isinstance(record.get("messageId"), str):
            raise NotAQueueBatch("an SQS record needs a messageId")
        attributes = record.get("attributes")
        count = attributes.get("ApproximateReceiveCount") if isinstance(attributes, Mapping) else None
        sent = attributes.get("SentTimestamp") if isinstance(attributes, Mapping) else None
        first = _number_attribute(record, FIRST_ATTEMPT_AT)
        if first is None and isinstance(sent, str) and sent.isdigit():
            first = int(sent) / 1000
        requeues = _number_attribute(record, REQUEUES)
        return cls(
            message_id=record["messageId"],
            body=str(record.get("body") or ""),
            receive_count=int(count) if isinstance(count, str) and count.isdigit() else 1,
            queue_arn=str(record.get("eventSourceARN") or ""),
            receipt_handle=str(record.get("receiptHandle") or ""),
            first_attempt_at=first,
            requeues=int(requeues) if requeues is not None and 0 <= requeues < 1e6 else 0,
            first_message_id=_id_attribute(record, FIRST_MESSAGE_ID),
        )


# Message attributes of a message the cancel function sent back to the queue itself.
FIRST_ATTEMPT_AT = "first_attempt_at"
REQUEUES = "requeues"
FIRST_MESSAGE_ID = "first_message_id"


def _number_attribute(record: Mapping[str, Any], name: str) -> float | None:
    attributes = record.get("messageAttributes")
    value = attributes.get(name) if isinstance(attributes, Mapping) else None
    text = value.get("stringValue") if isinstance(value, Mapping) else None
    try:
        number = float(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _id_attribute(record: Mapping[str, Any], name: str) -> str | None:
    attributes = record.get("messageAttributes")
    value = attributes.get(name) if isinstance(attributes, Mapping) else None
    text = value.get("stringValue") if isinstance(value, Mapping) else None
    # An SQS message id is a UUID; anything else is not one of ours and is ignored.
    return text if isinstance(text, str) and _MESSAGE_ID.fullmatch(text) else None


_MESSAGE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")


def queue_messages(event: Any) -> list[QueueMessage]:
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        raise NotAQueueBatch("the event has no Records list: is the function subscribed to SQS?")
    return [QueueMessage.from_record(record) for record in records]


def process_batch(
    messages: list[QueueMessage], handle: Callable[[QueueMessage], object], pool: Executor
) -> dict[str, list[dict[str, str]]]:
    """Runs ``handle`` for every message on ``pool`` (as wide as the batch may run at once) and
    answers the partial batch response. Every failed message is listed, even when all failed:
    each was already delayed or logged by ``handle``, and failing the invocation would only add a
    Lambda error that says nothing more."""
    running = [(m, pool.submit(contextvars.copy_context().run, handle, m)) for m in messages]
    return {
        "batchItemFailures": [
            {"itemIdentifier": message.message_id}
            for message, done in running
            if done.exception() is not None
        ]
    }
