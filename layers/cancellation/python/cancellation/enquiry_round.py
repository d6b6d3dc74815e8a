"""One Enquiry for the orders of a batch that ask QFPay at about the same time.

QFPay's Enquiry takes comma-separated ``syssn`` lists and answers up to 100 rows a page
(docs/qfpay.md), and each request spends the merchant's budget (docs/rate-limits.md). After its
cancel, every order of a batch asks the Enquiry by syssn to confirm it: ten orders, ten requests.
A round lets the orders of one batch that ask by syssn at about the same time share one request,
so a batch of ten costs about eleven requests instead of twenty.

What each order reads is what QFPay would have answered its own query: the answer's rows are
filtered to those naming one of the order's numbers (the row's ``syssn``, or the payment a refund
or reversal names). An answer that failed, or has no list of rows, is every order's answer, as it
would have been alone; a full page may hold more rows on a next page, so then each order asks alone.

When it asks: as soon as every order of the batch still running is waiting in the round (nothing
else could join), or ``linger`` seconds after the first order asked, whichever comes first.
Outside a batch (the poll function, the look-ups before any order runs) there is no round and an
Enquiry is asked as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from cancellation.enquiry import field_text
from cancellation.invocation import spend_until

ROUND_PAGE_SIZE = 100  # QFPay's most rows a page (docs/qfpay.md)

Send = Callable[[Mapping[str, str | None]], dict[str, Any]]


class _Group:
    """The orders of one merchant waiting for the same request."""

    def __init__(self, close_at: float) -> None:
        self.close_at = close_at  # asked by then, whoever has not joined
        self.numbers: set[str] = set()
        self.callers = 0
        self.taken = False  # a caller is asking for the group
        self.done = False
        self.answer: dict[str, Any] = {}
        self.error: BaseException | None = None


class EnquiryRound:
    """The Enquiries by syssn of one batch's orders, asked together (see the module doc).
    ``running``: how many orders of the batch may run at once (the batch's pool)."""

    def __init__(
        self, orders: int, running: int, linger: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._unfinished = orders
        self._running = running
        self._linger = linger
        self._clock = clock
        self._lock = threading.Condition()
        self._open: dict[str | None, _Group] = {}
        self._blocked = 0  # orders waiting in the round, for a group to be asked or answered

    def finished(self) -> None:
        """An order of the batch is done: it will ask nothing more."""
        with self._lock:
            self._unfinished -= 1
            self._lock.notify_all()

    @staticmethod
    def shares(params: Mapping[str, str | None]) -> bool:
        """Only a query by syssn alone is shared: a query with a time window, a filter or a page of
        its own is asked as it is."""
        return set(params) == {"mchid", "syssn"} and bool(params.get("syssn"))

    def ask(self, params: Mapping[str, str | None], send: Send) -> dict[str, Any]:
        """What QFPay answers ``params`` (a query :meth:`shares`), asked with the round's others
        (``send`` asks QFPay one query)."""
        numbers = {n for n in str(params["syssn"]).split(",") if n}
        group, asks = self._join(params.get("mchid"), numbers)
        if asks:
            self._ask_for(group, params, send)
        if group.error is not None:
            raise group.error  # what each caller would have met alone
        answer = group.answer
        if group.callers == 1:
            return answer
        rows = answer.get("data")
        if not isinstance(rows, list):
            rows = []
        own = [row for row in rows if not isinstance(row, Mapping) or field_text(row.get("syssn")) in numbers]
        others = [
            row for row in rows if isinstance(row, Mapping) and field_text(row.get("syssn")) not in numbers
        ]
        if (
            # Another order's number may be what QFPay refused: only its own query says.
            answer.get("respcd") != "0000"
            or not isinstance(answer.get("data"), list)
            # A next page may hold rows of this order.
            or len(rows) >= ROUND_PAGE_SIZE
            # A reversal or refund of this order's payment, listed for another order's number:
            # alone QFPay may not list it, and read alone it could be taken for the payment.
            or any(_names(row, numbers) for row in others)
        ):
            return send(params)  # ask alone
        return {**answer, "data": own}

    def _join(self, mchid: str | None, numbers: set[str]) -> tuple[_Group, bool]:
        """Wait in the merchant's group; True: this caller asks for it (the group is closed)."""
        with self._lock:
            group = self._open.get(mchid)
            if group is None:
                group = self._open[mchid] = _Group(self._clock() + self._linger)
            # Never held past the invocation's last moment for a request (the budget's, too),
            # less a linger for the request's slot: the wait is cut short, never the invocation.
            latest = spend_until.get()
            if latest is not None:
                group.close_at = min(group.close_at, latest - self._linger)
            group.numbers |= numbers
            group.callers += 1
            self._blocked += 1
            self._lock.notify_all()
            while not group.taken:
                wait = group.close_at - self._clock()
                if wait <= 0 or self._blocked >= min(self._unfinished, self._running):
                    group.taken = True
                    del self._open[mchid]
                    return group, True
                self._lock.wait(wait)
            while not group.done:
                self._lock.wait()
            return group, False

    def _ask_for(self, group: _Group, own: Mapping[str, str | None], send: Send) -> None:
        params: dict[str, str | None] = dict(own)  # alone: exactly its own query
        if group.callers > 1:
            params["syssn"] = ",".join(sorted(group.numbers))
            params["page_size"] = str(ROUND_PAGE_SIZE)
        try:
            group.answer = send(params)
        except BaseException as exc:  # every caller of the group gets it, as each would alone
            group.error = exc
        with self._lock:
            group.done = True
            self._blocked -= group.callers
            self._lock.notify_all()


def _names(row: Mapping[str, Any], numbers: set[str]) -> bool:
    """The row is a refund or reversal of one of ``numbers``."""
    return any(field_text(row.get(field)) in numbers for field in ("origssn", "orig_syssn"))


current_round: ContextVar[EnquiryRound | None] = ContextVar("current_round", default=None)
