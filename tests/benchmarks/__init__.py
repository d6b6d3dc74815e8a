"""Benchmarks of the cancellation service (``make bench``: ``python -m tests.benchmarks.bench``)."""
