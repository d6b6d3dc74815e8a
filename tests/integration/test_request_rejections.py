"""One bad message must not block the genuine one (the cancel function with moto and the QFPay
stand-in over real HTTP).

What QFPay says about the *payment* (cancelled, paid, failed, ...) holds for every message naming
the order; a refusal of one *request* (the wrong amount, close not supported for the pay type sent,
a payment QFPay does not know yet) belongs to the message that made it. The genuine message is
then sent to QFPay and decided on its own.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
from cancellation.aws import RedeliveryDelay

from tests.conftest import PipelineFactory, wait_for
from tests.e2e.test_pipeline_e2e import cancel_function_calls, not_granted_to_the_cancel_function
from tests.integration.test_cancel_integration import order_and_txn
from tests.local.pipeline import Pipeline
from tests.local.sqs_delivery import build_record


def decide(pipeline: Pipeline, body: dict[str, Any], seen: int) -> dict[str, Any]:
    """Send one message and wait for its outcome (the ``seen``-th distinct one)."""
    pipeline.send(body)
    outcomes = pipeline.collect_outcomes(seen, timeout=20)
    assert outcomes, f"no outcome for {body}"
    return outcomes[-1]


def test_a_wrong_amount_does_not_block_the_genuine_message(pipeline_factory: PipelineFactory) -> None:
    order, txn = order_and_txn(31)
    wrong_order = {**order, "txamt": order["txamt"] + 1}
    with pipeline_factory([txn]) as pipeline:
        wrong = decide(pipeline, wrong_order, 1)
        pipeline.send(wrong_order)  # the same bad request in another message: refused again
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        again = pipeline.stack.read_outcomes(wait_seconds=1)
        genuine = decide(pipeline, order, 2)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
        calls = [(c.endpoint.rsplit("/", 1)[-1], c.respcd) for c in pipeline.qfpay.calls]
    # The refused cancel reached QFPay, so each later message reads QFPay's record before sending:
    # the bad one's repeat disagrees with it and sends nothing; the genuine one finds it live.
    assert calls == [
        ("reversal", "1266"),
        ("query", "0000"),
        ("query", "0000"),
        ("reversal", "0000"),
        ("query", "0000"),
    ]
    # One bad request, one outcome identity: consumers drop the repeat.
    assert [(o["status"], o["outcome_id"]) for o in again] == [("REJECTED", wrong["outcome_id"])]
    # The message names the syssn: no look-up before the cancel; QFPay checked the amount (1266).
    assert (wrong["status"], wrong["respcd"]) == ("REJECTED", "1266")
    # No row of QFPay's was read for it: QFPay's figures unknown, the message's beside them.
    assert (wrong["message_txamt"], wrong["txamt"]) == (order["txamt"] + 1, None)
    assert (genuine["status"], genuine["txamt"]) == ("CANCELLED", order["txamt"])
    # Consumers drop repeats by outcome_id: the rejection must not make them drop the real outcome.
    assert wrong["outcome_id"] != genuine["outcome_id"]
    assert wrong["out_trade_no"] == genuine["out_trade_no"] == order["out_trade_no"]
    assert applied == 1


def test_a_wrong_pay_type_does_not_block_the_genuine_message(pipeline_factory: PipelineFactory) -> None:
    """Sent with a close PayType, the order goes to close, which this payment does not support."""
    order, txn = order_and_txn(32, close_supported=False)
    with pipeline_factory([txn]) as pipeline:
        wrong = decide(pipeline, {**order, "pay_type": "800208"}, 1)
        genuine = decide(pipeline, order, 2)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert (wrong["status"], wrong["endpoint"]) == ("REJECTED", "close")
    assert (genuine["status"], genuine["endpoint"]) == ("CANCELLED", "reversal")
    assert applied == 1


def test_a_message_sent_before_qfpay_knows_the_payment_does_not_block_a_later_one(
    pipeline_factory: PipelineFactory,
) -> None:
    """The same order, the same fields, sent twice: first before QFPay has the payment, then after.
    The refusal belonged to the first message, not to every message with its content."""
    order, txn = order_and_txn(33)
    with pipeline_factory([]) as pipeline:
        early = decide(pipeline, order, 1)
        pipeline.qfpay.add(txn)
        later = decide(pipeline, order, 2)
        applied = pipeline.qfpay.cancellations_applied(txn.syssn)
    assert early["status"] == "REJECTED"
    assert later["status"] == "CANCELLED"
    assert applied == 1


def test_a_redelivered_rejected_message_is_answered_from_the_ledger(
    pipeline_factory: PipelineFactory,
) -> None:
    """SQS delivers the rejected message again (its deletion was lost): the refusal is replayed,
    QFPay is not asked again and no second outcome is published."""
    order, txn = order_and_txn(34)
    lam, sqs = boto3.client("lambda"), boto3.client("sqs")
    with pipeline_factory([txn]) as pipeline, cancel_function_calls() as called:
        pipeline.source.stop()  # this test is the event source
        stack = pipeline.stack
        pipeline.send({**order, "txamt": order["txamt"] + 5})
        answers = []
        for receive in (1, 2):
            [message] = sqs.receive_message(
                QueueUrl=stack.queue_url, AttributeNames=["All"], MaxNumberOfMessages=1, WaitTimeSeconds=2
            )["Messages"]
            assert message["Attributes"]["ApproximateReceiveCount"] == str(receive)
            event = {"Records": [build_record(message, stack.queue_arn, "ap-east-1")]}
            answer = lam.invoke(FunctionName=stack.cancel_function_name, Payload=json.dumps(event))
            answers.append(json.loads(answer["Payload"].read()))
            sqs.change_message_visibility(
                QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
            if receive == 1:
                assert pipeline.collect_outcomes(1, timeout=15)
        outcomes = list(pipeline.outcomes.values()) + stack.read_outcomes(wait_seconds=2)
        calls = [(c.endpoint, c.respcd) for c in pipeline.qfpay.calls]
    assert answers == [{"batchItemFailures": []}] * 2
    assert [(o["status"], o["respcd"]) for o in outcomes] == [("REJECTED", "1266")]
    assert calls == [("/trade/v1/reversal", "1266")]
    assert "dynamodb:GetItem" in called  # the redelivery read its own record ...
    assert not_granted_to_the_cancel_function(called) == set()  # ... as its role allows


def test_a_message_sent_back_to_the_queue_is_still_the_message_qfpay_refused(
    pipeline_factory: PipelineFactory,
) -> None:
    """The service sends a message back to the queue as a new one (its order held by another
    attempt, the merchant's budget spent) so as not to spend its receives; the copy is still that
    message. QFPay refused its request: the copy finds that refusal delivered and asks QFPay
    nothing, as a redelivery does (a later answer, the payment known by then, say, would give the
    one message two outcomes)."""
    order, txn = order_and_txn(36, close_supported=False)
    wrong = {**order, "pay_type": "800208"}  # a close PayType: close is refused (1297), payment live
    with pipeline_factory([txn]) as pipeline:
        message_id = pipeline.send(wrong)
        [refused] = pipeline.collect_outcomes(1, timeout=20)
        assert wait_for(lambda: pipeline.source.total.deleted >= 1, timeout=20)
        RedeliveryDelay().requeue(
            pipeline.stack.queue_arn, json.dumps(wrong), 0, time.time(), requeues=1, message_id=message_id
        )
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        again = pipeline.stack.read_outcomes(wait_seconds=1)
        closes = pipeline.qfpay.count("close", txn.syssn)
    assert refused["status"] == "REJECTED"
    assert again == []  # delivered once, for the message and its copy
    assert closes == 1
