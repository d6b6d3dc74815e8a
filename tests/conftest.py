"""Shared fixtures: one moto server per test session (reset between tests), and the local pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.local.moto_server import LocalAws
from tests.local.pipeline import Pipeline, local_pipeline


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalAws]:
    with LocalAws() as aws:
        yield aws


@pytest.fixture
def local_aws(moto_server: LocalAws) -> Iterator[LocalAws]:
    moto_server.reset()
    yield moto_server
    moto_server.reset()


PipelineFactory = Callable[..., AbstractContextManager[Pipeline]]


@pytest.fixture
def pipeline_factory(local_aws: LocalAws) -> PipelineFactory:
    """``with pipeline_factory(transactions, env_overrides=...) as p:`` on the session's moto."""

    def start(*args: Any, **kwargs: Any) -> AbstractContextManager[Pipeline]:
        return local_pipeline(*args, aws=local_aws, **kwargs)

    return start
