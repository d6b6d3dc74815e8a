"""QFPay's credentials as the functions read them from Secrets Manager (moto): cached for
SECRET_MAX_AGE_SECONDS, read again when forced, and a secret that is not what we expect fails
with an error that carries none of it."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cancellation.aws import QFPayCredentials
from moto import mock_aws

SECRET = {"app_code": "APPCODE0000000000000000000000001", "client_key": "CLIENTKEY00000000000000000000001"}
ROTATED = {**SECRET, "client_key": "CLIENTKEY00000000000000000000002", "sign_type": "SHA256"}


@pytest.fixture
def secretsmanager(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("secretsmanager")
        client.create_secret(Name="qfpay", SecretString=json.dumps(SECRET))
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_secret_is_read_once_per_max_age_and_again_when_forced(secretsmanager: Any) -> None:
    clock = Clock()
    credentials = QFPayCredentials("qfpay", 300, lambda: secretsmanager, clock)
    assert credentials().client_key == SECRET["client_key"]
    secretsmanager.put_secret_value(SecretId="qfpay", SecretString=json.dumps(ROTATED))
    clock.now += 299
    assert credentials().client_key == SECRET["client_key"]  # still cached
    assert credentials(force=True).client_key == ROTATED["client_key"]  # QFPay rejected our signature
    assert credentials().sign_type == "SHA256"
    secretsmanager.put_secret_value(SecretId="qfpay", SecretString=json.dumps(SECRET))
    clock.now += 300
    assert credentials().client_key == SECRET["client_key"]  # expired: read again


@pytest.mark.parametrize(
    "stored",
    [
        '{"app_code": "APPCODE0000000000000000000000001", "client_key": "CLIENTKEY00000000000000000000001"',
        '["APPCODE0000000000000000000000001", "CLIENTKEY00000000000000000000001"]',
    ],
    ids=["truncated JSON", "not an object"],
)
def test_a_secret_not_a_json_object_fails_without_showing_it(secretsmanager: Any, stored: str) -> None:
    secretsmanager.put_secret_value(SecretId="qfpay", SecretString=stored)
    with pytest.raises(ValueError, match="QFPay secret is not a JSON object") as raised:
        QFPayCredentials("qfpay", 300, lambda: secretsmanager)()
    shown = "".join(traceback.format_exception(raised.value)) + repr(vars(raised.value))
    shown += repr(raised.value.__cause__) + repr(raised.value.__context__ and vars(raised.value.__context__))
    assert "CLIENTKEY" not in shown
    assert "APPCODE" not in shown


def test_a_failed_read_is_not_cached(secretsmanager: Any) -> None:
    secretsmanager.put_secret_value(SecretId="qfpay", SecretString="{}")
    credentials = QFPayCredentials("qfpay", 300, lambda: secretsmanager)
    with pytest.raises(ValueError, match="app_code"):
        credentials()
    secretsmanager.put_secret_value(SecretId="qfpay", SecretString=json.dumps(SECRET))
    assert credentials().app_code == SECRET["app_code"]
