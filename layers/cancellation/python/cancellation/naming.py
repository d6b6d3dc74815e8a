"""One payment, one identity, however its messages name it and whatever QFPay answers each time.

A message naming the payment's ``syssn`` is keyed by it. One naming only ``out_trade_no`` is looked
up first (one Transaction Enquiry) to learn the syssn; that look-up can fail (QFPay unreachable for
the whole retry horizon) or miss (QFPay searches out_trade_no within a time window). So the answer
is written down once: the ledger binds the merchant's out_trade_no to the identity its first
decided message used (:class:`~cancellation.aws.PaymentNames`), and every later message naming it
so decides under that identity instead of looking again. A message naming only the syssn is
looked up too (by syssn, which QFPay searches at every date), for the out_trade_no QFPay has for
it and that out_trade_no's binding. Only what QFPay showed (its row's syssn or out_trade_no), or
the out_trade_no naming itself, is ever bound: a message's own claim that a syssn belongs to an
out_trade_no is checked against QFPay's record before anything is sent, never bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cancellation.aws import PaymentNames
from cancellation.cancel import FirstLook, RetryLater, first_look
from cancellation.enquiry import read_enquiry
from cancellation.orders import Order, valid_out_trade_no
from cancellation.qfpay import QFPayClient


class PaymentNaming:
    def __init__(self, qfpay: QFPayClient, names: PaymentNames, clock: Callable[[], float]) -> None:
        self.qfpay = qfpay
        self.names = names
        self.clock = clock

    def name(
        self,
        order: Order,
        looked: FirstLook | RetryLater | None,
        may_give_up: Callable[[RetryLater], bool],
    ) -> tuple[Order, Mapping[str, Any] | None]:
        """The order as its payment's identity names it, and the Enquiry's answer when one was
        asked. ``looked``: the batch's look-up (or why it failed); ``may_give_up``: whether a
        look-up that failed ends here (the order is then named, and bound, by its out_trade_no)
        rather than raising RetryLater."""
        if order.out_trade_no is None:
            return self._by_syssn(order, may_give_up)
        naming = order.out_trade_no_naming
        bound = self.names.bound(naming, self.clock())
        if bound is not None:
            return adopt(order, bound), None
        if order.syssn is not None:
            return order, None  # the message's claim: checked against QFPay's record, not bound
        try:
            if isinstance(looked, RetryLater):
                raise looked
            look = looked if looked is not None else first_look(self.qfpay, order)
        except RetryLater as exc:
            if not may_give_up(exc):
                raise
            return self._bind(order), None
        return self._bind(look.order), look.answer

    def _by_syssn(
        self, order: Order, may_give_up: Callable[[RetryLater], bool]
    ) -> tuple[Order, Mapping[str, Any] | None]:
        """A message naming only the syssn: QFPay's row (an Enquiry by syssn searches every date)
        gives the payment's out_trade_no, which an earlier message may have bound to its own naming
        (its look-up showed no row): this one then decides under that identity, not a second one.
        Costs one Enquiry, which also serves as the Enquiry read before the cancel."""
        try:
            look = first_look(self.qfpay, order)
        except RetryLater as exc:
            if not may_give_up(exc):
                raise
            return order, None
        out_trade_no = (read_enquiry(look.answer, order).payment or {}).get("out_trade_no")
        if not valid_out_trade_no(out_trade_no):
            return order, look.answer  # QFPay shows no row of it (or none we can read)
        return self._bind(order._replace(out_trade_no=out_trade_no)), look.answer

    def _bind(self, order: Order) -> Order:
        """Bind the out_trade_no to the syssn QFPay showed for it, else to itself; the first binding
        stands."""
        identity = f"syssn={order.syssn}" if order.syssn else order.out_trade_no_naming
        return adopt(order, self.names.bind(order.out_trade_no_naming, identity, self.clock()))


def adopt(order: Order, identity: str) -> Order:
    """The order under the identity its out_trade_no is bound to. A bound syssn came from QFPay's
    row for this out_trade_no; a message naming another one keeps its own (QFPay's record then
    refuses it before any cancel)."""
    if identity == order.out_trade_no_naming:
        return order._replace(by_out_trade_no=order.syssn is not None)
    syssn = identity.removeprefix("syssn=")
    if order.syssn is None and syssn != identity:
        return order._replace(syssn=syssn)
    return order
