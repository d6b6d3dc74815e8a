"""Cancelling QFPay payments that never completed: shared code of the cancel and poll functions."""
