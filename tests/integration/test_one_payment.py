"""One payment, one outcome, with QFPay's figures: the cancel function against moto (the real
decision ledger and state machine) and the QFPay stand-in over real HTTP.

- The same payment named two ways (out_trade_no in one message, syssn in another; with and
  without mchid) ends in one outcome_id and one status, and only one cancel reaches QFPay.
- A message whose amount or currency disagrees with QFPay's record is rejected (nothing is sent)
  and does not block the genuine message; outcomes publish QFPay's figures.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest

from tests.conftest import PipelineFactory, wait_for
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Fault, Merchant, Transaction
from tests.local.sqs_delivery import build_record

SYSSN = "20261126000101000777"
OUT_TRADE_NO = "ONE-PAYMENT-1"


def transaction(**script: Any) -> Transaction:
    return Transaction(
        syssn=SYSSN,
        out_trade_no=OUT_TRADE_NO,
        txamt=1250,
        txdtm="2026-11-26 11:00:00",
        pay_type="800101",
        txcurrcd="HKD",
        **script,
    )


def message(**fields: Any) -> dict[str, Any]:
    return {"txamt": 1250, "txdtm": "2026-11-26 11:00:00", "pay_type": "800101", "txcurrcd": "HKD", **fields}


FAST_RETRIES = {"RETRY_BASE_DELAY_SECONDS": "1", "RETRY_MAX_DELAY_SECONDS": "4"}
AGENT = Merchant(app_code="APP-AGENT", client_key="KEY-AGENT", mchid="MCH-ONE")


def callers_heard(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What each task-token caller was answered, by token (the cancel function runs in this
    process; its answers still go to moto, which refuses these made-up tokens harmlessly)."""
    from cancellation.aws import CallerNotifier  # noqa: PLC0415 - the class the handler uses
    from cancellation.models import OutcomeDetail  # noqa: PLC0415

    heard: dict[str, dict[str, Any]] = {}
    notify = CallerNotifier.notify

    def spy(self: CallerNotifier, task_token: str, detail: OutcomeDetail) -> bool:
        heard[task_token] = dict(detail)
        return notify(self, task_token, detail)

    monkeypatch.setattr(CallerNotifier, "notify", spy)
    return heard


def queue_empty(pipeline: Pipeline) -> bool:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    queue = boto3.client("sqs").get_queue_attributes(QueueUrl=pipeline.source.queue_url, AttributeNames=names)
    return all(int(queue["Attributes"].get(name, 0)) == 0 for name in names)


def order_records(pipeline: Pipeline) -> list[str]:
    """The decision ledger's order records (not a message's own refusal, not a caller's answer)."""
    items = boto3.client("dynamodb").scan(TableName=pipeline.stack.table_name)["Items"]
    ids = [str(item["id"]["S"]) for item in items]
    return [i for i in ids if i.startswith("cancel#") and "|message=" not in i and "|caller=" not in i]


@pytest.mark.parametrize("merchant", ["direct", "agent"])
@pytest.mark.parametrize(
    "timing", ["out_trade_no first", "syssn first", "concurrently"], ids=lambda timing: timing
)
def test_one_payment_named_by_out_trade_no_and_by_syssn_has_one_record_one_cancel_one_outcome(
    pipeline_factory: PipelineFactory, monkeypatch: pytest.MonkeyPatch, merchant: str, timing: str
) -> None:
    """Two messages name one payment: one by out_trade_no alone, one by syssn alone (a direct
    merchant sends no mchid; an agent names its merchant in both, as QFPay requires). Each has its
    own task-token caller. Sequentially (the second after the first's caller was answered) or
    concurrently (one batch): one ledger record, one cancel request, one outcome_id and one status,
    heard by both callers."""
    heard = callers_heard(monkeypatch)
    mchid = AGENT.mchid if merchant == "agent" else None
    named = {"mchid": mchid} if mchid else {}
    by_number = message(out_trade_no=OUT_TRADE_NO, task_token="caller-by-out-trade-no", **named)
    by_syssn = message(syssn=SYSSN, task_token="caller-by-syssn", **named)
    first, second = (by_syssn, by_number) if timing == "syssn first" else (by_number, by_syssn)
    kind = {"merchant": AGENT} if mchid else {}
    with pipeline_factory([transaction(mchid=mchid)], env_overrides=FAST_RETRIES, **kind) as pipeline:
        pipeline.send(first)
        if timing != "concurrently":
            assert wait_for(lambda: first["task_token"] in heard, timeout=30)
        pipeline.send(second)
        assert wait_for(lambda: len(heard) == 2, timeout=60), heard
        outcomes = pipeline.collect_outcomes(1, timeout=5) + pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        applied = pipeline.qfpay.cancellations_applied(SYSSN)
        records = order_records(pipeline)
        dead = pipeline.dead_letters_count()
    answers = {(detail["outcome_id"], detail["status"]) for detail in heard.values()}
    assert len(answers) == 1, heard  # both callers heard one outcome: same outcome_id, same status
    [(outcome_id, status)] = answers
    assert status == "CANCELLED"
    # Each caller checks that the outcome names its own order (docs/contracts.md): both numbers
    # are named, whichever message decided (QFPay's row gives the one a message left out).
    assert {(d["out_trade_no"], d["syssn"], d["mchid"]) for d in heard.values()} == {
        (OUT_TRADE_NO, SYSSN, mchid)
    }
    assert {(o["outcome_id"], o["status"]) for o in outcomes} == {(outcome_id, status)}
    assert records == [f"cancel#syssn={SYSSN}"]  # one ledger record: the payment's
    assert (reversals, applied) == (1, 1)  # one cancel request reached QFPay, and it took effect
    assert dead == 0


def test_out_trade_no_then_syssn_while_the_cancel_is_in_progress_is_one_outcome_and_one_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    txn = transaction(in_progress_enquiries=3)
    with pipeline_factory([txn]) as pipeline:
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: len(pipeline.executions()) == 1, timeout=20)
        pipeline.send(message(syssn=SYSSN))  # the same payment, by QFPay's number
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        outcomes += pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        applied = pipeline.qfpay.cancellations_applied(SYSSN)
        executions = pipeline.executions()
    assert {(o["outcome_id"], o["status"]) for o in outcomes} == {(outcomes[0]["outcome_id"], "CANCELLED")}
    assert (reversals, applied, len(executions)) == (1, 1, 1)
    assert outcomes[0]["syssn"] == SYSSN  # QFPay's number, learnt for the message that lacked it


def test_out_trade_no_whose_look_up_window_misses_the_payment_then_syssn_is_still_one_cancel(
    pipeline_factory: PipelineFactory,
) -> None:
    """QFPay searches an Enquiry by out_trade_no only within its start_time..end_time, on its own
    clock (sysdtm); the merchant's txdtm is three days off it. The first message names the payment
    by out_trade_no alone: its look-up shows no row, yet QFPay finds the payment by out_trade_no
    for the cancel, which is in progress. A second message names it by syssn. At most one cancel
    that can take effect may reach QFPay while the first is processing."""
    txn = transaction(in_progress_enquiries=3, sysdtm="2026-11-29 11:00:00")
    with pipeline_factory([txn]) as pipeline:
        pipeline.qfpay.search_windows = True
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: pipeline.qfpay.count("reversal", SYSSN) == 1, timeout=20)
        pipeline.send(message(syssn=SYSSN))  # the same payment, by QFPay's number
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=30)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        outcomes += pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        records = order_records(pipeline)
    assert reversals == 1
    assert records == [f"cancel#|out_trade_no={OUT_TRADE_NO}"]  # the identity the first one decided under
    assert {(o["outcome_id"], o["status"]) for o in outcomes} == {(outcomes[0]["outcome_id"], "CANCELLED")}
    assert {(o["out_trade_no"], o["syssn"]) for o in outcomes} == {(OUT_TRADE_NO, SYSSN)}


def test_an_agent_s_syssn_first_then_both_numbers_is_one_outcome(pipeline_factory: PipelineFactory) -> None:
    """An agent names the merchant (mchid); the first message names the payment by syssn alone, the
    second by out_trade_no and syssn. (With and without mchid: see tests/unit/test_one_payment.py;
    QFPay answers a message without the agent's mchid 1104, so it cannot reach the cancel.)"""
    txn = transaction(in_progress_enquiries=3, mchid="MCH-ONE")
    with pipeline_factory(
        [txn], merchant=Merchant(app_code="APP1", client_key="KEY1", mchid="MCH-ONE")
    ) as pipeline:
        pipeline.send(message(syssn=SYSSN, mchid="MCH-ONE"))
        assert wait_for(lambda: len(pipeline.executions()) == 1, timeout=20)
        pipeline.send(message(out_trade_no=OUT_TRADE_NO, syssn=SYSSN, mchid="MCH-ONE"))
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        outcomes = pipeline.collect_outcomes(1, timeout=40)
        outcomes += pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
    assert len({o["outcome_id"] for o in outcomes}) == 1
    assert {o["status"] for o in outcomes} == {"CANCELLED"}
    assert reversals == 1


def test_the_second_naming_after_the_outcome_gets_no_new_cancel_or_outcome(
    pipeline_factory: PipelineFactory,
) -> None:
    with pipeline_factory([transaction()]) as pipeline:
        pipeline.send(message(syssn=SYSSN))
        first = pipeline.collect_outcomes(1, timeout=20)
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        later = pipeline.stack.read_outcomes(wait_seconds=1)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
    assert [o["status"] for o in first] == ["CANCELLED"]
    assert later == []  # a repeat of the same outcome at most: none was published
    assert reversals == 1


def test_a_message_whose_figures_disagree_with_qfpay_is_rejected_and_does_not_block_the_genuine_one(
    pipeline_factory: PipelineFactory,
) -> None:
    with pipeline_factory([transaction()]) as pipeline:
        pipeline.send(message(out_trade_no=OUT_TRADE_NO, txamt=99_999_999, txcurrcd="USD"))
        pipeline.send(message(out_trade_no=OUT_TRADE_NO, txamt=99_999_999, txcurrcd="USD"))  # again
        assert wait_for(lambda: pipeline.source.total.deleted >= 2, timeout=20)
        rejected = pipeline.collect_outcomes(1, timeout=20)
        rejected += pipeline.stack.read_outcomes(wait_seconds=0.5)
        assert pipeline.qfpay.count("reversal", SYSSN) == 0  # nothing was sent for it
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        genuine = pipeline.collect_outcomes(2, timeout=20)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
    assert len({o["outcome_id"] for o in rejected}) == 1  # one bad request, one outcome identity
    refusal = rejected[0]
    assert refusal["status"] == "REJECTED"
    assert "txamt 99999999 disagrees with QFPay's record (1250)" in refusal["reason"]
    assert "txcurrcd USD disagrees with QFPay's record (HKD)" in refusal["reason"]
    [cancelled] = [o for o in genuine if o["status"] != "REJECTED"]
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["outcome_id"] != refusal["outcome_id"]
    assert reversals == 1


def test_a_message_whose_figures_disagree_is_rejected_when_it_takes_over_an_order_sent_back(
    pipeline_factory: PipelineFactory,
) -> None:
    """The genuine message's cancel is answered 429 and the order handed back (nothing counted);
    before its copy returns, a message naming the payment by out_trade_no with another currency
    takes the order over. Its look-up is still good (no cancel of ours since): it is read, and
    the message is rejected without a cancel, as it would have been as the order's first."""
    slow = {"RETRY_BASE_DELAY_SECONDS": "5", "RETRY_MAX_DELAY_SECONDS": "20"}  # the copy: 10-20 s
    with pipeline_factory(
        [transaction(faults=(Fault("http_429", endpoints=("reversal",)),))], env_overrides=slow
    ) as pipeline:
        pipeline.send(message(syssn=SYSSN, out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: pipeline.qfpay.count("reversal", SYSSN) == 1, timeout=20)
        pipeline.send(message(out_trade_no=OUT_TRADE_NO, txcurrcd="USD"))
        outcomes = pipeline.collect_outcomes(2, timeout=60)
        calls = [(c.endpoint.rsplit("/", 1)[-1], c.http_status) for c in pipeline.qfpay.calls]
        applied = pipeline.qfpay.cancellations_applied(SYSSN)
    [refused] = [o for o in outcomes if o["status"] == "REJECTED"]
    assert "txcurrcd USD disagrees with QFPay's record (HKD)" in refused["reason"]
    assert [o["status"] for o in outcomes if o is not refused] == ["CANCELLED"]
    # The look-up, then (the refusal noted) the copy's Enquiry before its cancel.
    assert calls == [("reversal", 429), ("query", 200), ("query", 200), ("reversal", 200), ("query", 200)]
    assert applied == 1


def test_a_refund_case_publishes_qfpays_amount_beside_the_message_s(
    pipeline_factory: PipelineFactory,
) -> None:
    """The message leaves out its currency; QFPay's record has it. The outcome says what QFPay
    charged, and beside it what the message claimed."""
    with pipeline_factory([transaction(state="paid")]) as pipeline:
        order = message(out_trade_no=OUT_TRADE_NO)
        del order["txcurrcd"]
        pipeline.send(order)
        [outcome] = pipeline.collect_outcomes(1, timeout=20)
    assert outcome["status"] == "REFUND_REQUIRED"
    assert (outcome["txamt"], outcome["txcurrcd"]) == (1250, "HKD")
    assert (outcome["message_txamt"], outcome["message_txcurrcd"]) == (1250, None)


def test_orders_named_by_out_trade_no_in_one_batch_are_looked_up_with_one_enquiry(
    pipeline_factory: PipelineFactory,
) -> None:
    """Three orders of one merchant, each named only by out_trade_no, arrive in one SQS batch:
    one Enquiry (a comma-separated out_trade_no list) learns their three syssns, then each is
    cancelled, and the three are confirmed by one Enquiry (a syssn list): 5 requests, not 9."""
    transactions = [
        Transaction(
            syssn=f"2026112600010100090{n}",
            out_trade_no=f"BATCH-{n}",
            txamt=1250 + n,
            txdtm="2026-11-26 11:00:00",
            pay_type="800101",
            txcurrcd="HKD",
        )
        for n in range(3)
    ]
    sqs, lam = boto3.client("sqs"), boto3.client("lambda")
    with pipeline_factory(transactions) as pipeline:
        pipeline.source.stop()  # this test is the event source: one batch of the three
        stack = pipeline.stack
        for txn in transactions:
            order = txn.order_message()
            del order["syssn"]
            pipeline.send(order)
        received: list[dict[str, Any]] = []
        while len(received) < 3:
            received += sqs.receive_message(
                QueueUrl=stack.queue_url, AttributeNames=["All"], MaxNumberOfMessages=10, WaitTimeSeconds=2
            ).get("Messages", [])
        event = {"Records": [build_record(m, stack.queue_arn, "ap-east-1") for m in received]}
        answer = lam.invoke(FunctionName=stack.cancel_function_name, Payload=json.dumps(event))
        failures = json.loads(answer["Payload"].read())
        outcomes = pipeline.collect_outcomes(3, timeout=20)
        calls = [(c.endpoint, c.params) for c in pipeline.qfpay.calls]
    assert failures == {"batchItemFailures": []}
    assert sorted(o["status"] for o in outcomes) == ["CANCELLED"] * 3
    assert {o["syssn"] for o in outcomes} == {t.syssn for t in transactions}
    assert len(calls) == 5
    endpoint, params = calls[0]
    assert (endpoint, params["out_trade_no"]) == ("/trade/v1/query", "BATCH-0,BATCH-1,BATCH-2")
    assert [e for e, _ in calls[1:4]] == ["/trade/v1/reversal"] * 3
    endpoint, params = calls[4]
    assert endpoint == "/trade/v1/query"
    assert {t.syssn for t in transactions} <= set(params["syssn"].split(","))


def test_a_message_naming_out_trade_no_that_ends_past_the_horizon_keeps_the_payment_s_identity(
    pipeline_factory: PipelineFactory,
) -> None:
    """A first message named the payment by out_trade_no alone; its look-up learnt the syssn and
    its reversal is in progress (the loop runs). Then QFPay goes down, and a second message naming
    the payment the same way is retried until the retry horizon passes and ends. Its look-up
    failed every time, yet it must end under the payment's identity, not an out_trade_no one of
    its own: one outcome_id for the payment, and no second cancel."""
    env = {**FAST_RETRIES, "RETRY_HORIZON_SECONDS": "5"}
    with pipeline_factory([transaction(in_progress_enquiries=2)], env_overrides=env) as pipeline:
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        assert wait_for(lambda: len(pipeline.executions()) == 1, timeout=20)
        pipeline.qfpay.outage.active = True
        pipeline.send(message(out_trade_no=OUT_TRADE_NO))
        sent = time.monotonic()  # a retried message goes back as a new one: wait out the horizon
        assert wait_for(lambda: time.monotonic() - sent > 5 + 4 and queue_empty(pipeline), timeout=60)
        pipeline.qfpay.outage.active = False
        outcomes = pipeline.collect_outcomes(1, timeout=60)
        outcomes += pipeline.stack.read_outcomes(wait_seconds=2)
        reversals = pipeline.qfpay.count("reversal", SYSSN)
        records = order_records(pipeline)
    assert len({o["outcome_id"] for o in outcomes}) == 1, outcomes
    assert records == [f"cancel#syssn={SYSSN}"]
    assert reversals == 1
