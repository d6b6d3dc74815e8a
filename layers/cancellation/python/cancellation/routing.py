"""Which QFPay endpoint cancels which PayType.

QFPay's guides disagree (see the API digest), so the table is configuration: the PayTypes listed
in ``CLOSE_PAY_TYPES`` go to ``/trade/v1/close``, every other PayType to ``/trade/v1/reversal``.
The default follows the current English guide.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from cancellation.models import Endpoint

DEFAULT_CLOSE_PAY_TYPES = frozenset({"800008", "800208", "801008"})
CloseMethod = Literal["GET", "POST"]
_PAY_TYPE = re.compile(r"[0-9]{6}")


class Routing(NamedTuple):
    close_pay_types: frozenset[str] = DEFAULT_CLOSE_PAY_TYPES
    close_method: CloseMethod = "GET"

    def endpoint_for(self, pay_type: str | None) -> Endpoint:
        return "close" if pay_type in self.close_pay_types else "reversal"

    @classmethod
    def parse(cls, close_pay_types: str, close_method: str) -> Routing:
        """From configuration text; raises ValueError naming what is wrong."""
        pay_types = frozenset(part.strip() for part in close_pay_types.split(",") if part.strip())
        bad = sorted(p for p in pay_types if not _PAY_TYPE.fullmatch(p))
        if bad:
            raise ValueError(f"CLOSE_PAY_TYPES holds values that are not six-digit PayTypes: {bad}")
        method = close_method.strip().upper()
        if method not in ("GET", "POST"):
            raise ValueError(f"CLOSE_HTTP_METHOD must be GET or POST, got {close_method!r}")
        return cls(close_pay_types=pay_types, close_method="GET" if method == "GET" else "POST")
