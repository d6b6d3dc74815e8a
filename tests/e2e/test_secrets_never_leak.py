"""The QFPay credentials never leave the secret: not in logs, events, queues, executions or errors.

Every demo scenario, plus a rejected SNS-wrapped order with a caller token, an order QFPay answers
with HTTP 429 until it ends UNKNOWN past the retry horizon (sent back to the queue meanwhile), a
key rotated at QFPay but not yet in the secret (every call answered 1108, until the DLQ), the
rotation completed in the secret (the next order recovers after one re-read) and the in-progress
loop, run through the local pipeline with recognisable credentials. Everything the run produces is
captured: every log record (at DEBUG, formatted as the functions write them, plus each record's
attributes), stdout/stderr, the outcome events, the DLQ and queue bodies, every recorded Lambda
invocation (event, answer, error object and stack trace), every Step Functions execution (input,
output, full history), the decision ledger table, the functions' configuration and the parameters QFPay
received. None may hold a credential.

Separately: ``repr`` of the credentials hides them, and no exception the QFPay client raises carries
them, whatever failed.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from cancellation.qfpay import (
    ENQUIRY_PATH,
    REVERSAL_PATH,
    AnswerUnreadable,
    Credentials,
    CredentialsRejected,
    QFPayAmbiguous,
    QFPayClient,
    QFPayError,
    QFPayUnavailable,
    ResponseSignatureInvalid,
    Timeouts,
    new_pool,
)
from hypothesis import given
from hypothesis import strategies as st

from tests.canned_http import CannedPool
from tests.conftest import PipelineFactory
from tests.local import lambda_runtime
from tests.local.pipeline import LOCAL_APP_CODE, LOCAL_CLIENT_KEY, Pipeline
from tests.local.qfpay_standin import CANCEL_ENDPOINTS, Fault, Merchant, QFPayStandIn, Transaction
from tests.local.scenarios import SCENARIOS

ROTATED_CLIENT_KEY = "ROTATEDCLIENTKEY0000000000000002"
OLD_SECRET = {"app_code": LOCAL_APP_CODE, "client_key": LOCAL_CLIENT_KEY, "sign_type": "MD5"}
NEW_SECRET = {**OLD_SECRET, "client_key": ROTATED_CLIENT_KEY}
CREDENTIALS = (LOCAL_APP_CODE, LOCAL_CLIENT_KEY, ROTATED_CLIENT_KEY)
TXDTM = "2026-11-26 10:30:00"


def spellings(secret: str) -> set[str]:
    """The ways a value could show up in text: as is, in another case, base64- or hex-encoded."""
    raw = secret.encode("utf-8")
    return {
        secret,
        secret.lower(),
        secret.upper(),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        raw.hex(),
        raw.hex().upper(),
    }


NEEDLES = set().union(*(spellings(c) for c in CREDENTIALS)) | {
    json.dumps(secret, separators=separators)
    for secret in (OLD_SECRET, NEW_SECRET)
    for separators in ((",", ":"), (", ", ": "))
}


def leaks(text: str) -> list[str]:
    return sorted(needle for needle in NEEDLES if needle in text)


def assert_no_leak(where: str, items: list[str]) -> None:
    found = {where + f"[{i}]": leaks(text) for i, text in enumerate(items)}
    found = {name: needles for name, needles in found.items() if needles}
    assert not found, {
        name: (needles, items[int(name.rsplit("[", 1)[1][:-1])][:500]) for name, needles in found.items()
    }


def as_text(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False) + repr(value)


# --------------------------------------------------------------------------- capturing the logs


class Recorder(logging.Handler):
    """Keeps every record twice: formatted (the functions' JSON, with appended keys) and raw."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__(logging.DEBUG)
        if formatter is not None:
            self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is still searched
            self.lines.append(f"(unformattable: {exc!r})")
        self.lines.append(repr(record.__dict__))
        if record.exc_info:
            self.lines.append("".join(traceback.format_exception(*record.exc_info)))


@pytest.fixture
def recorded_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """Every log record of the run, at DEBUG for our code and Powertools; call it for the lines."""
    # Imported here: the first import names the functions' logger (from POWERTOOLS_SERVICE_NAME).
    from cancellation.observability import logger as service_logger  # noqa: PLC0415

    service = logging.getLogger(service_logger.service)
    as_written = Recorder(service_logger.registered_formatter)
    everything = Recorder()
    previous = service.level
    for name in (service_logger.service, "aws_lambda_powertools", "cancellation", "tests"):
        caplog.set_level(logging.DEBUG, logger=name)
    service_logger.setLevel("DEBUG")
    service.addHandler(as_written)
    logging.getLogger().addHandler(everything)
    try:
        yield lambda: as_written.lines + everything.lines + caplog.text.splitlines()
    finally:
        service.removeHandler(as_written)
        logging.getLogger().removeHandler(everything)
        service.setLevel(previous)


# --------------------------------------------------------------------------- capturing the rest


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def queue_depth(url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def drain(url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    ).get("Messages", []):
        messages.extend(batch)
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def executions(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Each execution: its description (input, output, error, cause) and its whole history."""
    sfn = boto3.client("stepfunctions")
    found = []
    for summary in sfn.list_executions(stateMachineArn=pipeline.stack.state_machine_arn)["executions"]:
        arn = summary["executionArn"]
        history = [
            event
            for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
            for event in page["events"]
        ]
        found.append({"description": sfn.describe_execution(executionArn=arn), "history": history})
    return found


def ledger_items(pipeline: Pipeline) -> list[dict[str, Any]]:
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=pipeline.stack.table_name)
    return [item for page in pages for item in page["Items"]]


def function_configurations(pipeline: Pipeline) -> list[dict[str, Any]]:
    client = boto3.client("lambda")
    return [
        client.get_function_configuration(FunctionName=name)
        for name in (pipeline.stack.cancel_function_name, pipeline.stack.poll_function_name)
    ]


def order(out_trade_no: str, syssn: str, txamt: int = 700) -> tuple[Transaction, str]:
    transaction = Transaction(
        syssn=syssn, out_trade_no=out_trade_no, txamt=txamt, txdtm=TXDTM, pay_type="800101"
    )
    body = json.dumps(
        {"out_trade_no": out_trade_no, "syssn": syssn, "txamt": txamt, "txdtm": TXDTM, "pay_type": "800101"}
    )
    return transaction, body


# --------------------------------------------------------------------------- the whole run

pytestmark = pytest.mark.e2e


def test_no_credential_appears_anywhere_a_run_leaves_a_trace(
    pipeline_factory: PipelineFactory,
    recorded_logs: Callable[[], list[str]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert leaks(json.dumps(OLD_SECRET)), "the needles find what they look for"
    assert leaks(f"x{LOCAL_APP_CODE.lower()}x")
    # QFPay's rate limit (429: nothing happens) on every cancel, past the retry horizon.
    down, down_body = order("LEAK-DOWN-0001", "20261126000101000901")
    down.faults = (Fault("http_429", CANCEL_ENDPOINTS),) * 1000
    rotated, rotated_body = order("LEAK-ROTATED-0002", "20261126000101000902")  # 1108 until the DLQ
    recovered, recovered_body = order("LEAK-RECOVERED-0003", "20261126000101000903")  # re-read, then OK
    invalid_body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "7c1e6a1e-0000-4000-8000-000000000001",
            "TopicArn": "arn:aws:sns:ap-east-1:123456789012:order-timeouts",
            "Message": json.dumps(
                {
                    "out_trade_no": "LEAK-INVALID-0004",
                    "txamt": "12.5",
                    "txdtm": TXDTM,
                    "task_token": "caller-1",
                }
            ),
        }
    )
    transactions = [s.transaction for s in SCENARIOS if s.transaction is not None]
    transactions += [down, rotated, recovered]
    sent: list[str] = []
    outcome_events: list[dict[str, Any]] = []
    # QFPay down for longer than the retry horizon: the order ends UNKNOWN, and its requeued
    # messages (with their attributes) are searched too.
    env = {"POWERTOOLS_LOG_LEVEL": "DEBUG", "RETRY_HORIZON_SECONDS": "4"}

    with pipeline_factory(transactions, env_overrides=env) as pipeline:
        stack = pipeline.stack
        # 1. Every demo scenario (confirmed, close, in-progress loop, paid, invalid, a 500 then
        #    success, EventBridge-wrapped), a rejected order with a caller token, an order QFPay
        #    never stops answering 500.
        for body in [*(s.body() for s in SCENARIOS), invalid_body, down_body]:
            pipeline.send(body)
            sent.append(body)
        outcome_events += stack.read_outcome_events(wait_seconds=60, expected=len(SCENARIOS) + 2)
        sfn = boto3.client("stepfunctions")
        wait_for(
            lambda: all(
                e["status"] != "RUNNING"
                for e in sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
            ),
            30,
            "the loop to finish",
        )

        # 2. QFPay rotates the key; the secret still holds the old one: 1108, re-read, 1108, DLQ.
        pipeline.qfpay._merchants = {LOCAL_APP_CODE: Merchant(LOCAL_APP_CODE, ROTATED_CLIENT_KEY)}
        boto3.client("sqs").set_queue_attributes(
            QueueUrl=stack.queue_url, Attributes={"VisibilityTimeout": "1"}
        )
        pipeline.send(rotated_body)
        sent.append(rotated_body)
        wait_for(lambda: queue_depth(stack.dlq_url) == 1, 60, "the 1108 order in the DLQ")

        # 3. The rotation reaches the secret: the next order re-reads it once and is cancelled.
        boto3.client("secretsmanager").put_secret_value(
            SecretId=stack.secret_id, SecretString=json.dumps(NEW_SECRET)
        )
        pipeline.send(recovered_body)
        sent.append(recovered_body)
        outcome_events += stack.read_outcome_events(wait_seconds=30, expected=1)
        outcome_events += stack.read_outcome_events(wait_seconds=1)

        dead = drain(stack.dlq_url)
        left = drain(stack.queue_url)
        runs = executions(pipeline)
        table = ledger_items(pipeline)
        configurations = function_configurations(pipeline)
        invocations = lambda_runtime.invocations()
        qfpay_calls = pipeline.qfpay.calls
        reversals_applied = {t.syssn: pipeline.qfpay.cancellations_applied(t.syssn) for t in transactions}

    # The run did what it was meant to, so the search below looks at real traces.
    details = [event["detail"] for event in outcome_events]
    by_order = {d["out_trade_no"]: d for d in details}
    for scenario in SCENARIOS:
        assert by_order[scenario.order()["out_trade_no"]]["status"] == scenario.expected_status, scenario.name
    assert by_order["LEAK-INVALID-0004"]["status"] == "REJECTED"
    assert by_order["LEAK-RECOVERED-0003"]["status"] == "CANCELLED"
    assert by_order["LEAK-DOWN-0001"]["status"] == "UNKNOWN"
    assert len(details) == len(SCENARIOS) + 3
    assert sorted(json.loads(m["Body"]).get("out_trade_no") for m in dead) == ["LEAK-ROTATED-0002"]
    assert reversals_applied[rotated.syssn] == 0
    # The in-progress scenario's loop and the 500 scenario's (a 500 may come after QFPay acted).
    assert [r["description"]["status"] for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    assert any(isinstance(i.response, dict) and i.response.get("batchItemFailures") for i in invocations), (
        "the 1108 batch reported its records failed: that answer is searched too"
    )
    assert any(c.respcd == "1108" for c in qfpay_calls)
    logs = recorded_logs()
    assert any("QFPay rejected our signature" in line for line in logs)
    assert any("order rejected" in line for line in logs)
    assert any('"level":"INFO"' in line for line in logs), "records below WARNING were captured as written"
    assert any("Adding metric" in line for line in logs), "Powertools' own DEBUG records were captured"
    captured = capfd.readouterr()

    assert_no_leak("log", logs)
    assert_no_leak("stdout", captured.out.splitlines())
    assert_no_leak("stderr", captured.err.splitlines())
    assert_no_leak("outcome event", [as_text(e) for e in outcome_events])
    assert_no_leak("sent body", sent)
    assert_no_leak("dead letter", [as_text(m) for m in dead])
    assert_no_leak("queue message", [as_text(m) for m in left])
    assert_no_leak("lambda invocation", [as_text(i) for i in invocations])
    assert_no_leak("execution", [as_text(run) for run in runs])
    assert_no_leak("ledger record", [as_text(item) for item in table])
    assert_no_leak("function configuration", [as_text(c) for c in configurations])
    # What we sent QFPay as parameters (the app code travels in its header, the key nowhere).
    assert_no_leak("qfpay parameters", [as_text(c.params) for c in qfpay_calls])


def test_an_app_code_with_a_line_break_never_reaches_the_logs(
    pipeline_factory: PipelineFactory,
    recorded_logs: Callable[[], list[str]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A secret whose app_code holds CR/LF (a paste gone wrong, or a header injection): the order
    fails and is retried, and nothing anywhere carries the app code."""
    app_code = "LEAKYAPPCODE\r\nX-Injected: 1"
    merchant = Merchant(app_code, LOCAL_CLIENT_KEY)
    transaction, body = order("LEAK-CRLF-0005", "20261126000101000905")
    env = {"POWERTOOLS_LOG_LEVEL": "DEBUG", "RETRY_BASE_DELAY_SECONDS": "1", "RETRY_MAX_DELAY_SECONDS": "1"}
    with pipeline_factory([transaction], env_overrides=env, merchant=merchant) as pipeline:
        pipeline.send(body)
        wait_for(
            lambda: any(
                isinstance(i.response, dict) and i.response.get("batchItemFailures")
                for i in lambda_runtime.invocations()
            ),
            30,
            "the order to fail",
        )
        invocations = lambda_runtime.invocations()
        qfpay_calls = pipeline.qfpay.calls
    logs = recorded_logs()
    captured = capfd.readouterr()
    for where, texts in (
        ("log", logs),
        ("stdout", captured.out.splitlines()),
        ("stderr", captured.err.splitlines()),
        ("lambda invocation", [as_text(i) for i in invocations]),
    ):
        found = [text[:300] for text in texts if "LEAKYAPPCODE" in text]
        assert not found, (where, found)
    assert any("app_code must be printable ASCII" in line for line in logs), "the reason is logged"
    assert qfpay_calls == [], "nothing was sent with a header that cannot be sent"


# --------------------------------------------------------------------------- the objects themselves


def test_repr_of_the_credentials_hides_them() -> None:
    credentials = Credentials.from_secret(OLD_SECRET)
    for text in (
        repr(credentials),
        str(credentials),
        f"{credentials}",
        f"{credentials!r}",
        as_text(credentials),
    ):
        assert not leaks(text), text
    assert "sign_type='MD5'" in repr(credentials)


secret_values = st.text(min_size=3, max_size=30).map(lambda text: f"S3CR3T<{text}>")


@given(
    app_code=secret_values | st.integers() | st.none(),
    client_key=secret_values | st.integers() | st.none() | st.just(""),
    sign_type=secret_values | st.sampled_from(["MD5", "SHA256", "md5", None]),
)
def test_a_bad_secret_is_reported_without_its_values(app_code: Any, client_key: Any, sign_type: Any) -> None:
    value = {"app_code": app_code, "client_key": client_key, "sign_type": sign_type}
    well_formed = (
        isinstance(app_code, str)
        and bool(app_code)
        and all("!" <= char <= "~" for char in app_code)  # it travels in a header
        and isinstance(client_key, str)
        and bool(client_key)
        and sign_type in (None, "MD5", "SHA256")
    )
    if well_formed:
        assert "S3CR3T<" not in repr(Credentials.from_secret(value))
        return
    with pytest.raises(ValueError, match=r"^QFPay secret: ") as caught:
        Credentials.from_secret(value)
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value.args)
    assert "S3CR3T<" not in text, text


def _canned_session(body: bytes, headers: dict[str, str] | None = None) -> CannedPool:
    """A QFPay answering with a fixed response (for answers the stand-in never gives)."""
    return CannedPool(body=body, headers=headers or {})


def _client(base_url: str, http: Any = None, **kwargs: Any) -> QFPayClient:
    credentials = Credentials.from_secret(OLD_SECRET)
    return QFPayClient(base_url, lambda force: credentials, http=http or new_pool(), **kwargs)


def _unused_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception shows: message, args, repr, the traceback with its chain, and the
    message of every exception chained to it (even a suppressed context)."""
    texts = ["".join(traceback.format_exception(exc)), repr(exc.args), repr(vars(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


@pytest.fixture(scope="module")
def standin() -> Iterator[QFPayStandIn]:
    merchants = [Merchant(LOCAL_APP_CODE, LOCAL_CLIENT_KEY)]
    slow = Transaction(
        syssn="20261126000101000991",
        out_trade_no="SLOW-1",
        txamt=100,
        txdtm=TXDTM,
        pay_type="800101",
        latency=1.0,
    )
    down = Transaction(
        syssn="20261126000101000992",
        out_trade_no="DOWN-1",
        txamt=100,
        txdtm=TXDTM,
        pay_type="800101",
        http_500_first=1000,
    )
    with QFPayStandIn(merchants, transactions=[slow, down]) as running:
        yield running


def _failures(standin: QFPayStandIn) -> list[tuple[str, type[QFPayError], Callable[[], Any]]]:
    url = standin.base_url
    reversal = {"syssn": "20261126000101000992", "txamt": "100", "txdtm": TXDTM}
    slow = {"syssn": "20261126000101000991", "txamt": "100", "txdtm": TXDTM}
    wrong_key = Credentials(LOCAL_APP_CODE, ROTATED_CLIENT_KEY)
    unknown_app = Credentials("SOMEONEELSE", LOCAL_CLIENT_KEY)
    short = Timeouts(connect=1.0, read=0.2)
    return [
        ("HTTP 500", QFPayAmbiguous, lambda: _client(url).reversal(reversal)),
        (
            "connection refused",
            QFPayUnavailable,
            lambda: _client(f"http://127.0.0.1:{_unused_port()}").reversal(slow),
        ),
        ("read timeout", QFPayAmbiguous, lambda: _client(url, timeouts=short).reversal(slow)),
        (
            "enquiry timeout",
            QFPayUnavailable,
            lambda: _client(url, timeouts=short).enquiry({"syssn": slow["syssn"]}),
        ),
        ("HTTP 404", QFPayAmbiguous, lambda: _client(url + "/nowhere").reversal(slow)),
        (
            "signature rejected twice",
            CredentialsRejected,
            lambda: QFPayClient(url, lambda force: wrong_key, http=new_pool()).reversal(slow),
        ),
        (
            "unknown app code",
            CredentialsRejected,
            lambda: QFPayClient(url, lambda force: unknown_app, http=new_pool()).enquiry({"syssn": "1"}),
        ),
        (
            "answer not JSON",
            AnswerUnreadable,
            lambda: _client("https://qfpay.invalid", _canned_session(b"<html>busy</html>")).reversal(slow),
        ),
        (
            "response signature wrong",
            ResponseSignatureInvalid,
            lambda: _client(
                "https://qfpay.invalid",
                _canned_session(b'{"respcd": "0000"}', {"X-QF-SIGN": "0" * 32}),
                verify_response_signature=True,
            ).call("POST", ENQUIRY_PATH, slow),
        ),
    ]


FAILURE_NAMES = [
    "HTTP 500",
    "connection refused",
    "read timeout",
    "enquiry timeout",
    "HTTP 404",
    "signature rejected twice",
    "unknown app code",
    "answer not JSON",
    "response signature wrong",
]


@pytest.mark.parametrize("failure", FAILURE_NAMES)
def test_exceptions_from_the_qfpay_client_carry_no_credentials(standin: QFPayStandIn, failure: str) -> None:
    ((name, expected, call),) = [f for f in _failures(standin) if f[0] == failure]
    with pytest.raises(QFPayError) as caught:
        call()
    assert type(caught.value) is expected, (name, caught.value)
    for text in exception_texts(caught.value):
        assert not leaks(text), (name, text)
    assert REVERSAL_PATH in str(caught.value) or ENQUIRY_PATH in str(caught.value)
