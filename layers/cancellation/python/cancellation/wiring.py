"""Each function's object graph, built in one place from its settings: the AWS clients, the QFPay
client with the merchants' shared request budget, and the service that uses them. Nothing else
builds them; tests and the local run build the same classes around stand-ins.

The modules every function uses are imported here; each function's own service module is
imported by its handler (so its cold start loads it, and no other function's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cancellation.aws import (
    BudgetSlots,
    CallerNotifier,
    DecisionLedger,
    EnquiryLoopStarter,
    LazyClient,
    OutcomeIntake,
    OutcomePublisher,
    QFPayCredentials,
    ReconciliationLedger,
    RedeliveryDelay,
)
from cancellation.budget import MerchantBudget
from cancellation.observability import record_latency
from cancellation.qfpay import RATE_LIMIT_MAX_WAIT_SECONDS, CredentialsSource, QFPayClient, new_pool

if TYPE_CHECKING:
    from cancellation.deadletter import DeadLetterService
    from cancellation.poll import EnquiryStep
    from cancellation.reconciliation import Reconciler
    from cancellation.service import CancelService
    from cancellation.settings import CancelSettings, DeadLetterSettings, QFPaySettings, ReconcileSettings


def qfpay_client(
    settings: QFPaySettings, credentials: CredentialsSource, pool_size: int, budget: MerchantBudget
) -> QFPayClient:
    """The functions' client: pooled connections, the merchants' shared request budget, and
    every call's latency as the ``QFPayLatency`` metric."""
    return QFPayClient(
        settings.base_url,
        credentials,
        http=new_pool(pool_size),
        timeouts=settings.timeouts,
        verify_response_signature=settings.verify_response_signature,
        budget=budget,
        observe_latency=lambda seconds: record_latency("QFPayLatency", seconds),
    )


def merchant_budget(settings: QFPaySettings) -> MerchantBudget:
    """The merchants' request budget, shared by the cancel, poll and reconcile functions."""
    return MerchantBudget(settings.budget, BudgetSlots(settings.budget_table))


def cancel_service(settings: CancelSettings) -> CancelService:
    from cancellation.service import CancelDependencies, CancelService  # noqa: PLC0415 - its handler loads it

    sfn = LazyClient("stepfunctions")
    credentials = QFPayCredentials(settings.qfpay.secret_id, settings.qfpay.secret_max_age)
    deps = CancelDependencies(
        publisher=OutcomePublisher(settings.event_bus_name),
        loop_starter=EnquiryLoopStarter(settings.state_machine_arn, sfn),
        notifier=CallerNotifier(sfn),
        redelivery=RedeliveryDelay(),
        ledger=DecisionLedger(settings.ledger_table, settings.ledger_expiry),
    )
    # As wide as the batch may run at once.
    qfpay = qfpay_client(
        settings.qfpay, credentials, settings.batch_concurrency, merchant_budget(settings.qfpay)
    )
    return CancelService(settings, deps, qfpay)


def enquiry_step(settings: QFPaySettings, clock: Callable[[], float] = time.time) -> EnquiryStep:
    from cancellation.poll import EnquiryStep  # noqa: PLC0415 - its handler loads it

    credentials = QFPayCredentials(settings.secret_id, settings.secret_max_age)
    return EnquiryStep(
        qfpay_client(settings, credentials, 2, merchant_budget(settings)),
        settings.routing,
        clock,
        settings.request_budget(requests=2),
        read_timeout=settings.timeouts.read,
        patience=RATE_LIMIT_MAX_WAIT_SECONDS * settings.budget.window_scale,
        settle_seconds=settings.settle_seconds,
    )


def reconciler(settings: ReconcileSettings) -> Reconciler:
    from cancellation.reconciliation import Reconciler, qfpay_enquirer  # noqa: PLC0415 - its handler loads it

    credentials = QFPayCredentials(settings.qfpay.secret_id, settings.qfpay.secret_max_age)
    qfpay = qfpay_client(settings.qfpay, credentials, 2, merchant_budget(settings.qfpay))
    return Reconciler(
        ledger=ReconciliationLedger(settings.table),
        publisher=OutcomePublisher(settings.event_bus_name),
        enquire=qfpay_enquirer(qfpay),
        intake=OutcomeIntake(settings.intake_queue_url),
        schedule=settings.schedule,
        batch_limit=settings.batch_limit,
    )


def dead_letter_service(settings: DeadLetterSettings) -> DeadLetterService:
    """Its QFPay client only looks payments up (the dead-letter function never sends a cancel)."""
    from cancellation.deadletter import (  # noqa: PLC0415 - its handler loads it
        DEAD_LETTER_CONCURRENCY,
        DeadLetterDependencies,
        DeadLetterService,
    )

    sfn = LazyClient("stepfunctions")
    deps = DeadLetterDependencies(
        publisher=OutcomePublisher(settings.event_bus_name),
        loop_starter=EnquiryLoopStarter(settings.state_machine_arn, sfn),
        notifier=CallerNotifier(sfn),
        ledger=DecisionLedger(settings.ledger_table, settings.ledger_expiry),
    )
    credentials = QFPayCredentials(settings.qfpay.secret_id, settings.qfpay.secret_max_age)
    qfpay = qfpay_client(
        settings.qfpay, credentials, DEAD_LETTER_CONCURRENCY, merchant_budget(settings.qfpay)
    )
    return DeadLetterService(settings, deps, qfpay)
