"""Dead-letter function: order messages the cancel function could not process (the order queue's
DLQ) -> the order's recorded outcome, or an UNKNOWN of the message's own with the reason, and an
answer to a task-token caller. Asks QFPay only the Enquiry that names a payment given by
out_trade_no; never sends a cancel."""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from cancellation.deadletter import DeadLetterService
from cancellation.observability import logger, metrics, traced
from cancellation.settings import call_tracing, dead_letter_settings
from cancellation.wiring import dead_letter_service

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

SETTINGS = dead_letter_settings(os.environ)  # a bad configuration stops the function at start


@cache
def service() -> DeadLetterService:
    """Built by the first invocation, then reused."""
    return dead_letter_service(SETTINGS)


@logger.inject_lambda_context
@traced(call_tracing(os.environ))
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return service().handle(event, context)
