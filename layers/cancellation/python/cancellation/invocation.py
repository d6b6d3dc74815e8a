"""What the running invocation allows, shared by every thread of its orders."""

from __future__ import annotations

from contextvars import ContextVar

# The latest time (epoch seconds) a request of the running invocation may start: set once per
# invocation by the function, read by the budget (and the batch's Enquiry round) in whichever
# thread sends the request.
spend_until: ContextVar[float | None] = ContextVar("spend_until", default=None)
