"""Reconciliation's pure parts: its schedule, settings, intake reading and corrected outcomes."""

from __future__ import annotations

import json

import pytest
from cancellation.models import OutcomeDetail
from cancellation.outcomes import Status, build_outcome, corrected_outcome, revision_of
from cancellation.reconciliation import InvalidIntake, outcome_in, reconciliation_enquiry
from cancellation.schedule import DEFAULT_RECONCILE_SCHEDULE, ReconcileSchedule
from cancellation.settings import ConfigurationError, reconcile_settings

ENV = {
    "QFPAY_BASE_URL": "https://openapi-hk.qfapi.com",
    "QFPAY_SECRET_ID": "qfpay",
    "EVENT_BUS_NAME": "outcomes",
    "LEDGER_TABLE": "ledger",
    "BUDGET_TABLE": "ledger",
    "RECONCILE_INTAKE_QUEUE_URL": "https://sqs.ap-east-1.amazonaws.com/1/intake",
}


def unknown(**fields: object) -> OutcomeDetail:
    subject = {"out_trade_no": "A-1", "syssn": None, "mchid": "m1", "txamt": 100, **fields}
    return build_outcome(
        subject, "m1|out_trade_no=A-1", Status.UNKNOWN, "1294", now=1796515200.0, decided_by="cancel-function"
    )


def test_the_default_schedule_is_5_minutes_1_hour_then_daily_for_5_days() -> None:
    assert DEFAULT_RECONCILE_SCHEDULE.checks_after == (300, 3600, 86400, 172800, 259200, 345600, 432000)
    assert DEFAULT_RECONCILE_SCHEDULE.next_due(1000.0, 0) == 1300.0
    assert DEFAULT_RECONCILE_SCHEDULE.next_due(1000.0, 6) == 1000.0 + 5 * 86400
    assert DEFAULT_RECONCILE_SCHEDULE.next_due(1000.0, 7) is None


@pytest.mark.parametrize("text", ["", "5,x", "3600,300", "-1"])
def test_a_schedule_that_is_not_rising_whole_seconds_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RECONCILE_CHECKS_AFTER_SECONDS"):
        ReconcileSchedule.parse(text)


def test_settings_name_every_problem() -> None:
    settings = reconcile_settings({**ENV, "RECONCILE_CHECKS_AFTER_SECONDS": "0,1"})
    assert settings.schedule.checks_after == (0, 1)
    assert settings.table == "ledger"
    with pytest.raises(ConfigurationError) as raised:
        reconcile_settings({"RECONCILE_CHECKS_AFTER_SECONDS": "9,1", "QFPAY_BASE_URL": "https://x"})
    for name in (
        "RECONCILE_CHECKS_AFTER_SECONDS",
        "EVENT_BUS_NAME",
        "LEDGER_TABLE",
        "BUDGET_TABLE",
        "RECONCILE_INTAKE",
    ):
        assert name in str(raised.value)


def test_a_correction_keeps_the_identity_and_names_what_it_replaces() -> None:
    first = unknown()
    assert revision_of(first) == 1
    assert revision_of({k: v for k, v in first.items() if k != "revision"}) == 1
    second = corrected_outcome(
        first, Status.CANCELLED, "shown cancelled", now=1796518800.0, decided_by="reconciliation"
    )
    assert (second["outcome_id"], second["out_trade_no"]) == (first["outcome_id"], "A-1")
    assert (second["status"], second["revision"], second["supersedes"]) == ("CANCELLED", 2, "UNKNOWN")
    third = corrected_outcome(second, Status.NOT_CHARGED, "refunded", now=1796518801.0, decided_by="operator")
    assert (third["revision"], third["supersedes"]) == (3, "CANCELLED")


def test_intake_reads_only_first_unknown_or_refund_required_outcome_events() -> None:
    detail = unknown()
    event = {"detail-type": "Payment Cancellation Outcome", "source": "qfpay.cancellation", "detail": detail}
    assert outcome_in(json.dumps(event)) == detail
    cancelled = {**event, "detail": {**detail, "status": "CANCELLED"}}
    correction = {**event, "detail-type": "Payment Cancellation Outcome Correction"}
    for body, reason in [
        ("{", "not JSON"),
        (json.dumps(correction), "not a 'Payment Cancellation Outcome' event"),
        (json.dumps(cancelled), "needs no reconciliation"),
        (json.dumps({**event, "detail": {"status": "UNKNOWN"}}), "no outcome_id"),
    ]:
        with pytest.raises(InvalidIntake, match=reason):
            outcome_in(body)


def test_the_enquiry_asks_by_syssn_when_known_else_by_out_trade_no_in_a_window() -> None:
    by_syssn = reconciliation_enquiry({**unknown(syssn="2026120600001"), "reversal_syssn": "2026120600002"})
    assert by_syssn == [{"mchid": "m1", "syssn": "2026120600001,2026120600002"}]
    by_number = reconciliation_enquiry(unknown())  # decided 2026-12-06 00:00:00 UTC
    # A week before to a day after, asked once per calendar month (QFPay searches one at most).
    assert by_number == [
        {
            "mchid": "m1",
            "out_trade_no": "A-1",
            "start_time": "2026-11-29 00:00:00",
            "end_time": "2026-11-30 23:59:59",
        },
        {
            "mchid": "m1",
            "out_trade_no": "A-1",
            "start_time": "2026-12-01 00:00:00",
            "end_time": "2026-12-07 00:00:00",
        },
    ]


def test_a_cancel_may_still_take_effect_unless_none_was_sent_or_qfpay_refused_it_for_good() -> None:
    from cancellation.reconciliation import cancel_may_take_effect  # noqa: PLC0415

    assert not cancel_may_take_effect({"attempts": 0, "respcd": None})
    assert not cancel_may_take_effect({"attempts": 1, "respcd": "1294"})  # bank risk control refused it
    assert cancel_may_take_effect({"attempts": 1, "respcd": "1143"})  # in progress at the deadline
    assert cancel_may_take_effect({"attempts": 1, "respcd": None})  # never answered
