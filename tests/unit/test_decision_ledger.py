"""The decision ledger against DynamoDB (moto), with the table as template.yaml declares it: who may
decide an order, who may deliver its decision, and what a later message finds."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from cancellation.aws import DecisionLedger, LedgerStage, OrderBusy

DECIDING, DECIDED, DELIVERED = LedgerStage.DECIDING, LedgerStage.DECIDED, LedgerStage.DELIVERED

KEY = "cancel#MCH1|out_trade_no=SHOP-1"
NOW = 1_795_600_000.0
EXPIRY = 48 * 3600
# The ledger stores whatever decision it is given, as JSON: a part of one is enough here.
DECISION: Any = {"outcome": {"status": "CANCELLED", "outcome_id": "abc"}}


@pytest.fixture
def ledger(ledger_table: Any) -> DecisionLedger:
    return DecisionLedger("ledger", EXPIRY, lambda: ledger_table)


def stored(key: str = KEY) -> dict[str, Any]:
    answer = boto3.client("dynamodb").get_item(TableName="ledger", Key={"id": {"S": key}})
    item: dict[str, Any] = answer["Item"]
    return item


def test_the_first_attempt_decides_and_no_earlier_attempt_is_known(ledger: DecisionLedger) -> None:
    claim = ledger.claim(KEY, "a", NOW, NOW + 30)
    assert (claim.stage, claim.decision, claim.earlier_attempt) == (DECIDING, None, False)
    item = stored()
    assert (item["stage"]["S"], item["holder"]["S"]) == (DECIDING, "a")
    assert int(item["expiration"]["N"]) == int(NOW) + EXPIRY


def test_a_second_attempt_waits_while_the_first_holds_the_order(ledger: DecisionLedger) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30)
    with pytest.raises(OrderBusy):
        ledger.claim(KEY, "b", NOW + 29, NOW + 60)
    assert stored()["holder"]["S"] == "a"


@pytest.mark.parametrize("released", [False, True], ids=["lease ran out", "released"])
def test_a_decision_left_unfinished_is_taken_over_knowing_an_attempt_came_before(
    ledger: DecisionLedger, released: bool
) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30)
    if released:
        ledger.release(KEY, "a")
    later = NOW + 1 if released else NOW + 31
    claim = ledger.claim(KEY, "b", later, later + 30)
    assert (claim.stage, claim.earlier_attempt) == (DECIDING, True)
    # The first attempt, still running after all, can no longer store what it decided.
    with pytest.raises(OrderBusy):
        ledger.record_decision(KEY, "a", DECISION)


def test_a_stored_decision_is_delivered_by_the_next_attempt_once_its_deliverer_is_gone(
    ledger: DecisionLedger,
) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.record_decision(KEY, "a", DECISION)
    with pytest.raises(OrderBusy):  # still being delivered
        ledger.claim(KEY, "b", NOW + 10, NOW + 40)
    claim = ledger.claim(KEY, "c", NOW + 31, NOW + 61)
    assert (claim.stage, claim.decision, claim.earlier_attempt) == (DECIDED, DECISION, True)
    assert stored()["holder"]["S"] == "c"
    with pytest.raises(OrderBusy):  # the one that lost the delivery cannot mark it delivered
        ledger.record_delivered(KEY, "a", "CANCELLED")


def test_a_released_delivery_is_taken_over_at_once(ledger: DecisionLedger) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.record_decision(KEY, "a", DECISION)
    ledger.release(KEY, "a")  # e.g. EventBridge refused the outcome
    claim = ledger.claim(KEY, "b", NOW + 1, NOW + 31)
    assert (claim.stage, claim.decision) == (DECIDED, DECISION)


def test_a_delivered_order_is_answered_from_the_record_and_nothing_is_written(
    ledger: DecisionLedger,
) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.record_decision(KEY, "a", DECISION)
    ledger.record_delivered(KEY, "a", "CANCELLED")
    before = stored()
    claim = ledger.claim(KEY, "b", NOW + 3600, NOW + 3630)
    assert (claim.stage, claim.decision, claim.result) == (DELIVERED, DECISION, "CANCELLED")
    assert stored() == before


def test_a_decision_known_in_advance_starts_decided(ledger: DecisionLedger) -> None:
    claim = ledger.claim(KEY, "a", NOW, NOW + 30, decision=DECISION)
    assert (claim.stage, claim.decision) == (DECIDED, DECISION)
    assert stored()["stage"]["S"] == DECIDED


def test_a_record_past_its_expiry_counts_as_absent(ledger: DecisionLedger) -> None:
    """DynamoDB's TTL sweeps late; an expired record must not hold an order 48 h later."""
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.record_decision(KEY, "a", DECISION)
    ledger.record_delivered(KEY, "a", "CANCELLED")
    later = NOW + EXPIRY + 1
    claim = ledger.claim(KEY, "b", later, later + 30)
    # Decided again as after the sweep (nothing of its attempts can still be pending), knowing the
    # ledger forgot the order: it asks the Enquiry before any cancel, whatever the txdtm says.
    assert (claim.stage, claim.earlier_attempt, claim.forgotten) == (DECIDING, False, True)


def test_every_attempt_that_may_send_a_cancel_is_counted_before_it_sends(
    ledger: DecisionLedger,
) -> None:
    """The count is written just before the cancel leaves: an attempt that dies after sending, or
    whose decision cannot be stored, is still counted by the next one."""
    first = ledger.claim(KEY, "a", NOW, NOW + 30)
    assert (first.earlier_sends, stored()["sends"]["N"]) == (0, "0")
    ledger.sends.count(KEY, "a")
    assert stored()["sends"]["N"] == "1"
    with pytest.raises(OrderBusy):
        ledger.claim(KEY, "b", NOW + 10, NOW + 40)
    assert stored()["sends"]["N"] == "1"  # a refused claim counts nothing
    second = ledger.claim(KEY, "c", NOW + 31, NOW + 61)  # "a" died after sending
    assert (second.earlier_attempt, second.earlier_sends, stored()["sends"]["N"]) == (True, 1, "1")
    ledger.sends.count(KEY, "c")
    ledger.release(KEY, "c")  # e.g. DynamoDB refused its decision
    third = ledger.claim(KEY, "d", NOW + 32, NOW + 62)
    assert (third.earlier_sends, stored()["sends"]["N"]) == (2, "2")
    assert stored()["holder"]["S"] == "d"


def test_an_attempt_that_died_before_sending_is_not_counted(ledger: DecisionLedger) -> None:
    """Claimed, then died before its cancel left (at the Enquiry, say): the next attempt knows an
    attempt came before, but no cancel of it can be processing at QFPay."""
    ledger.claim(KEY, "a", NOW, NOW + 30)
    claim = ledger.claim(KEY, "b", NOW + 31, NOW + 61)
    assert (claim.earlier_attempt, claim.earlier_sends) == (True, 0)


def test_an_attempt_whose_lease_was_taken_over_cannot_count_a_send(ledger: DecisionLedger) -> None:
    """Its lease ran out and another attempt holds the order: it must not send."""
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.claim(KEY, "b", NOW + 31, NOW + 61)
    with pytest.raises(OrderBusy):
        ledger.sends.count(KEY, "a")
    assert stored()["sends"]["N"] == "0"


def test_a_record_from_before_the_count_counts_one_possible_cancel(ledger: DecisionLedger) -> None:
    boto3.client("dynamodb").put_item(
        TableName="ledger",
        Item={
            "id": {"S": KEY},
            "stage": {"S": DECIDING},
            "holder": {"S": "a"},
            "lease_until": {"N": str(NOW - 1)},
            "expiration": {"N": str(int(NOW) + EXPIRY)},
        },
    )
    claim = ledger.claim(KEY, "b", NOW, NOW + 30)
    assert (claim.earlier_attempt, claim.earlier_sends) == (True, 1)
    assert stored()["sends"]["N"] == "1"  # kept from here on


def taken_over_while(ledger: DecisionLedger, ledger_table: Any, first_attempt_acts: Any) -> None:
    """Attempt "a" claims the order; its lease runs out (its clock behind the next one's, say),
    and it acts on the record (``first_attempt_acts(late)``, through a client of its own) between
    attempt "b"'s read of the record and b's take-over. The take-over must fail rather than write
    back what it read: the attempt after it then knows what "a" did."""
    ledger.claim(KEY, "a", NOW, NOW + 30)
    late = DecisionLedger("ledger", EXPIRY, lambda: boto3.client("dynamodb"))
    events = ledger_table.meta.events

    def act_first(**_: Any) -> None:
        events.unregister("before-call.dynamodb.UpdateItem", act_first)
        first_attempt_acts(late)

    events.register("before-call.dynamodb.UpdateItem", act_first)
    try:
        with pytest.raises(OrderBusy):
            ledger.claim(KEY, "b", NOW + 31, NOW + 61)
    finally:
        events.unregister("before-call.dynamodb.UpdateItem", act_first)


def test_a_cancel_counted_while_the_order_is_taken_over_is_never_overwritten(
    ledger: DecisionLedger, ledger_table: Any
) -> None:
    taken_over_while(ledger, ledger_table, lambda late: late.sends.count(KEY, "a"))
    assert stored()["sends"]["N"] == "1"
    claim = ledger.claim(KEY, "c", NOW + 32, NOW + 62)
    assert (claim.earlier_attempt, claim.earlier_sends) == (True, 1)


def test_a_refusal_noted_while_the_order_is_taken_over_is_never_lost(
    ledger: DecisionLedger, ledger_table: Any
) -> None:
    """The first attempt's cancel is refused and handed back (its count back to 0, the refusal
    noted) in between: the count matches what was read, and still the take-over must fail, or
    the next attempt would send without reading QFPay's record first."""

    def sent_and_refused(late: DecisionLedger) -> None:
        late.sends.count(KEY, "a")
        late.sends.hand_back_refused(KEY, "a", counted=True)

    taken_over_while(ledger, ledger_table, sent_and_refused)
    claim = ledger.claim(KEY, "c", NOW + 32, NOW + 62)
    assert (claim.earlier_attempt, claim.earlier_sends, claim.earlier_refusals) == (True, 0, 1)


def test_a_decision_known_in_advance_counts_no_cancel(ledger: DecisionLedger) -> None:
    ledger.claim(KEY, "a", NOW, NOW + 30, decision=DECISION)
    assert "sends" not in stored()


def test_an_attempt_qfpay_showed_did_nothing_is_not_counted(ledger: DecisionLedger) -> None:
    """A "try later" answer or HTTP 429 proves the cancel did nothing: the next attempt may
    send as if it were the first, so a long run of refusals never exhausts the order's cancels."""
    ledger.claim(KEY, "a", NOW, NOW + 30)
    ledger.sends.count(KEY, "a")
    ledger.sends.release_unsent(KEY, "a")
    assert stored()["sends"]["N"] == "0"
    claim = ledger.claim(KEY, "b", NOW + 1, NOW + 31)
    assert (claim.earlier_attempt, claim.earlier_sends, stored()["sends"]["N"]) == (True, 0, "0")
    assert claim.earlier_refusals == 0  # nor as a refusal: it did nothing, QFPay said so


def test_the_stage_of_a_record_and_whether_it_is_held_are_read_without_claiming(
    ledger: DecisionLedger,
) -> None:
    """What the dead-letter consumer reads first: it never takes a DECIDING lease (that would hold
    the order and tell the next attempt that one came before)."""
    assert ledger.stage_of(KEY, NOW) is None
    ledger.claim(KEY, "a", NOW, NOW + 30)
    assert ledger.stage_of(KEY, NOW + 1) == (DECIDING, True)
    assert ledger.stage_of(KEY, NOW + 31) == (DECIDING, False)
    ledger.record_decision(KEY, "a", DECISION)
    ledger.record_delivered(KEY, "a", "CANCELLED")
    assert ledger.stage_of(KEY, NOW + 1) == (DELIVERED, True)  # the holder's lease is kept as it was
    assert stored()["sends"]["N"] == "0"  # reading counts nothing
