"""QFPay payment cancellation: everything the cancel and poll functions run.

No class created at a cold start is a dataclass: a dataclass execs its generated methods when the
class is made. Value types are NamedTuples (much cheaper), other classes plain classes
(docs/decisions.md, docs/performance.md has the figures).
"""
