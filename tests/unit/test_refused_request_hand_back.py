"""A request QFPay refused belongs to its message; the order is handed back undecided. The
exactly-once protocol against the real decision ledger on moto DynamoDB, with the attempt dying at
the DynamoDB boundary (as an invocation stopped at its deadline dies)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cancellation.aws import DecisionLedger
from cancellation.exactly_once import ExactlyOnce

NOW = 1_795_600_000.0
ORDER = "syssn=20261126000101000001"
MESSAGE = f"{ORDER}|message=m-1"
REFUSED: Any = {
    "outcome": {"status": "REJECTED", "outcome_id": "r-1", "reason": "close answered 1297"},
    "request": True,
}


def publishing(delivered: list[Any]) -> Callable[[Any], str]:
    def publish(decision: Any) -> str:
        delivered.append(decision)
        return "REJECTED"

    return publish


class Killed(BaseException):
    """The invocation ends here: nothing after this line of the attempt runs (not an Exception,
    so no handler of ours sees it, as none sees Lambda stopping the process)."""


@pytest.fixture
def ledger(ledger_table: Any) -> DecisionLedger:
    return DecisionLedger("ledger", 48 * 3600, lambda: ledger_table)


@pytest.fixture
def killed_when_the_order_is_handed_back(ledger_table: Any) -> Iterator[None]:
    """DynamoDB never sees the write that takes the refused cancel off the order's count."""

    def kill(params: dict[str, Any], **_: Any) -> None:
        if "#sends - :one" in json.loads(params["body"]).get("UpdateExpression", ""):
            raise Killed

    events = ledger_table.meta.events
    events.register("before-call.dynamodb.UpdateItem", kill)
    yield
    events.unregister("before-call.dynamodb.UpdateItem", kill)


def test_a_refusal_is_published_only_once_the_order_no_longer_counts_the_refused_cancel(
    ledger: DecisionLedger, killed_when_the_order_is_handed_back: None
) -> None:
    """The attempt counts its cancel, QFPay refuses it (1297), and the attempt dies before the
    order's count is corrected. Had the refusal been published by then, the next attempt (the
    message's redelivery, a requeued copy, a duplicate) would read a cancel of ours that may still
    be processing, hand the order to the loop and publish a second, different outcome (UNKNOWN) for
    the same payment. So either nothing was published, or the order counts no cancel of ours."""
    delivered: list[Any] = []
    once = ExactlyOnce(ledger, lambda: NOW)

    def refused_after_sending(_claim: Any, sends: Any) -> Any:
        sends()
        return REFUSED

    with pytest.raises(Killed):
        once.run_once(
            ORDER,
            NOW + 150,
            publishing(delivered),
            refused_after_sending,
            message_key=MESSAGE,
        )
    later = ledger.claim(f"cancel#{ORDER}", "next", NOW + 151, NOW + 301)
    assert delivered == [] or later.earlier_sends == 0


def test_a_refusal_hands_the_order_back_uncounted_and_is_published_once(ledger: DecisionLedger) -> None:
    delivered: list[Any] = []
    once = ExactlyOnce(ledger, lambda: NOW)

    def refused_after_sending(_claim: Any, sends: Any) -> Any:
        sends()
        return REFUSED

    decision, status = once.run_once(
        ORDER,
        NOW + 150,
        publishing(delivered),
        refused_after_sending,
        message_key=MESSAGE,
    )
    assert (decision, status, delivered) == (REFUSED, "REJECTED", [REFUSED])
    later = ledger.claim(f"cancel#{ORDER}", "next", NOW + 1, NOW + 151)  # not held: handed back
    # Uncounted, yet known to have reached QFPay: the next attempt reads QFPay's record first.
    assert (later.earlier_attempt, later.earlier_sends, later.earlier_refusals) == (True, 0, 1)
    # The message's own record answers its redelivery without deciding again.
    again = once.run_once(MESSAGE, NOW + 2, lambda d: "again", lambda *_: pytest.fail("decided twice"))
    assert again == (REFUSED, "REJECTED")
