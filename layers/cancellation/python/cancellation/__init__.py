"""QFPay payment cancellation: everything the cancel and poll functions run.

Value types on the cancel function's cold-start path are NamedTuples rather than frozen
dataclasses: both are immutable, and a NamedTuple costs about a tenth as much to create at
import (a frozen dataclass execs five generated methods; ~1 ms each here, see ``make bench``).
"""
