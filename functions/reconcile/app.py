"""Reconcile function: on a schedule, enrols the UNKNOWN and REFUND_REQUIRED outcomes waiting in
the intake queue, then re-checks the UNKNOWN orders that are due with the Transaction Enquiry;
returns ``{"checked": n, "resolved": n, "still_unknown": n}``. ``{"outcome_id": ...}`` checks
that one order now; ``{"resolve": {...}}`` records a person's resolution (the operators' CLI)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cancellation.observability import logger, metrics, traced
from cancellation.reconciliation import Reconciler, time_left_in
from cancellation.settings import call_tracing, reconcile_settings
from cancellation.wiring import reconciler

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

SETTINGS = reconcile_settings(os.environ)  # a bad configuration stops the function at start
RECONCILER: Reconciler = reconciler(SETTINGS)


@logger.inject_lambda_context
@traced(call_tracing(os.environ))
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return RECONCILER.handle(event, time_left_in(context, SETTINGS.qfpay.timeouts))
