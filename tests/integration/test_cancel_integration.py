"""The cancel function against moto and the QFPay stand-in over real HTTP: QFPay's answers that
need more than one delivery (backoff, credentials, duplicates, redelivery after a crash)."""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any

import boto3
import pytest
from cancellation.aws import DecisionLedger

from tests.conftest import PipelineFactory, wait_for
from tests.local import lambda_runtime
from tests.local.qfpay_standin import Anomaly, Fault, Merchant, Transaction

FAST_RETRIES = {"RETRY_BASE_DELAY_SECONDS": "1", "RETRY_MAX_DELAY_SECONDS": "4"}


def order_and_txn(n: int, **script: Any) -> tuple[dict[str, Any], Transaction]:
    order = {
        "out_trade_no": f"IT-{n:04d}",
        "syssn": f"2026112600010100{n:04d}",
        "txamt": 1000 + n,
        "txdtm": "2026-11-26 11:00:00",
        "pay_type": script.pop("pay_type", "800101"),
        "txcurrcd": "HKD",
    }
    txn = Transaction(
        syssn=order["syssn"],
        out_trade_no=order["out_trade_no"],
        txamt=order["txamt"],
        txdtm=order["txdtm"],
        pay_type=order["pay_type"],
        **script,
    )
    return order, txn


def test_try_later_is_retried_by_time_not_by_count_then_ends_unknown_and_never_in_the_dlq(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay answering "try later" (or 5xx, or nothing) must not spend the message's receives: an
    outage longer than five backoffs would otherwise send every order to the DLQ. The order goes
    back to the queue with a growing, jittered delay until the retry horizon, then ends UNKNOWN."""
    order, txn = order_and_txn(1, cancel_respcd="1205")  # QFPay: "try later", every time
    env = {**FAST_RETRIES, "RETRY_HORIZON_SECONDS": "12"}
    with pipeline_factory([txn], env_overrides=env) as pipeline:
        pipeline.send(order)
        pipeline.collect_outcomes(expected=1, timeout=60)
        calls = [c for c in pipeline.qfpay.calls if c.endpoint == "/trade/v1/reversal"]
        dead = pipeline.dead_letters_count()
    (outcome,) = pipeline.outcomes.values()
    assert outcome["status"] == "UNKNOWN"
    assert "could not be reached for" in outcome["reason"]
    assert "1205" in outcome["reason"]
    assert dead == 0
    # Several attempts, none took effect, none spent a receive toward the DLQ.
    assert len(calls) >= 3
    assert pipeline.qfpay.cancellations_applied(txn.syssn) == 0
    # Jittered between half and all of min(max, base * 2^n) = 1, 2, 4, 4... s, in whole seconds.
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(calls)]
    for attempt, gap in enumerate(gaps, start=1):
        assert gap >= math.ceil(min(4, 2 ** (attempt - 1)) / 2) - 0.05, gaps
    assert calls[-1].timestamp - calls[0].timestamp <= 12 + 4 + 2


def test_a_cancel_qfpay_refused_with_429_is_sent_again_without_an_enquiry_first(
    pipeline_factory: PipelineFactory,
) -> None:
    """HTTP 429 shows QFPay did nothing, and the ledger's count of cancels that may have reached
    QFPay is back at 0: the next attempt has nothing of ours to look for, so it sends its cancel
    without an Enquiry first. Under the merchant's rate limit (or a spent budget, the same path)
    an extra Enquiry for every order sent back would spend the very requests it is short of."""
    order, txn = order_and_txn(19, faults=(Fault("http_429", endpoints=("reversal",)),))
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        calls = [(c.endpoint.rsplit("/", 1)[-1], c.http_status) for c in pipeline.qfpay.calls]
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert [o["status"] for o in outcomes] == ["CANCELLED"]
    assert calls == [("reversal", 429), ("reversal", 200), ("query", 200)]
    assert applied == 1


def test_bank_risk_control_is_never_retried(pipeline_factory: PipelineFactory) -> None:
    order, txn = order_and_txn(2, cancel_respcd="1294")
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=15)
        outcomes += pipeline.collect_outcomes(2, timeout=3)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        dead = pipeline.dead_letters()
    assert [(o["status"], o["respcd"]) for o in outcomes] == [("UNKNOWN", "1294")]
    assert "risk control" in outcomes[0]["reason"]
    assert (reversals, dead) == (1, [])


def test_a_duplicate_of_a_risk_refused_order_is_refused_again_under_the_same_identity(
    pipeline_factory: PipelineFactory,
) -> None:
    """Bank risk control refused the first message's cancel: nothing of ours is pending. A later
    duplicate reads QFPay's record first (a refused cancel reached QFPay) and, the payment still
    open, makes the same request: the same refusal, the same outcome_id. Not a wait in the loop for
    a cancel QFPay refused, ending in a second outcome (found by the 2,000-order soak)."""
    order, txn = order_and_txn(20, cancel_respcd="1294")
    with pipeline_factory([txn], env_overrides={"POLL_DEADLINE_SECONDS": "8"}) as pipeline:
        pipeline.send(order)
        [first] = pipeline.collect_outcomes(1, timeout=15)
        pipeline.send(order)
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        later = pipeline.stack.read_outcomes(wait_seconds=12)  # past a loop's deadline, if any
        calls = [(c.endpoint.rsplit("/", 1)[-1], c.respcd) for c in pipeline.qfpay.calls]
        executions = pipeline.executions()
    assert (first["status"], first["respcd"]) == ("UNKNOWN", "1294")
    assert [(o["status"], o["outcome_id"]) for o in later] == [("UNKNOWN", first["outcome_id"])]
    assert calls == [("reversal", "1294"), ("query", "0000"), ("reversal", "1294")]
    assert executions == []


def test_a_signature_refused_after_the_secret_is_re_read_dead_letters_the_order(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay's key changed but the secret was not updated: one re-read, then SQS retries, then the
    DLQ. The order is not lost and QFPay never reversed anything."""
    order, txn = order_and_txn(3)
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        pipeline.qfpay.set_merchant(
            Merchant(app_code=pipeline.merchant.app_code, client_key="ROTATED-AT-QFPAY")
        )
        pipeline.send(order)
        assert wait_for(lambda: pipeline.dead_letters_count() == 1, timeout=40)
        refused = [c for c in pipeline.qfpay.calls if c.respcd == "1108"]
        outcomes = pipeline.stack.read_outcomes(wait_seconds=0.5)
    # Each of the 5 receives: the call with the cached key, then one with the re-read secret.
    assert len(refused) == 2 * 5
    assert outcomes == []
    assert pipeline.qfpay.cancellations_applied(txn.syssn) == 0


def test_close_is_sent_with_the_configured_method(pipeline_factory: PipelineFactory) -> None:
    order, txn = order_and_txn(4, pay_type="800208")
    with pipeline_factory(
        [txn], env_overrides={"CLOSE_HTTP_METHOD": "POST"}, close_methods=("POST",)
    ) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=15)
        closes = [c for c in pipeline.qfpay.calls if c.endpoint == "/trade/v1/close"]
    assert [(o["status"], o["endpoint"]) for o in outcomes] == [("CANCELLED", "close")]
    assert [c.method for c in closes] == ["POST"]


def test_a_duplicate_across_batches_gets_no_second_cancel_or_outcome(
    pipeline_factory: PipelineFactory,
) -> None:
    order, txn = order_and_txn(5)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        first = pipeline.collect_outcomes(1, timeout=15)
        pipeline.send(json.dumps(order))  # the same order again, after it was decided
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=15)
        later = pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
    assert [o["status"] for o in first] == ["CANCELLED"]
    assert later == []
    assert reversals == 1


def test_a_redelivery_after_a_crash_asks_qfpay_before_reversing_again(
    pipeline_factory: PipelineFactory,
) -> None:
    """An earlier attempt reversed the payment and then died before recording anything. The
    redelivered message must not reverse again: the Enquiry shows it done."""
    order, txn = order_and_txn(6, cancel=1)  # QFPay's ledger: already reversed by the dead attempt
    with pipeline_factory([txn]) as pipeline:
        sqs = boto3.client("sqs")
        # Take the message once without deleting it, as the crashed invocation did.
        pipeline.source.stop()
        pipeline.send(order)
        first = sqs.receive_message(QueueUrl=pipeline.stack.queue_url, MaxNumberOfMessages=1)["Messages"][0]
        sqs.change_message_visibility(
            QueueUrl=pipeline.stack.queue_url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
        )
        pipeline.source.start()
        outcomes = pipeline.collect_outcomes(1, timeout=15)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        enquiries = pipeline.qfpay.count("query", txn.syssn)
    assert [(o["status"], o["attempts"]) for o in outcomes] == [("CANCELLED", 0)]
    assert (reversals, enquiries) == (0, 1)


def test_an_attempt_that_died_before_its_cancel_left_leaves_the_order_its_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    """The first invocation claims the order and dies at its next request, before any cancel
    leaves. The redelivered message asks the Enquiry first (an attempt came before), finds the
    payment live and no cancel of ours counted, and sends the order's cancel: CANCELLED, one
    reversal. (Counted at the claim, the dead attempt would forbid any cancel: UNKNOWN.)"""
    order, txn = order_and_txn(19)
    planned: list[str] = []

    def die_once(function_name: str, event: Any) -> lambda_runtime.Crash | None:
        if planned or not (isinstance(event, dict) and event.get("Records")):
            return None
        planned.append(function_name)
        return lambda_runtime.Crash(1, "Runtime.ExitError")  # right after the claim was sent

    env = {"POLL_DEADLINE_SECONDS": "8", "RETRY_MAX_DELAY_SECONDS": "8"}
    with pipeline_factory([txn], env_overrides=env) as pipeline:
        # As deployed, a redelivery comes after the dead attempt's lease (its function timeout).
        boto3.client("lambda").update_function_configuration(
            FunctionName=pipeline.stack.cancel_function_name, Timeout=8
        )
        boto3.client("sqs").set_queue_attributes(
            QueueUrl=pipeline.stack.queue_url, Attributes={"VisibilityTimeout": "12"}
        )
        lambda_runtime.inject_crashes(die_once)
        try:
            pipeline.send(order)
            outcomes = pipeline.collect_outcomes(1, timeout=60)
        finally:
            lambda_runtime.inject_crashes(None)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        enquiries = pipeline.qfpay.count("query", txn.syssn)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert len(planned) == 1
    assert [o["status"] for o in outcomes] == ["CANCELLED"]
    assert (reversals, applied) == (1, 1)
    assert enquiries >= 1  # asked before the cancel


def test_every_caller_of_an_order_in_the_loop_is_answered(
    pipeline_factory: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every caller hears the loop's outcome from the cancel function: the first one and one
    arriving while the loop runs, their messages held until it decides; one arriving after the
    loop decided at once. The loop itself never holds a token."""
    from cancellation.aws import CallerNotifier  # noqa: PLC0415 - the class the handler uses
    from cancellation.models import OutcomeDetail  # noqa: PLC0415

    answers: list[tuple[str, str]] = []
    notify, fail = CallerNotifier.notify, CallerNotifier.fail

    def spy_notify(self: CallerNotifier, task_token: str, detail: OutcomeDetail) -> bool:
        answers.append((task_token, detail["status"]))
        return notify(self, task_token, detail)

    def spy_fail(self: CallerNotifier, task_token: str, error: str, cause: str) -> bool:
        answers.append((task_token, error))
        return fail(self, task_token, error, cause)

    monkeypatch.setattr(CallerNotifier, "notify", spy_notify)  # the handler runs in this process
    monkeypatch.setattr(CallerNotifier, "fail", spy_fail)
    order, txn = order_and_txn(7, in_progress_enquiries=3)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send({**order, "task_token": "caller-first"})
        assert wait_for(lambda: len(pipeline.executions()) == 1, timeout=15)
        pipeline.send({**order, "task_token": "caller-during"})
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        assert wait_for(lambda: pipeline.executions()[0]["status"] != "RUNNING", timeout=15)
        assert wait_for(lambda: len(answers) == 2, timeout=30), answers
        pipeline.send({**order, "task_token": "caller-after"})
        assert wait_for(lambda: len(answers) == 3, timeout=15), answers
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        history = boto3.client("stepfunctions").get_execution_history(
            executionArn=pipeline.executions()[0]["executionArn"], maxResults=1000
        )["events"]
    assert [o["status"] for o in outcomes] == ["CANCELLED"]
    assert sorted(answers[:2]) == [("caller-during", "CANCELLED"), ("caller-first", "CANCELLED")]
    assert answers[2] == ("caller-after", "CANCELLED")
    assert "caller-" not in json.dumps(history, default=str)
    assert reversals == 1


def decide_one(
    pipeline_factory: PipelineFactory, order: dict[str, Any], txn: Transaction, env: dict[str, str]
) -> tuple[list[dict[str, Any]], int, int]:
    """Send one order; its outcomes, the reversals QFPay received and, once every cancellation in
    progress has ended, how many QFPay applied."""
    with pipeline_factory([txn], env_overrides=env) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        pipeline.qfpay.settle()
        return outcomes, reversals, pipeline.qfpay.cancellations_applied(txn.syssn)


@pytest.mark.parametrize(
    ("n", "script", "env"),
    [
        pytest.param(
            8,
            {"faults": (Fault("applied_then_timeout", endpoints=("reversal",), seconds=3.0),)},
            {"QFPAY_READ_TIMEOUT_SECONDS": "1"},
            id="applied, its answer timed out",
        ),
        pytest.param(
            18,
            {
                "in_progress_enquiries": 3,
                "anomaly": Anomaly("repeat_applies"),
                "faults": (Fault("applied_then_reset", endpoints=("reversal",)),),
            },
            {},
            id="started, in progress for three Enquiries, its connection reset",
        ),
    ],
)
def test_a_reversal_applied_but_unanswered_is_decided_by_the_enquiry_not_resent(
    pipeline_factory: PipelineFactory, n: int, script: dict[str, Any], env: dict[str, str]
) -> None:
    """QFPay applied or started our reversal but its answer never arrived. A cancel sent while it
    processes would start a second one (QFPay does not document that it deduplicates): the loop
    only asks, its Enquiry finds the payment reversed, and nothing is sent a second time."""
    outcomes, reversals, applied = decide_one(pipeline_factory, *order_and_txn(n, **script), env)
    assert [(o["status"], o["decided_by"], o["resent"]) for o in outcomes] == [
        ("CANCELLED", "poll-loop", False)
    ]
    assert (reversals, applied) == (1, 1)


def test_a_reversal_whose_answer_was_lost_is_never_resent_while_the_payment_reads_live(
    pipeline_factory: PipelineFactory,
) -> None:
    """The connection was reset after the reversal was sent: QFPay may be processing it, and a
    payment whose reversal processes reads live (1143, cancel 0). Nothing is sent again; the loop
    asks until its deadline and says UNKNOWN, explained (it was in fact lost on the way)."""
    order, txn = order_and_txn(9, faults=(Fault("reset", endpoints=("reversal",)),))
    with pipeline_factory([txn], env_overrides={"POLL_DEADLINE_SECONDS": "8"}) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        enquiries = pipeline.qfpay.count("query", txn.syssn)
    assert [(o["status"], o["decided_by"], o["resent"], o["attempts"]) for o in outcomes] == [
        ("UNKNOWN", "poll-loop", False, 1)
    ]
    assert "may still be processing" in outcomes[0]["reason"]
    assert (reversals, enquiries >= 2) == (1, True)


def test_a_first_delivery_after_an_attempt_died_still_asks_before_cancelling(
    pipeline_factory: PipelineFactory,
) -> None:
    """A duplicate message (receive count 1) arrives after an attempt for the same order died
    mid-way and its lease ran out. The claim it left makes the new attempt ask the Enquiry
    first, so the cancel already at QFPay is not sent again."""
    order, txn = order_and_txn(10, cancel=1)  # QFPay's ledger: the dead attempt's reversal took effect
    with pipeline_factory([txn]) as pipeline:
        boto3.client("dynamodb").put_item(  # the dead attempt's claim, its lease run out
            TableName=pipeline.stack.table_name,
            Item={
                "id": {"S": f"cancel#syssn={order['syssn']}"},  # the payment's identity
                "stage": {"S": "DECIDING"},
                "holder": {"S": "an-attempt-that-died"},
                "lease_until": {"N": str(time.time() - 1)},
                "expiration": {"N": str(int(time.time()) + 3600)},
            },
        )
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=15)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
    assert [(o["status"], o["attempts"]) for o in outcomes] == [("CANCELLED", 0)]
    assert reversals == 0


def test_a_decision_stored_but_never_published_is_published_by_the_next_message(
    pipeline_factory: PipelineFactory,
) -> None:
    """An attempt stored its decision and died before publishing it: the next message for the order
    publishes the stored decision, as it was decided, and QFPay is not asked again."""
    order, txn = order_and_txn(11)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        [decided] = pipeline.collect_outcomes(1, timeout=15)
        asked = len(pipeline.qfpay.calls)
        # Put the order's record back to where that attempt died: decided, not delivered, lease run out.
        boto3.client("dynamodb").update_item(
            TableName=pipeline.stack.table_name,
            Key={"id": {"S": f"cancel#syssn={order['syssn']}"}},  # the payment's identity
            UpdateExpression="SET stage = :decided, lease_until = :gone REMOVE #result",
            ExpressionAttributeNames={"#result": "result"},
            ExpressionAttributeValues={":decided": {"S": "DECIDED"}, ":gone": {"N": str(time.time() - 1)}},
        )
        pipeline.send(order)
        published = pipeline.stack.read_outcomes(wait_seconds=15, expected=1)
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=15)
        asked_after = len(pipeline.qfpay.calls)
    assert published == [decided]  # the stored decision, decided_at and all
    assert asked_after == asked


def test_an_outcome_eventbridge_refused_is_published_on_the_next_receive_without_asking_qfpay(
    pipeline_factory: PipelineFactory,
) -> None:
    """EventBridge refuses the outcome once (a failed entry, as under throttling): the message is
    received again and the stored decision is published; QFPay is asked once, not twice."""
    from botocore.awsrequest import AWSResponse  # noqa: PLC0415

    refused: list[str] = []

    def refuse_once(params: dict[str, Any], **_: Any) -> Any:
        if refused:
            return None  # send it for real
        refused.append(json.loads(params["body"])["Entries"][0]["Detail"])  # the request as sent
        failed = {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}
        return AWSResponse("", 200, {}, None), {"FailedEntryCount": 1, "Entries": [failed]}

    order, txn = order_and_txn(12)
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        # The handler's clients are made from the default session on first use, hook included.
        boto3._get_default_session().events.register("before-call.events.PutEvents", refuse_once)
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        enquiries = pipeline.qfpay.count("query", txn.syssn)
    assert len(refused) == 1
    assert [o["status"] for o in outcomes] == ["CANCELLED"]
    assert [o["decided_at"] for o in outcomes] == [json.loads(refused[0])["decided_at"]]
    # The message names the syssn: no look-up; one Enquiry confirming; none on the second receive.
    assert (reversals, enquiries) == (1, 1)


def test_with_verification_on_an_unsigned_answer_is_never_believed(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay (or whoever stripped the header) answers without X-QF-SIGN. The reversal did take
    effect, but nothing unsigned is believed: the order ends UNKNOWN at the loop's deadline, never
    CANCELLED on an answer anyone could have written."""
    order, txn = order_and_txn(21)
    env = {"QFPAY_VERIFY_RESPONSE_SIGNATURE": "true", "POLL_DEADLINE_SECONDS": "5"}
    with pipeline_factory([txn], env_overrides=env) as pipeline:
        pipeline.qfpay.sign_answers = False
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
    assert [o["status"] for o in outcomes] == ["UNKNOWN"]
    assert "X-QF-SIGN" in outcomes[0]["reason"]
    assert reversals == 1  # ambiguous, never resent blindly


def test_with_verification_on_a_rotated_key_is_re_read_on_the_enquiry_and_the_order_cancelled(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay's key was rotated and the secret updated; the function's cached key is stale. QFPay's
    answer (1108) is signed with the new key, so its signature fails before the 1108 is read: the
    Enquiry asked before the cancel (read-only: the message names only out_trade_no, so its syssn is
    looked up) re-reads the secret and asks again."""
    order, txn = order_and_txn(22)
    del order["syssn"]
    warm_order, warm_txn = order_and_txn(23)
    env = {"QFPAY_VERIFY_RESPONSE_SIGNATURE": "true", **FAST_RETRIES}
    with pipeline_factory([txn, warm_txn], env_overrides=env) as pipeline:
        pipeline.send(warm_order)  # warms the function's credentials cache (then stale)
        pipeline.collect_outcomes(1, timeout=20)
        pipeline.rotate_credentials("ROTATED-KEY-22", sign_type="SHA256")
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(2, timeout=30)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
    assert [o["status"] for o in outcomes if o["out_trade_no"] == order["out_trade_no"]] == ["CANCELLED"]
    assert reversals == 1


def fail_dynamodb_writes(times: int, marker: str) -> list[str]:
    """Have DynamoDB answer an internal error to the next ``times`` UpdateItem calls whose update
    expression names ``marker`` (as a throttled or failing table would). Returns the refused ones."""
    from botocore.awsrequest import AWSResponse  # noqa: PLC0415

    refused: list[str] = []

    def refuse(params: dict[str, Any], **_: Any) -> Any:
        expression = json.loads(params["body"]).get("UpdateExpression", "")
        if marker not in expression or len(refused) >= times:
            return None  # sent for real
        refused.append(expression)
        error = {"Error": {"Code": "InternalServerError", "Message": "Internal server error"}}
        return AWSResponse("", 500, {}, None), error

    boto3._get_default_session().events.register("before-call.dynamodb.UpdateItem", refuse)
    return refused


def test_a_decision_dynamodb_refuses_to_store_never_leads_to_a_second_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    """The reversal answers "in progress", then storing the decision fails, twice. The payment's
    row keeps reading 1143 / cancel 0 while QFPay processes our reversal, which looks like a live
    payment: each later attempt asks the Enquiry, and since the earlier attempt's cancel may still
    take effect, sends nothing and hands the order to the loop."""
    order, txn = order_and_txn(13, in_progress_enquiries=4)
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        refused = fail_dynamodb_writes(2, "#decision")
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=60)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert len(refused) == 2
    assert [(o["status"], o["decided_by"]) for o in outcomes] == [("CANCELLED", "poll-loop")]
    assert (reversals, applied) == (1, 1)


def test_a_reversal_answered_502_is_not_resent_within_qfpays_settle_time(
    pipeline_factory: PipelineFactory,
) -> None:
    """A gateway answers 502, which may come after QFPay acted (here it did not): the Enquiry shows
    the payment live, but a reversal of ours may be processing, so within QFPay's settle time
    (120 s, longer than this loop's deadline) the loop only asks the Enquiry, and ends UNKNOWN at
    its deadline."""
    bad_gateway = Fault("http_5xx", endpoints=("reversal",), status=502)
    order, txn = order_and_txn(14, faults=(bad_gateway,) * 4)
    with pipeline_factory([txn], env_overrides={"POLL_DEADLINE_SECONDS": "8"}) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        enquiries = pipeline.qfpay.count("query", txn.syssn)
    assert [(o["status"], o["resent"], o["attempts"]) for o in outcomes] == [("UNKNOWN", False, 1)]
    assert reversals == 1
    assert enquiries >= 3


def test_a_reversal_answered_503_in_an_outage_is_sent_again_once_qfpay_shows_the_payment_live_past_settling(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay is down: our reversal is answered 503 (nothing took effect, which we cannot know), and
    so are the loop's first Enquiries. Once QFPay answers again and has shown the payment live for
    its settle time, the first reversal did nothing: the loop sends its one resend, and the order
    ends CANCELLED, cancelled once."""
    down = Fault("http_5xx", status=503)
    env = {"QFPAY_SETTLE_SECONDS": "3", "POLL_DEADLINE_SECONDS": "30"}
    outcomes, reversals, applied = decide_one(pipeline_factory, *order_and_txn(19, faults=(down,) * 3), env)
    assert [(o["status"], o["decided_by"], o["resent"], o["attempts"]) for o in outcomes] == [
        ("CANCELLED", "poll-loop", True, 2)
    ]
    assert (reversals, applied) == (2, 1)


def test_a_reversal_answered_502_after_qfpay_applied_it_is_confirmed_by_the_enquiry(
    pipeline_factory: PipelineFactory,
) -> None:
    """A gateway answers 502 although QFPay reversed the payment: not "certainly not sent", so it
    is not retried blindly; the loop's Enquiry finds the payment reversed."""
    order, txn = order_and_txn(15, faults=(Fault("applied_then_5xx", endpoints=("reversal",), status=502),))
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert [(o["status"], o["decided_by"], o["resent"]) for o in outcomes] == [
        ("CANCELLED", "poll-loop", False)
    ]
    assert (reversals, applied) == (1, 1)


def test_a_loop_that_already_decided_the_order_is_read_not_assumed(pipeline_factory: PipelineFactory) -> None:
    """The order's loop decided it; later its ledger record is gone (48 h) and a new message for
    the order hands it to the loop again. The execution of that name exists: its outcome is
    delivered again (same outcome_id), not taken as "the loop will answer" by a loop that ended."""
    order, txn = order_and_txn(17, in_progress_enquiries=1)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        [first] = pipeline.collect_outcomes(1, timeout=30)
        assert wait_for(lambda: pipeline.executions()[0]["status"] == "SUCCEEDED", timeout=15)
        boto3.client("dynamodb").delete_item(  # the record's TTL ran out and DynamoDB swept it
            TableName=pipeline.stack.table_name,
            Key={"id": {"S": f"cancel#syssn={order['syssn']}"}},  # the payment's identity
        )
        pipeline.qfpay.update(txn.syssn, cancel_respcd="1143")  # the new cancel: "in progress"
        pipeline.send(order)
        again = pipeline.stack.read_outcomes(wait_seconds=20, expected=1)
        executions = pipeline.executions()
    assert first["status"] == "CANCELLED"
    assert [(o["status"], o["outcome_id"]) for o in again] == [("CANCELLED", first["outcome_id"])]
    assert len(executions) == 1


def test_a_loop_that_ended_without_an_outcome_is_followed_by_a_new_one_and_its_caller_hears_it(
    pipeline_factory: PipelineFactory,
) -> None:
    """The order's loop ended without deciding (stopped by an operator, say), and later its ledger
    record is gone. A caller sends the order again: the hand-off finds the execution of that name
    ended, with no outcome to deliver. A new execution, of a name of its own, asks the Enquiry
    (never resending: the old loop may have) and decides; the caller hears that loop's outcome,
    not a failure read from the old one."""
    order, txn = order_and_txn(18, in_progress_enquiries=10_000)  # the first loop never decides
    sfn = boto3.client("stepfunctions")
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(order)
        assert wait_for(lambda: [e["status"] for e in pipeline.executions()] == ["RUNNING"], timeout=30)
        (old,) = pipeline.executions()
        sfn.stop_execution(
            executionArn=old["executionArn"], error="Operator.Stopped", cause="looked at by hand"
        )
        assert wait_for(lambda: pipeline.executions()[0]["status"] == "ABORTED", timeout=15)
        boto3.client("dynamodb").delete_item(  # the record's TTL ran out and DynamoDB swept it
            TableName=pipeline.stack.table_name,
            Key={"id": {"S": f"cancel#syssn={order['syssn']}"}},  # the payment's identity
        )
        # The first cancel has taken effect meanwhile; the new one answers "in progress".
        assert pipeline.qfpay.settle() == 1
        pipeline.qfpay.update(txn.syssn, cancel_respcd="1143")
        caller = pipeline.run_caller({**order, "mchid": None, "udid": None}, timeout=60)
        outcomes = pipeline.collect_outcomes(1, timeout=15)
        executions = {e["name"]: e for e in pipeline.executions()}
        reversals = [c for c in pipeline.qfpay.calls if c.endpoint == "/trade/v1/reversal"]
    assert caller["status"] == "SUCCEEDED", caller.get("cause")
    heard = json.loads(caller["output"])["outcome"]
    assert (heard["status"], heard["decided_by"]) == ("CANCELLED", "poll-loop")
    assert [(o["status"], o["outcome_id"]) for o in outcomes] == [("CANCELLED", heard["outcome_id"])]
    assert len(executions) == 2
    new = next(e for name, e in executions.items() if name != old["name"])
    assert new["name"].startswith(old["name"] + "-")
    assert new["status"] == "SUCCEEDED"
    assert len(reversals) == 2  # the first message's, the new message's; the new loop sent none
    assert pipeline.qfpay.cancellations_applied(txn.syssn) == 1


def test_an_order_held_by_another_attempt_waits_for_its_lease_without_spending_receives(
    pipeline_factory: PipelineFactory,
) -> None:
    """Another attempt holds the order longer than five backoffs (a duplicate's attempt waiting for
    the merchant's budget, or one that died holding its lease). Waiting for it is not a failure
    of this message: it must not spend its receives into the DLQ, and once the lease ends the
    order is decided (before: dead-lettered after five "already being cancelled elsewhere")."""
    order, txn = order_and_txn(31)
    with pipeline_factory([txn], env_overrides=FAST_RETRIES) as pipeline:
        now = time.time()
        DecisionLedger(pipeline.stack.table_name, 3600).claim(
            f"cancel#syssn={order['syssn']}", "an attempt that died holding its lease", now, now + 20
        )
        pipeline.send(order)
        outcomes = pipeline.collect_outcomes(1, timeout=60)
        dead = pipeline.dead_letters_count()
        reversals = pipeline.qfpay.count("reversal", txn.syssn)
    assert dead == 0
    assert [o["status"] for o in outcomes] == ["CANCELLED"]
    assert reversals == 1


def test_an_attempt_that_could_not_read_the_secret_sent_nothing_and_leaves_the_order_its_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    """The merchant's secret cannot be read as credentials when the cancel is about to leave (here
    it is not JSON; Secrets Manager or KMS refusing the read fails alike): no byte reaches QFPay.
    Once the secret is right, the message's next receive must send the order's cancel, not take
    that attempt for a cancel that may be processing (after which it would never send one and the
    order would end UNKNOWN at the loop's deadline)."""
    from tests.local.sqs_delivery import build_record  # noqa: PLC0415

    order, txn = order_and_txn(61)
    sqs, lam = boto3.client("sqs"), boto3.client("lambda")
    with pipeline_factory([txn], env_overrides={"POLL_DEADLINE_SECONDS": "8"}) as pipeline:
        pipeline.source.stop()  # this test is the event source
        stack = pipeline.stack
        boto3.client("secretsmanager").put_secret_value(
            SecretId=stack.secret_id, SecretString=pipeline.merchant.client_key
        )
        pipeline.send(order)

        def receive_and_invoke() -> dict[str, Any]:
            received: list[dict[str, Any]] = []
            while not received:
                received = sqs.receive_message(
                    QueueUrl=stack.queue_url, AttributeNames=["All"], WaitTimeSeconds=2
                ).get("Messages", [])
            event = {"Records": [build_record(received[0], stack.queue_arn, "ap-east-1")]}
            answer = lam.invoke(FunctionName=stack.cancel_function_name, Payload=json.dumps(event))
            sqs.change_message_visibility(  # as SQS returns a failed message, without the wait
                QueueUrl=stack.queue_url, ReceiptHandle=received[0]["ReceiptHandle"], VisibilityTimeout=0
            )
            failures: dict[str, Any] = json.loads(answer["Payload"].read())
            return failures

        first = receive_and_invoke()
        calls_while_unreadable = list(pipeline.qfpay.calls)
        pipeline.rotate_credentials(pipeline.merchant.client_key)  # the secret is right again
        receive_and_invoke()
        outcomes = pipeline.collect_outcomes(1, timeout=30)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert len(first["batchItemFailures"]) == 1  # the first attempt failed, nothing decided
    assert calls_while_unreadable == []  # and reached nothing at QFPay
    (outcome,) = outcomes
    assert outcome["status"] == "CANCELLED", outcome["reason"]
    assert applied == 1
