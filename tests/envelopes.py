"""How other services wrap an order-timeout message: an EventBridge event and an SNS notification
(raw delivery off), shaped as AWS delivers them. Shared by the tests that unwrap them."""

from __future__ import annotations

import uuid
from typing import Any

SNS_TOPIC = "arn:aws:sns:ap-east-1:123456789012:order-timeouts"


def eventbridge(detail: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Order Timed Out",
        "source": "shop.checkout",
        "account": "123456789012",
        "time": "2026-11-26T10:06:00Z",
        "region": "ap-east-1",
        "resources": [],
        "detail": detail,
    }


def sns(message: Any) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": SNS_TOPIC,
        "Message": message,
        "Timestamp": "2026-11-26T10:06:01.000Z",
        "SignatureVersion": "1",
    }
