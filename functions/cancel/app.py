"""Cancel function: order-timeout messages from SQS -> QFPay reversal or close -> an outcome, or a
hand-off to the enquiry loop. Partial batch failures go back to SQS."""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from cancellation.observability import logger, metrics, traced
from cancellation.service import CancelService
from cancellation.settings import call_tracing, cancel_settings
from cancellation.wiring import cancel_service

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

SETTINGS = cancel_settings(os.environ)  # a bad configuration stops the function at start


@cache
def service() -> CancelService:
    """Built by the first invocation, then reused: its AWS clients cost more than every import."""
    return cancel_service(SETTINGS)


@logger.inject_lambda_context
@traced(call_tracing(os.environ))
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return service().handle(event, context)
