"""Shared fixtures: one moto server per test session (reset between tests), and the local pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.local.aws_stack import load_template
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


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 in this process talks to moto's in-process mock only: fake credentials, no endpoint."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-east-1")


@pytest.fixture
def ledger_table(aws_env: None) -> Iterator[Any]:
    """A DynamoDB client on moto's in-process mock with the ledger table named ``ledger``, keyed
    and indexed exactly as template.yaml declares it."""
    template = load_template(Path(__file__).resolve().parents[1] / "template.yaml")
    properties = template["Resources"]["IdempotencyTable"]["Properties"]
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="ledger",
            KeySchema=properties["KeySchema"],
            AttributeDefinitions=properties["AttributeDefinitions"],
            GlobalSecondaryIndexes=properties["GlobalSecondaryIndexes"],
            BillingMode=properties["BillingMode"],
        )
        yield client


PipelineFactory = Callable[..., AbstractContextManager[Pipeline]]


@pytest.fixture
def pipeline_factory(local_aws: LocalAws) -> PipelineFactory:
    """``with pipeline_factory(transactions, env_overrides=...) as p:`` on the session's moto."""

    def start(*args: Any, **kwargs: Any) -> AbstractContextManager[Pipeline]:
        return local_pipeline(*args, aws=local_aws, **kwargs)

    return start


def wait_for(predicate: Callable[[], Any], timeout: float) -> bool:
    """Polls ``predicate`` every 0.1 s until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
