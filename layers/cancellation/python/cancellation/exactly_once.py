"""The exactly-once protocol: an order is decided once and its decision delivered once, through its
record in the decision ledger (:class:`~cancellation.aws.DecisionLedger`, docs/ledger.md).

Deciding is the only stage that talks to QFPay; a failed delivery is retried by SQS and delivers
the stored decision, so QFPay is never asked to cancel twice for one order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from cancellation.aws import Claim, DecisionLedger, LedgerStage
from cancellation.cancel import RetryLater
from cancellation.observability import logger
from cancellation.qfpay import CredentialsRejected

if TYPE_CHECKING:
    from cancellation.models import Decision


class ExactlyOnce:
    def __init__(self, ledger: DecisionLedger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock

    def run_once(
        self,
        key: str,
        lease_until: float,
        deliver: Callable[[Decision], str],
        decide: Callable[[Claim | None, SendCount | None], Decision],
        *,
        known: bool = False,
        message_key: str | None = None,
    ) -> tuple[Decision, str]:
        """The decision recorded under ``key`` and what ``deliver`` made of it. Decided here by
        ``decide`` (given the claim: what earlier attempts may have done, and the count to call
        just before a cancel leaves) unless stored;
        delivered here unless it was already. ``known``: ``decide`` asks nothing of QFPay, so its
        decision is recorded with the claim. ``message_key``: where a decision that belongs to the
        message (``"request"`` in it) is recorded and delivered instead; the order is then handed
        back undecided, for other messages to decide."""
        ledger_key, holder = f"cancel#{key}", os.urandom(16).hex()  # this attempt, as the lease's holder
        claim = self.ledger.claim(
            ledger_key, holder, self.clock(), lease_until, decide(None, None) if known else None
        )
        sends = SendCount(self.ledger, ledger_key, holder)
        if claim.stage == LedgerStage.DELIVERED and claim.decision is not None:
            return claim.decision, str(claim.result)
        try:
            decision = claim.decision
            if decision is None:
                decision = decide(claim, sends)
                if message_key is not None and decision.get("request"):
                    # QFPay refused the request itself: this attempt's cancel, if any, did nothing.
                    # The order is handed back before the refusal is published: an attempt dying
                    # in between then leaves an order whose next attempt asks QFPay again, never
                    # a published refusal beside a cancel the next attempt must treat as pending.
                    self.ledger.sends.hand_back_refused(ledger_key, holder, counted=sends.counted)
                    own = decision
                    return self.run_once(message_key, lease_until, deliver, lambda *_: own, known=True)
                self.ledger.record_decision(ledger_key, holder, decision)
            result = deliver(decision)
        except (RetryLater, CredentialsRejected):
            # QFPay showed that nothing happened: this attempt's cancel is not counted.
            self._release(ledger_key, holder, sent_nothing=sends.counted)
            raise
        except Exception:
            self._release(ledger_key, holder)
            raise
        self.ledger.record_delivered(ledger_key, holder, result)
        return decision, result

    def _release(self, key: str, holder: str, *, sent_nothing: bool = False) -> None:
        try:
            self._hand_back(key, holder, sent_nothing=sent_nothing)
        except Exception:  # the lease then runs out with the invocation; the retry waits for it
            logger.exception("could not release the order after a failed attempt")

    def _hand_back(self, key: str, holder: str, *, sent_nothing: bool) -> None:
        if sent_nothing:
            self.ledger.sends.release_unsent(key, holder)
        else:
            self.ledger.release(key, holder)


class SendCount:
    """Counts this attempt's cancel in the ledger just before it leaves (see
    :class:`~cancellation.aws.CancelCount`), and remembers that it did."""

    def __init__(self, ledger: DecisionLedger, key: str, holder: str) -> None:
        self._ledger, self._key, self._holder = ledger, key, holder
        self.counted = False

    def __call__(self) -> None:
        self._ledger.sends.count(self._key, self._holder)
        self.counted = True
