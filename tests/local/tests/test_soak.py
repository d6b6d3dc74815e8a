"""The soak (``tests/local/soak.py``): its judge, its crash injection, and a small run of it.

The judge's rules are checked on fabricated evidence (a lost order, a double reversal, an
undocumented resend, a contradiction are each detected; documented retries are not flagged);
crash injection is checked on a tiny handler; then a small soak runs the whole pipeline with
faults, duplicates and crashes and must find nothing lost, nothing reversed twice, nothing
contradicting the ledger, and a real reason for every dead letter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import textwrap
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from urllib3.connectionpool import HTTPConnectionPool

from tests.local import lambda_runtime, soak
from tests.local.moto_server import LocalAws
from tests.local.qfpay_standin import Call, Transaction
from tests.local.soak import (
    Ledger,
    OrderEvidence,
    OutcomeSeen,
    SoakConfig,
    contradiction,
    judge,
    undocumented_cancels,
)
from tests.local.tests.far_end import FarEnd

SYSSN = "20261126000100020000000001"
REVERSAL = "/trade/v1/reversal"
QUERY = "/trade/v1/query"


def call(
    endpoint: str,
    *,
    status: int = 200,
    respcd: str | None = "0000",
    fault: str | None = None,
    rows: list[dict[str, str]] | None = None,
    pending: tuple[str, ...] = (),
) -> Call:
    answer: dict[str, Any] | None = None
    if status == 200 and respcd is not None:
        answer = {"respcd": respcd}
        if endpoint == QUERY:
            answer["data"] = rows or []
    return Call(
        endpoint=endpoint,
        method="POST",
        app_code="APP",
        params={"syssn": SYSSN},
        http_status=status,
        respcd=respcd,
        keys=(SYSSN,),
        timestamp=time.time(),
        fault=fault,
        answer=answer,
        pending=pending,
    )


def row(cancel: str | None = "0", respcd: str | None = "1143") -> dict[str, str]:
    """An Enquiry row of the order; None leaves the field out."""
    fields = {"syssn": SYSSN, "out_trade_no": "ORDER-1", "cancel": cancel, "respcd": respcd}
    return {k: v for k, v in fields.items() if v is not None}


def evidence(**changes: Any) -> OrderEvidence:
    fields: dict[str, Any] = {
        "key": "ORDER-1",
        "category": "unpaid",
        "expected": frozenset({"CANCELLED"}),
        "statuses": ["CANCELLED"],
        "dead_lettered": 0,
        "ledger": Ledger(exists=True, state="unpaid", cancel=1, applied=1),
        "calls": [call(REVERSAL), call(QUERY, rows=[row(cancel="1")])],
        "names": (SYSSN, "ORDER-1"),
    }
    fields.update(changes)
    return OrderEvidence(**fields)


# --------------------------------------------------------------------------- the judge


def test_a_clean_order_is_not_flagged():
    verdict = judge([evidence()])
    assert (verdict.lost, verdict.double_reversals, verdict.contradictions, verdict.unexpected) == (
        [],
        [],
        [],
        [],
    )


def test_a_lost_order_is_detected():
    verdict = judge([evidence(statuses=[], calls=[])])
    assert len(verdict.lost) == 1
    assert "ORDER-1" in verdict.lost[0]


def test_a_dead_lettered_order_without_outcome_is_not_lost():
    assert judge([evidence(statuses=[], dead_lettered=1)]).lost == []


def test_two_cancellations_applied_are_a_double_reversal():
    verdict = judge([evidence(ledger=Ledger(exists=True, state="unpaid", cancel=1, applied=2))])
    assert verdict.double_reversals == ["ORDER-1 (unpaid): 2 cancellations applied"]


def test_a_second_cancel_without_an_enquiry_showing_the_payment_live_is_a_double_reversal():
    calls = [call(REVERSAL, respcd="0000"), call(REVERSAL, respcd="1264")]
    verdict = judge([evidence(calls=calls)])
    assert len(verdict.double_reversals) == 1
    assert "reversal #2 (respcd 1264) sent after reversal #1 (respcd 0000)" in verdict.double_reversals[0]


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(call(REVERSAL, status=0, respcd=None, fault="reset"), id="no-answer"),
        pytest.param(call(REVERSAL, respcd="1143"), id="in-progress"),
        pytest.param(call(REVERSAL, respcd="1260"), id="final-answer"),
        pytest.param(call(REVERSAL, fault="applied_then_timeout"), id="timed-out"),
    ],
)
def test_a_resend_after_a_cancel_that_may_have_worked_needs_a_live_enquiry(first):
    blind = [first, call(REVERSAL)]
    assert len(undocumented_cancels(blind, (SYSSN,))) == 1
    checked = [first, call(QUERY, rows=[row()]), call(REVERSAL)]
    assert undocumented_cancels(checked, (SYSSN,)) == []


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(call(REVERSAL, status=503, respcd=None), id="http-503"),
        pytest.param(call(REVERSAL, status=429, respcd=None), id="http-429"),
        pytest.param(call(REVERSAL, respcd="1296"), id="try-later"),
        pytest.param(call(REVERSAL, respcd="1108"), id="signature"),
    ],
)
def test_a_retry_after_an_answer_that_did_nothing_is_documented(first):
    assert undocumented_cancels([first, call(REVERSAL)], (SYSSN,)) == []


def test_an_enquiry_that_shows_the_payment_cancelled_or_was_not_read_allows_no_resend():
    cancelled = [call(REVERSAL, fault="reset", status=0, respcd=None), call(QUERY, rows=[row(cancel="1")])]
    assert len(undocumented_cancels([*cancelled, call(REVERSAL)], (SYSSN,))) == 1
    unread = [
        call(REVERSAL, fault="reset", status=0, respcd=None),
        call(QUERY, rows=[row()], fault="applied_then_reset"),
        call(REVERSAL),
    ]
    assert len(undocumented_cancels(unread, (SYSSN,))) == 1
    failed = [call(REVERSAL, fault="reset", status=0, respcd=None), call(QUERY, status=502, respcd=None)]
    assert len(undocumented_cancels([*failed, call(REVERSAL)], (SYSSN,))) == 1


def test_an_enquiry_with_no_record_allows_a_resend():
    calls = [call(REVERSAL, respcd="1136"), call(QUERY, rows=[]), call(REVERSAL, respcd="1136")]
    assert undocumented_cancels(calls, (SYSSN,)) == []


@pytest.mark.parametrize(
    ("status", "ledger", "contradicts"),
    [
        ("CANCELLED", Ledger(True, "unpaid", cancel=1, applied=1), False),
        ("CANCELLED", Ledger(True, "unpaid"), True),  # still live
        ("CANCELLED", Ledger(True, "paid"), True),
        ("CANCELLED", Ledger(True, "closed"), False),  # closed by itself: unexpected, not contradictory
        ("NOT_CHARGED", Ledger(True, "paid"), True),
        ("NOT_CHARGED", Ledger(True, "unpaid"), True),
        ("NOT_CHARGED", Ledger(True, "expired"), False),
        ("NOT_CHARGED", Ledger(True, "refunded"), False),
        ("NOT_CHARGED", Ledger(True, "unpaid", cancel=2), False),
        ("REFUND_REQUIRED", Ledger(True, "paid"), False),
        ("REFUND_REQUIRED", Ledger(True, "failed"), True),
        ("REFUND_REQUIRED", Ledger(True, "unpaid"), True),
        ("REFUND_REQUIRED", Ledger(True, "unpaid", cancel=1, applied=1), True),
        ("UNKNOWN", Ledger(True, "unpaid"), False),
        ("REJECTED", Ledger(True, "paid"), False),
        ("REJECTED", Ledger(False), False),
        ("NOT_CHARGED", Ledger(False), False),
        ("CANCELLED", Ledger(False), True),
        ("REFUND_REQUIRED", Ledger(False), True),
    ],
)
def test_contradiction_rules(status, ledger, contradicts):
    assert (contradiction(status, ledger) is not None) is contradicts


def test_a_contradiction_is_detected():
    verdict = judge([evidence(statuses=["CANCELLED"], ledger=Ledger(True, "paid"), calls=[])], rules=())
    assert verdict.contradictions == [
        "ORDER-1 (unpaid): CANCELLED but the ledger shows paid, not cancelled, cancellations applied 0"
    ]


def test_outcomes_that_disagree_are_a_contradiction_and_repeats_are_counted():
    verdict = judge([evidence(statuses=["CANCELLED", "UNKNOWN"])])
    assert len(verdict.contradictions) == 1
    assert "outcomes disagree" in verdict.contradictions[0]
    agreeing = judge([evidence(statuses=["CANCELLED", "CANCELLED"])])
    assert (agreeing.contradictions, agreeing.repeated_outcomes) == ([], 1)


def test_a_status_without_qfpays_word_for_it_is_a_contradiction():
    # A refusal answered "not paid" while the payment stays live: NOT_CHARGED would be a guess.
    calls = [call(REVERSAL, respcd="1261"), call(QUERY, rows=[row()])]
    verdict = judge([evidence(statuses=["NOT_CHARGED"], ledger=Ledger(True, "failed"), calls=calls)])
    assert verdict.contradictions == ["ORDER-1 (unpaid): NOT_CHARGED with no answer from QFPay that shows it"]
    assert (
        judge(
            [evidence(statuses=["NOT_CHARGED"], ledger=Ledger(True, "failed"), calls=calls)], ()
        ).contradictions
        == []
    )


def test_an_allowed_but_unexpected_outcome_is_reported_apart():
    verdict = judge([evidence(statuses=["UNKNOWN"], ledger=Ledger(True, "unpaid"), calls=[])])
    assert verdict.contradictions == []
    assert verdict.unexpected == ["ORDER-1 (unpaid): UNKNOWN, expected CANCELLED"]


def test_dead_letter_reason_is_the_last_failure():
    logs = [
        {
            "message_id": "M1",
            "level": "WARNING",
            "message": "cancel will be retried",
            "reason": "HTTP 503",
            "_at": 1.0,
        },
        {
            "message_id": "M1",
            "level": "WARNING",
            "message": "cancel will be retried",
            "reason": "HTTP 429",
            "_at": 3.0,
        },
        {"message_id": "M2", "level": "WARNING", "message": "other", "_at": 9.0},
    ]
    crash = lambda_runtime.Invocation(
        function_name="cancel",
        payload={"Records": [{"messageId": "M1"}]},
        request_id="R1",
        started_at=4.0,
        duration=1.0,
        cold_start=False,
        error="Runtime.ExitError",
        response={"errorMessage": "RequestId: R1 Error: Runtime exited with error: signal: killed"},
    )
    assert soak.dead_letter_reason("M1", logs, []) == "log (WARNING): cancel will be retried: HTTP 429"
    assert soak.dead_letter_reason("M1", logs, [crash]).startswith("invocation R1 failed: Runtime.ExitError")
    assert soak.dead_letter_reason("M3", logs, [crash]) == "no failed attempt recorded for this message"


def test_dead_letter_reason_pairs_each_record_failure_with_its_log_line():
    logs = [{"message_id": "M1", "level": "INFO", "message": "order already being cancelled", "_at": 1.0}]
    failures = [
        {"message_id": "M1", "_at": 1.1, "error": "IdempotencyAlreadyInProgressError: busy"},
        {"message_id": "M1", "_at": 2.0, "error": "KeyError: 'x'"},
    ]
    assert soak.dead_letter_reason("M1", logs, [], failures[:1]) == (
        "log (INFO): order already being cancelled [IdempotencyAlreadyInProgressError: busy]"
    )
    # The last attempt left no log line: the exception itself is the reason, and it says so.
    assert soak.dead_letter_reason("M1", logs, [], failures) == (
        "record failed, the service logged nothing: KeyError: 'x'"
    )


def test_dead_letter_reason_prefers_the_log_line_of_a_partial_batch_failure():
    logs = [{"message_id": "M1", "level": "WARNING", "message": "cancel will be retried", "_at": 4.5}]
    partial = lambda_runtime.Invocation(
        function_name="cancel",
        payload={"Records": [{"messageId": "M1"}, {"messageId": "M2"}]},
        request_id="R2",
        started_at=4.0,
        duration=1.0,
        cold_start=False,
        error=None,
        response={"batchItemFailures": [{"itemIdentifier": "M1"}]},
    )
    assert soak.dead_letter_reason("M1", logs, [partial]) == "log (WARNING): cancel will be retried"
    assert (
        soak.dead_letter_reason("M1", [], [partial]) == "invocation R2 reported it failed, without a log line"
    )


def test_the_plan_is_reproducible_and_has_the_requested_shares():
    # Without aliased_duplicate: its orders are each sent twice on top of the duplicate share
    # (their plan is checked below).
    config = SoakConfig(n=1000, seed=5, strict_faults=soak.DEFAULT_STRICT_FAULTS - {"aliased_duplicate"})
    first = soak.plan_orders(config)
    assert [(o.category, o.message, o.duplicate) for o in first] == [
        (o.category, o.message, o.duplicate) for o in soak.plan_orders(config)
    ]
    categories = [o.category for o in first]
    assert categories.count("in_progress") == 200
    assert sum(1 for o in first if o.duplicate) == 100
    assert len({o.key for o in first}) == 1000
    assert {o.duplicate for o in first} == {"", "same batch", "later"}


# --------------------------------------------------------------------------- crash injection

CRASHING_HANDLER = """
import asyncio
import os

import urllib3

POOL = urllib3.PoolManager()


def get(path):
    # Two requests in a row per thread: the second is what a crash must stop.
    first = POOL.request("GET", os.environ["TARGET"] + "/first" + path, timeout=5)
    second = POOL.request("GET", os.environ["TARGET"] + "/second" + path, timeout=5)
    return first.data.decode() + second.data.decode()


async def batch(paths):
    return await asyncio.gather(*(asyncio.to_thread(get, p) for p in paths))


def lambda_handler(event, context):
    return asyncio.run(batch(event["paths"]))
"""


@pytest.fixture
def crashing_function(local_aws: LocalAws, tmp_path: Path) -> Any:
    FarEnd.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FarEnd)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = tmp_path / "crashing"
    code.mkdir()
    (code / "app.py").write_text(textwrap.dedent(CRASHING_HANDLER))
    local_aws.create_function(
        "crashing",
        code,
        "app.lambda_handler",
        {"TARGET": f"http://127.0.0.1:{server.server_address[1]}"},
        timeout=2,
    )
    yield boto3.client("lambda")
    lambda_runtime.inject_crashes(None)
    server.shutdown()
    server.server_close()


def invoke(client: Any, paths: list[str]) -> tuple[str | None, Any]:
    answer = client.invoke(FunctionName="crashing", Payload=json.dumps({"paths": paths}).encode())
    return answer.get("FunctionError"), json.loads(answer["Payload"].read())


def test_urllib_is_guarded_while_the_runtime_is_installed_plan_or_not(crashing_function):
    """Every invocation dies at its deadline, so requests are guarded without a crash plan too."""
    guarded = HTTPConnectionPool.urlopen
    assert guarded is lambda_runtime._guarded_urlopen
    assert invoke(crashing_function, ["/a"]) == (None, ["okok"])
    lambda_runtime.inject_crashes(lambda name, event: None)
    lambda_runtime.inject_crashes(None)
    assert HTTPConnectionPool.urlopen is guarded
    lambda_runtime.uninstall()
    try:
        assert HTTPConnectionPool.urlopen is not guarded
    finally:
        lambda_runtime.install()
    assert HTTPConnectionPool.urlopen is guarded


def test_a_crash_after_k_requests_stops_every_thread_and_exits(crashing_function):
    lambda_runtime.inject_crashes(lambda name, event: lambda_runtime.Crash(1, "Runtime.ExitError"))
    error, payload = invoke(crashing_function, [f"/r{i}" for i in range(6)])
    lambda_runtime.inject_crashes(None)
    assert error == "Unhandled"
    assert payload["errorType"] == "Runtime.ExitError"
    assert "signal: killed" in payload["errorMessage"]
    # The first requests were on the wire together and reached the server; once the first
    # answer came back the sandbox was dead: no thread sent its second request.
    assert 1 <= len(FarEnd.seen) <= 6
    assert all(path.startswith("/first/") for path in FarEnd.seen), FarEnd.seen
    crashed = lambda_runtime.invocations("crashing")[-1]
    assert crashed.error == "Runtime.ExitError"
    # The sandbox was thrown away: the next invocation is a cold start, and lives.
    assert invoke(crashing_function, ["/after"]) == (None, ["okok"])
    assert lambda_runtime.invocations("crashing")[-1].cold_start


def test_a_crash_after_the_handler_returned_loses_the_result_and_times_out(crashing_function):
    lambda_runtime.inject_crashes(lambda name, event: lambda_runtime.Crash(None))
    started = time.monotonic()
    error, payload = invoke(crashing_function, ["/a", "/b"])
    assert time.monotonic() - started >= 2.0  # held until the function's 2 s timeout
    assert (error, payload["errorType"]) == ("Unhandled", "Sandbox.Timedout")
    assert "Task timed out after 2.00 seconds" in payload["errorMessage"]
    assert sorted(FarEnd.seen) == ["/first/a", "/first/b", "/second/a", "/second/b"]  # all done


def test_the_plan_sees_the_event_and_may_spare_an_invocation(crashing_function):
    seen: list[Any] = []

    def plan(name: str, event: Any) -> lambda_runtime.Crash | None:
        seen.append((name, event))
        return None

    lambda_runtime.inject_crashes(plan)
    assert invoke(crashing_function, ["/a"]) == (None, ["okok"])
    assert seen == [("crashing", {"paths": ["/a"]})]


def test_crash_validation():
    with pytest.raises(ValueError, match="error type"):
        lambda_runtime.Crash(1, "Sandbox.Exploded")
    with pytest.raises(ValueError, match="negative"):
        lambda_runtime.Crash(-1)


def test_a_sandbox_killed_outside_a_crash_plan_is_not_caught_by_handlers():
    assert not issubclass(lambda_runtime.SandboxKilled, Exception)
    with pytest.raises(lambda_runtime.SandboxKilled):
        asyncio.run(_raise_in_thread())


async def _raise_in_thread() -> None:
    def die() -> None:
        raise lambda_runtime.SandboxKilled("gone")

    await asyncio.to_thread(die)


# --------------------------------------------------------------------------- a small soak

SMALL = {
    "SOAK_N": "60",
    "SOAK_SEED": "7",
    "SOAK_RATE": "15",
    "SOAK_VISIBILITY_TIMEOUT": "20",
    "SOAK_LATER_SECONDS": "12",
    "SOAK_MIN_CRASHES": "2",
    # An order QFPay keeps refusing with 429 ends past its 60 s retry horizon plus the merchant's
    # budget waits (QFPay's 429 backs the whole merchant off; our own waits do not count toward the
    # horizon): 150 s was once too short for it on a fresh CI machine. A passing run ends earlier.
    "SOAK_TIME_LIMIT": "240",
    "SOAK_PROGRESS_SECONDS": "30",
}


@pytest.mark.e2e
def test_a_small_soak_loses_nothing_reverses_nothing_twice_and_contradicts_nothing(
    moto_server: LocalAws,
) -> None:
    moto_server.reset()
    out = io.StringIO()
    try:
        code = soak.main(SMALL, out)
    finally:
        moto_server.reset()
    text = out.getvalue()
    last = text.strip().splitlines()[-3:]
    assert last == ["lost: 0", "double_reversals: 0", "contradictions: 0"], text
    assert code == 0, text
    assert "HARNESS ERROR" not in text
    assert re.search(r"cancel-function crashes: [1-9]", text), text
    # The end of the run reconciles its UNKNOWN outcomes and says how many stayed UNKNOWN.
    assert re.search(
        r"^reconciled at the end: \d+ UNKNOWN checked, \d+ corrected \(.*\), \d+ stayed UNKNOWN",
        text,
        flags=re.MULTILINE,
    ), text
    entries = re.findall(r"^  (\S+) .*received \S+ times: (.*)$", text, flags=re.MULTILINE)
    assert len(entries) == int(re.search(r"^DLQ entries: (\d+)$", text, flags=re.MULTILINE)[1])  # type: ignore[index]
    for _, reason in entries:
        assert reason, text
        assert reason != "no failed attempt recorded for this message", text


def test_a_correction_the_settled_ledger_contradicts_is_a_contradiction():
    orders = soak.plan_orders(SoakConfig(n=40, seed=3))
    paid = next(o for o in orders if o.transaction is not None)
    run = soak._Run(SoakConfig(n=40, seed=3), orders)
    run.ledger[paid.key] = soak.Ledger(exists=True, state="paid", cancel=0, applied=0)
    named = {"out_trade_no": paid.transaction.out_trade_no, "syssn": paid.transaction.syssn}  # type: ignore[union-attr]
    run.corrections = [{**named, "status": "CANCELLED"}]
    (found,) = soak.reconciliation_contradictions(run)
    assert found.startswith(f"{paid.key} ({paid.category}) reconciled: CANCELLED but the ledger shows")
    run.corrections = [{**named, "status": "REFUND_REQUIRED"}]
    assert soak.reconciliation_contradictions(run) == []


def test_transaction_planning_matches_the_stand_in():
    """Every planned ledger entry is a valid stand-in Transaction with the order's numbers."""
    for order in soak.plan_orders(SoakConfig(n=300, seed=9)):
        if order.transaction is None:
            assert order.category in ("unknown_to_qfpay", "invalid_message")
            continue
        assert isinstance(order.transaction, Transaction)
        assert order.key in (order.transaction.out_trade_no, order.transaction.syssn)
        if order.category == "in_progress":
            assert order.transaction.in_progress_range == (1, 5)


# --------------------------------------------------------------------------- the strict judge


def test_a_resend_after_a_5xx_that_took_effect_is_a_double_reversal():
    gateway = call(REVERSAL, status=502, respcd="0000", fault="applied_then_5xx")
    (problem,) = undocumented_cancels([gateway, call(REVERSAL, respcd="1264")], (SYSSN,))
    assert "reversal #2 (respcd 1264) sent after reversal #1 (HTTP 502 after taking effect)" in problem
    cancelled = [gateway, call(QUERY, rows=[row(cancel="1")]), call(REVERSAL, respcd="1264")]
    assert len(undocumented_cancels(cancelled, (SYSSN,))) == 1
    # A plain 5xx the stand-in answered without taking effect is SQS's documented retry.
    assert undocumented_cancels([call(REVERSAL, status=504, respcd=None), call(REVERSAL)], (SYSSN,)) == []


def test_a_live_looking_row_while_our_cancel_is_pending_allows_no_resend():
    calls = [
        call(REVERSAL, respcd="1143"),
        call(QUERY, rows=[row()], pending=(SYSSN,)),  # reads live; QFPay is still working on ours
        call(REVERSAL, respcd="1143"),
    ]
    (problem,) = undocumented_cancels(calls, (SYSSN,))
    assert "reversal #3 (respcd 1143) sent after reversal #1 (respcd 1143)" in problem
    assert undocumented_cancels(calls, (SYSSN,), pending_blocks_resend=False) == []
    verdict = judge([evidence(calls=calls)])
    assert len(verdict.double_reversals) == 1
    assert judge([evidence(calls=calls)], rules=()).double_reversals == []
    # Another transaction's pending cancel is none of this order's business.
    other = [calls[0], call(QUERY, rows=[row()], pending=("20261126000100029999999999",)), calls[2]]
    assert undocumented_cancels(other, (SYSSN,)) == []


@pytest.mark.parametrize(
    "shown",
    [
        pytest.param(row(cancel="0", respcd="0000"), id="paid-while-our-reversal-processes"),
        pytest.param(row(respcd="9999"), id="undocumented-respcd"),
        pytest.param(row(respcd=None), id="respcd-missing"),
        pytest.param(row(respcd="1205"), id="try-later-respcd"),
        pytest.param(row(cancel="7"), id="undocumented-cancel-flag"),
    ],
)
def test_a_row_that_does_not_read_live_allows_no_resend(shown):
    calls = [call(REVERSAL, status=0, respcd=None, fault="applied_then_reset"), call(QUERY, rows=[shown])]
    assert len(undocumented_cancels([*calls, call(REVERSAL)], (SYSSN,))) == 1


def test_legitimate_sequences_are_not_flagged():
    legitimate = [
        # Lost answer, the Enquiry shows the payment live and nothing of ours pending: one resend.
        [call(REVERSAL, status=0, respcd=None, fault="reset"), call(QUERY, rows=[row()]), call(REVERSAL)],
        # In progress, polled until QFPay shows it reversed; never resent.
        [
            call(REVERSAL, respcd="1143"),
            call(QUERY, rows=[row()], pending=(SYSSN,)),
            call(QUERY, rows=[row(cancel="1")]),
        ],
        # QFPay's rate limit and "try later" did nothing; the retry is documented.
        [
            call(REVERSAL, status=429, respcd=None, fault="http_429"),
            call(REVERSAL, respcd="1296"),
            call(REVERSAL),
        ],
        # A 502 that took effect, then the Enquiry shows it: no further cancel.
        [
            call(REVERSAL, status=502, respcd="0000", fault="applied_then_5xx"),
            call(QUERY, rows=[row(cancel="1")]),
        ],
    ]
    confirmed = call(QUERY, rows=[row(cancel="1")])  # the Enquiry that proves CANCELLED
    verdict = judge([evidence(calls=[*calls, confirmed]) for calls in legitimate])
    assert (verdict.double_reversals, verdict.contradictions, verdict.lost) == ([], [], [])


@pytest.mark.parametrize(
    ("status", "calls", "proven"),
    [
        ("CANCELLED", [call(REVERSAL), call(QUERY, rows=[row(cancel="1")])], True),
        ("CANCELLED", [call(REVERSAL), call(QUERY, rows=[row(cancel="2")])], True),
        ("CANCELLED", [call(REVERSAL)], False),  # QFPay's 0000 is not proof
        ("CANCELLED", [call(REVERSAL), call(QUERY, rows=[row(cancel="7")])], False),
        (
            "CANCELLED",
            [call(REVERSAL), call(QUERY, rows=[row(cancel="1")], fault="applied_then_reset")],
            False,
        ),
        (
            "CANCELLED",
            [call(REVERSAL), call(QUERY, rows=[{**row(cancel="1"), "syssn": "X", "out_trade_no": "Y"}])],
            False,
        ),
        ("NOT_CHARGED", [call(REVERSAL, respcd="1261")], False),
        ("NOT_CHARGED", [call(REVERSAL, respcd="1264")], False),
        ("NOT_CHARGED", [call(REVERSAL, respcd="1261"), call(QUERY, rows=[row()])], False),
        ("NOT_CHARGED", [call(REVERSAL, respcd="1261"), call(QUERY, rows=[row(respcd="1147")])], True),
        ("NOT_CHARGED", [call(REVERSAL, respcd="1142"), call(QUERY, rows=[row(respcd="1142")])], True),
        (
            "NOT_CHARGED",
            [call(REVERSAL, respcd="1262"), call(QUERY, rows=[row(cancel="3", respcd="0000")])],
            True,
        ),
        ("NOT_CHARGED", [call(REVERSAL), call(QUERY, rows=[row(respcd="9999")])], False),
        ("NOT_CHARGED", [call(REVERSAL), call(QUERY, rows=[row(respcd="1205")])], False),
        ("NOT_CHARGED", [call(REVERSAL), call(QUERY, rows=[row(respcd=None)])], False),
        ("NOT_CHARGED", [call(REVERSAL), call(QUERY, rows=[row(cancel=None, respcd="1147")])], False),
        ("NOT_CHARGED", [call(REVERSAL), call(QUERY, rows=[])], False),  # no record is not "not charged"
        ("REFUND_REQUIRED", [call(REVERSAL, respcd="1260")], True),
        ("REFUND_REQUIRED", [call(REVERSAL, respcd="1143"), call(QUERY, rows=[row(respcd="0000")])], True),
        ("REFUND_REQUIRED", [call(REVERSAL), call(QUERY, rows=[row(cancel="5", respcd="0000")])], True),
        ("REFUND_REQUIRED", [call(REVERSAL, status=0, respcd=None, fault="reset")], False),
        ("REFUND_REQUIRED", [call(REVERSAL, respcd="1260", fault="applied_then_timeout")], False),
        ("UNKNOWN", [], True),
        ("REJECTED", [], True),
    ],
)
def test_proof_of_each_status(status, calls, proven):
    assert (soak.unproven(status, calls, (SYSSN, "ORDER-1")) is None) is proven


def test_one_payment_with_two_outcome_identities_counts_as_lost():
    split = evidence(outcome_ids=["aaa", "bbb"], statuses=["CANCELLED", "CANCELLED"])
    verdict = judge([split])
    assert verdict.lost == ["ORDER-1 (unpaid): one payment, several outcome identities (aaa, bbb)"]
    assert judge([split], rules=()).lost == []
    assert judge([evidence(outcome_ids=["aaa", "aaa"], statuses=["CANCELLED", "CANCELLED"])]).lost == []
    # An invalid message names no order: its REJECTED is keyed by the message (the contract).
    assert judge([evidence(outcome_ids=["m1", "m2"], one_identity=False)]).lost == []


def test_a_lost_line_shows_where_each_outcome_identity_came_from():
    """Each outcome event of the order: its outcome_id's first 8 characters, status, who decided, why."""
    refused = "QFPay refused the reversal (1294): " + "the payment is under risk control; " * 6
    split = evidence(
        statuses=["UNKNOWN", "UNKNOWN"],
        outcome_ids=["0123456789abcdef-request", "fedcba9876543210-order"],
        outcomes=[
            OutcomeSeen("0123456789abcdef-request", "UNKNOWN", "cancel-function", refused),
            OutcomeSeen(
                "fedcba9876543210-order", "UNKNOWN", "poll-loop", "a cancel of ours may still be\nprocessing"
            ),
        ],
    )
    (line,) = judge([split]).lost
    assert line.startswith("ORDER-1 (unpaid): one payment, several outcome identities (")
    assert "01234567 UNKNOWN by cancel-function: QFPay refused the reversal (1294): the payment" in line
    assert refused[:120] in line
    assert refused[:121] not in line  # the reason is cut at 120 characters
    assert "fedcba98 UNKNOWN by poll-loop: a cancel of ours may still be processing" in line
    assert line.index("01234567 UNKNOWN") < line.index("fedcba98 UNKNOWN")  # in arrival order


def test_a_lost_line_without_an_outcome_says_what_happened_to_the_order():
    lost = evidence(statuses=[], calls=[], history="faults http_5xx; calls reversal:502")
    assert judge([lost]).lost == [
        "ORDER-1 (unpaid): no outcome and nothing in the DLQ; outcome events: none; faults http_5xx; "
        "calls reversal:502"
    ]


def test_findings_are_counted_per_category():
    verdict = judge(
        [
            evidence(category="repeat_applies", ledger=Ledger(True, "unpaid", cancel=1, applied=2)),
            evidence(category="refused_but_live", statuses=["NOT_CHARGED"], ledger=Ledger(True, "unpaid")),
            evidence(category="unpaid", statuses=[], calls=[]),
        ]
    )
    assert verdict.by_category["repeat_applies"]["double_reversals"] == 1
    assert verdict.by_category["refused_but_live"]["contradictions"] == 1
    assert verdict.by_category["unpaid"]["lost"] == 1


def test_unknown_judge_rules_are_refused():
    with pytest.raises(ValueError, match="unknown judge rules"):
        judge([], rules=("lenient",))


def test_strict_switches_come_from_the_environment():
    assert SoakConfig.from_env({}).strict_faults == soak.DEFAULT_STRICT_FAULTS
    assert SoakConfig.from_env({}).strict_rules == soak.DEFAULT_STRICT_RULES
    every = SoakConfig.from_env({"SOAK_STRICT_FAULTS": "all", "SOAK_STRICT_RULES": "all"})
    assert (every.strict_faults, every.strict_rules) == (
        frozenset(soak.STRICT_FAULT_KINDS),
        frozenset(soak.STRICT_RULES),
    )
    none = SoakConfig.from_env({"SOAK_STRICT_FAULTS": "none", "SOAK_STRICT_RULES": "none"})
    assert (none.strict_faults, none.strict_rules) == (frozenset(), frozenset())
    some = SoakConfig.from_env({"SOAK_STRICT_FAULTS": "repeat_applies, undocumented_row"})
    assert some.strict_faults == {"repeat_applies", "undocumented_row"}
    with pytest.raises(ValueError, match="SOAK_STRICT_RULES: unknown"):
        SoakConfig.from_env({"SOAK_STRICT_RULES": "lenient"})


def test_strict_fault_kinds_are_planned_only_when_switched_on():
    relaxed = soak.plan_orders(SoakConfig(n=600, seed=4, strict_faults=frozenset()))
    assert not {o.category for o in relaxed} & set(soak.STRICT_FAULT_KINDS)
    strict = soak.plan_orders(SoakConfig(n=600, seed=4, strict_faults=frozenset(soak.STRICT_FAULT_KINDS)))
    by_kind = {kind: [o for o in strict if o.category == kind] for kind in soak.STRICT_FAULT_KINDS}
    assert all(len(orders) == 12 for orders in by_kind.values()), {k: len(v) for k, v in by_kind.items()}
    for order in by_kind["applied_then_5xx"]:
        assert order.transaction is not None
        assert [(f.kind, f.status in (502, 504)) for f in order.transaction.faults] == [
            ("applied_then_5xx", True)
        ]
    for kind in ("repeat_applies", "processing_while_paid", "undocumented_row"):
        for order in by_kind[kind]:
            assert order.transaction is not None
            assert order.transaction.anomaly is not None
            assert order.transaction.anomaly.kind == kind
            assert order.transaction.in_progress_range is not None
    assert {o.transaction.state for o in by_kind["processing_while_paid"] if o.transaction} == {"paid"}
    for order in by_kind["refused_but_live"]:
        assert order.transaction is not None
        assert (
            order.transaction.state,
            order.transaction.cancel_respcd in ("1261", "1147", "1201", "2005", "1142", "1181"),
        ) == ("unpaid", True)
    for order in by_kind["aliased_duplicate"]:
        assert order.transaction is not None
        assert order.duplicate in ("same batch", "later")
        assert order.message["out_trade_no"] == order.key == order.transaction.out_trade_no
        assert "syssn" not in order.message
        assert order.alias is not None
        assert order.duplicate_message == order.alias
        assert (order.alias["syssn"], "out_trade_no" in order.alias) == (order.transaction.syssn, False)


def test_an_aliased_payment_is_one_order_to_the_judge():
    """Outcomes and calls that name the payment by its syssn alone still belong to the order."""
    (order,) = [
        o
        for o in soak.plan_orders(SoakConfig(n=100, seed=4, strict_faults=frozenset({"aliased_duplicate"})))
        if o.category == "aliased_duplicate"
    ][:1]
    assert order.transaction is not None
    txn = order.transaction
    by_out = {"out_trade_no": txn.out_trade_no, "txamt": str(txn.txamt), "txdtm": txn.txdtm}
    by_syssn = {"syssn": txn.syssn, "txamt": str(txn.txamt), "txdtm": txn.txdtm}
    first, second = call(REVERSAL), call(REVERSAL, respcd="1264")
    calls = [
        dataclasses.replace(first, params=by_out, keys=(txn.syssn,)),
        dataclasses.replace(
            call(QUERY, rows=[row(cancel="1")]),
            params={"out_trade_no": txn.out_trade_no},
            keys=(txn.syssn,),
            answer={
                "respcd": "0000",
                "data": [
                    {"syssn": txn.syssn, "out_trade_no": txn.out_trade_no, "cancel": "1", "respcd": "1143"}
                ],
            },
        ),
        dataclasses.replace(second, params=by_syssn, keys=(txn.syssn,)),
    ]
    run = soak._Run(SoakConfig(n=1), [order], calls=calls)
    run.ledger[order.key] = Ledger(True, "unpaid", cancel=1, applied=1)
    run.outcomes = [
        {
            "out_trade_no": txn.out_trade_no,
            "syssn": None,
            "status": "CANCELLED",
            "outcome_id": "by-out-trade-no",
            "decided_by": "cancel-function",
            "reason": "QFPay confirmed the reversal",
        },
        {
            "out_trade_no": None,
            "syssn": txn.syssn,
            "status": "NOT_CHARGED",
            "outcome_id": "by-syssn",
            "decided_by": "poll-loop",
            "reason": "the Enquiry shows the payment closed",
        },
    ]
    (found,) = soak.collect_evidence(run)
    assert (found.statuses, found.outcome_ids, len(found.calls)) == (
        ["CANCELLED", "NOT_CHARGED"],
        ["by-out-trade-no", "by-syssn"],
        3,
    )
    verdict = judge([found])
    # Two outcome identities for one payment, and where each came from.
    (lost,) = verdict.lost
    assert "by-out-t CANCELLED by cancel-function: QFPay confirmed the reversal" in lost
    assert "by-syssn NOT_CHARGED by poll-loop: the Enquiry shows the payment closed" in lost
    assert "; faults none; calls reversal:0000 query:0000 reversal:1264; duplicated (later)" in lost
    assert len(verdict.double_reversals) == 1  # the second cancel came after the first took effect
    assert "outcomes disagree" in verdict.contradictions[0]
