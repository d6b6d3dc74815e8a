"""Poll function: one turn of the wait-and-poll loop (a Step Functions task): asks QFPay's
Transaction Enquiry and answers a final outcome or the next wait."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cancellation.observability import logger, metrics, traced
from cancellation.poll import EnquiryStep
from cancellation.settings import call_tracing, poll_settings
from cancellation.wiring import enquiry_step

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

STEP: EnquiryStep = enquiry_step(poll_settings(os.environ))  # a bad configuration stops it at start


@logger.inject_lambda_context(correlation_id_path="outcome_id")
@traced(call_tracing(os.environ))
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return STEP.run(event, lambda: context.get_remaining_time_in_millis() / 1000)
