"""A batch's Enquiries by syssn asked as one request: each order reads what QFPay would have
answered it alone (cancellation.enquiry_round)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from cancellation.enquiry import read_enquiry
from cancellation.enquiry_round import ROUND_PAGE_SIZE, EnquiryRound
from cancellation.invocation import spend_until
from cancellation.orders import Order
from cancellation.outcomes import Status
from cancellation.qfpay import QFPayUnavailable

A, B, C = "20260000000000000001", "20260000000000000002", "20260000000000000003"
REVERSAL_OF_A = "20260000000000000011"


def row(syssn: str, **fields: str) -> dict[str, str]:
    return {"syssn": syssn, "respcd": "0000", "cancel": "1", **fields}


class QFPay:
    """QFPay's Enquiry over a fixed set of rows: the rows whose syssn is in the query's list."""

    def __init__(self, rows: list[dict[str, str]], answer: Mapping[str, Any] | None = None) -> None:
        self.rows = rows
        self.answer = answer
        self.asked: list[dict[str, str | None]] = []
        self.lock = threading.Lock()

    def send(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        with self.lock:
            self.asked.append(dict(params))
        if self.answer is not None:
            return dict(self.answer)
        wanted = str(params["syssn"]).split(",")
        return {"respcd": "0000", "data": [r for r in self.rows if r["syssn"] in wanted]}


def ask_together(shared: EnquiryRound, qfpay: QFPay, queries: list[dict[str, str | None]]) -> list[Any]:
    """Each query from its own thread, as the orders of a batch ask; the answer or the exception."""
    results: list[Any] = [None] * len(queries)

    def one(i: int) -> None:
        try:
            results[i] = shared.ask(queries[i], qfpay.send)
        except Exception as exc:
            results[i] = exc
        finally:
            shared.finished()

    # Each thread in a copy of the caller's context, as the batch's pool runs its orders.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(one, i)) for i in range(len(queries))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
        assert not thread.is_alive(), "a caller of the round never got its answer"
    return results


def test_the_orders_of_a_batch_share_one_request_and_each_reads_only_its_own_rows() -> None:
    refund_of_b = row("20260000000000000022", order_type="refund", origssn=B)
    qfpay = QFPay([row(A), row(REVERSAL_OF_A, orig_syssn=A), row(B), refund_of_b, row(C)])
    queries: list[dict[str, str | None]] = [
        {"mchid": "M1", "syssn": f"{A},{REVERSAL_OF_A}"},
        {"mchid": "M1", "syssn": B},
        {"mchid": "M1", "syssn": C},
    ]

    answers = ask_together(EnquiryRound(3, 10, linger=30), qfpay, queries)

    assert len(qfpay.asked) == 1
    [asked] = qfpay.asked
    assert asked["mchid"] == "M1"
    assert sorted(str(asked["syssn"]).split(",")) == sorted([A, REVERSAL_OF_A, B, C])
    assert asked["page_size"] == str(ROUND_PAGE_SIZE)
    assert [r["syssn"] for r in answers[0]["data"]] == [A, REVERSAL_OF_A]
    # QFPay lists rows by their own syssn; a refund naming B is kept for B, never given to others.
    assert [r["syssn"] for r in answers[1]["data"]] == [B]
    assert [r["syssn"] for r in answers[2]["data"]] == [C]


def test_a_reversal_of_my_payment_listed_for_another_order_is_never_read_as_mine() -> None:
    """Order A's payment was reversed earlier (a row of its own, sharing the payment's
    out_trade_no). Alone, QFPay lists the payment (cancelled). A batch-mate's message names the
    earlier reversal: the shared answer lists both, and the reversal read as A's payment would say
    "paid, not cancelled". A asks alone instead."""
    payment = {
        "syssn": A,
        "out_trade_no": "ORDER-A",
        "respcd": "0000",
        "cancel": "1",
        "txamt": "100",
        "txcurrcd": "HKD",
    }
    earlier_reversal = {**payment, "syssn": REVERSAL_OF_A, "orig_syssn": A, "cancel": "0"}
    qfpay = QFPay([earlier_reversal, payment])
    order = Order(txamt=100, txdtm="2026-11-26 10:00:00", out_trade_no="ORDER-A", syssn=A, mchid="M1")
    alone = read_enquiry(qfpay.send({"mchid": "M1", "syssn": A}), order)
    qfpay.asked.clear()

    answers = ask_together(
        EnquiryRound(2, 10, linger=30),
        qfpay,
        [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": REVERSAL_OF_A}],
    )

    assert alone.status is Status.CANCELLED
    assert read_enquiry(answers[0], order).status is Status.CANCELLED
    assert [r["syssn"] for r in answers[0]["data"]] == [A]
    assert {"mchid": "M1", "syssn": A} in qfpay.asked[1:]  # A asked alone after the shared answer


def test_an_order_alone_asks_exactly_its_own_query() -> None:
    qfpay = QFPay([row(A)])
    query: dict[str, str | None] = {"mchid": "M1", "syssn": f"{A},{REVERSAL_OF_A}"}

    [answer] = ask_together(EnquiryRound(1, 10, linger=30), qfpay, [query])

    assert qfpay.asked == [query]
    assert answer == {"respcd": "0000", "data": [row(A)]}


def test_a_failed_shared_answer_sends_each_order_to_ask_alone() -> None:
    """Another order's number may be what QFPay refused (a parameter error): only each order's own
    query says whether its own would have been answered."""
    rows = [row(A)]

    def strict(params: Mapping[str, str | None]) -> dict[str, Any]:
        wanted = str(params["syssn"]).split(",")
        if any(not (n.isdigit() and len(n) == 20) for n in wanted):
            return {"respcd": "1104", "resperr": "parameter error: syssn"}
        return {"respcd": "0000", "data": [r for r in rows if r["syssn"] in wanted]}

    qfpay = QFPay([])
    qfpay.send = strict  # type: ignore[method-assign]

    answers = ask_together(
        EnquiryRound(2, 10, linger=30), qfpay, [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": "X1"}]
    )

    assert answers[0] == {"respcd": "0000", "data": [row(A)]}
    assert answers[1]["respcd"] == "1104"


@pytest.mark.parametrize(
    "answer",
    [{"respcd": "1100", "resperr": "system maintenance"}, {"respcd": "0000"}],
    ids=["failed", "no rows"],
)
def test_an_answer_no_order_can_read_is_asked_again_by_each_alone(answer: dict[str, str]) -> None:
    qfpay = QFPay([], answer=answer)

    answers = ask_together(
        EnquiryRound(2, 10, linger=30), qfpay, [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": B}]
    )

    assert len(qfpay.asked) == 3
    assert answers == [answer, answer]


def test_qfpay_unreachable_is_what_every_order_meets() -> None:
    def down(params: Mapping[str, str | None]) -> dict[str, Any]:
        raise QFPayUnavailable("enquiry: connection refused")

    qfpay = QFPay([])
    qfpay.send = down  # type: ignore[method-assign]

    answers = ask_together(
        EnquiryRound(2, 10, linger=30), qfpay, [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": B}]
    )

    assert all(isinstance(answer, QFPayUnavailable) for answer in answers)


def test_a_full_page_may_hide_rows_so_each_order_asks_alone() -> None:
    full = {"respcd": "0000", "data": [row(f"2026{n:016d}") for n in range(ROUND_PAGE_SIZE)]}
    qfpay = QFPay([], answer=full)
    queries: list[dict[str, str | None]] = [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": B}]

    ask_together(EnquiryRound(2, 10, linger=30), qfpay, queries)

    assert len(qfpay.asked) == 3
    assert sorted(qfpay.asked[1:], key=str) == sorted(queries, key=str)


def test_merchants_are_asked_apart() -> None:
    qfpay = QFPay([row(A), row(B)])

    answers = ask_together(
        EnquiryRound(2, 10, linger=30), qfpay, [{"mchid": "M1", "syssn": A}, {"mchid": "M2", "syssn": B}]
    )

    assert sorted(str(q["mchid"]) for q in qfpay.asked) == ["M1", "M2"]
    assert [r["syssn"] for r in answers[0]["data"]] == [A]
    assert [r["syssn"] for r in answers[1]["data"]] == [B]


def test_an_order_that_finishes_without_asking_does_not_hold_the_others() -> None:
    shared = EnquiryRound(2, 10, linger=600)
    qfpay = QFPay([row(A)])
    shared.finished()  # decided without an Enquiry (a refusal, a hand-off)

    [answer] = ask_together(shared, qfpay, [{"mchid": "M1", "syssn": A}])

    assert [r["syssn"] for r in answer["data"]] == [A]


def test_an_order_busy_elsewhere_holds_the_others_no_longer_than_the_linger() -> None:
    shared = EnquiryRound(2, 10, linger=0.2)  # the other order never asks nor finishes
    qfpay = QFPay([row(A)])

    [answer] = ask_together(shared, qfpay, [{"mchid": "M1", "syssn": A}])

    assert qfpay.asked == [{"mchid": "M1", "syssn": A}]
    assert [r["syssn"] for r in answer["data"]] == [A]


def test_the_round_never_holds_an_order_past_the_invocation_s_last_moment_for_a_request() -> None:
    """The other order is busy elsewhere; the invocation's requests must start within 0.3 s
    (``spend_until``): the order asks at once, not after the 30 s linger."""
    qfpay = QFPay([row(A)])

    def near_the_end() -> list[Any]:
        spend_until.set(time.time() + 0.3)
        return ask_together(EnquiryRound(2, 10, linger=30), qfpay, [{"mchid": "M1", "syssn": A}])

    started = time.time()
    [answer] = contextvars.copy_context().run(near_the_end)

    assert time.time() - started < 10
    assert [r["syssn"] for r in answer["data"]] == [A]


def test_orders_waiting_for_a_free_thread_of_the_pool_do_not_hold_the_running_ones() -> None:
    # Ten orders, a pool of two: the two running ones ask while eight wait for a thread.
    shared = EnquiryRound(10, 2, linger=600)
    qfpay = QFPay([row(A), row(B)])

    answers = ask_together(shared, qfpay, [{"mchid": "M1", "syssn": A}, {"mchid": "M1", "syssn": B}])

    assert len(qfpay.asked) == 1
    assert [r["syssn"] for r in answers[1]["data"]] == [B]


@pytest.mark.parametrize(
    ("params", "shared"),
    [
        ({"mchid": "M1", "syssn": A}, True),
        ({"mchid": None, "syssn": f"{A},{B}"}, True),
        ({"mchid": "M1", "syssn": ""}, False),
        ({"mchid": "M1", "out_trade_no": "O-1", "start_time": "x", "end_time": "y"}, False),
        ({"mchid": "M1", "syssn": A, "page_size": "100"}, False),
        ({"mchid": "M1", "syssn": A, "respcd": "0000"}, False),
    ],
)
def test_only_a_query_by_syssn_alone_is_shared(params: dict[str, str | None], shared: bool) -> None:
    assert EnquiryRound.shares(params) is shared
