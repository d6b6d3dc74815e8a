"""QFPay payment cancellation: everything the cancel and poll functions run.

Value types on the cancel function's cold-start path are NamedTuples rather than frozen
dataclasses: both are immutable, and a NamedTuple is much cheaper to create at import (a frozen
dataclass execs five generated methods; docs/performance.md has the figure).
"""
