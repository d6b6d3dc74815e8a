"""Reading QFPay's Transaction Enquiry answers for the original payment."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from cancellation.enquiry import Finding, enquire, enquiry_queries, merged, month_windows, read_enquiry
from cancellation.orders import Order
from cancellation.outcomes import Status

from tests.unit import fakes
from tests.unit.fakes import ORDER, OUT_TRADE_NO, REVERSAL_SYSSN, SYSSN

ORDER_BY_OUT_TRADE_NO = Order(txamt=1250, txdtm="2026-11-26 10:00:00", out_trade_no=OUT_TRADE_NO)
ORDER_BY_SYSSN = Order(txamt=1250, txdtm="2026-11-26 10:00:00", syssn=SYSSN)


def payment_row(**changes: Any) -> dict[str, Any]:
    """A completed payment row as QFPay's /trade/v1/query returns it (values are strings)."""
    completed = {
        "paydtm": "2026-11-26 10:00:06",
        "respcd": "0000",
        "errmsg": "success",
        "chnlsn": "2026112622001400000000000001",
        "cash_fee": "1250",
        "cash_fee_type": "HKD",
        "cash_refund_fee": "",
        "cash_refund_fee_type": "",
        "exchange_rate": "",
    }
    return fakes.payment_row(**{**completed, **changes})


def refund_row(**changes: Any) -> dict[str, Any]:
    row = payment_row(
        syssn="20261126000300030000000007",
        out_trade_no="REFUND-0001",
        order_type="refund",
        origssn=SYSSN,
        sysdtm="2026-11-26 10:03:00",
    )
    row.update(changes)
    return row


def answer(*rows: Any, **top: Any) -> dict[str, Any]:
    return {**fakes.enquiry_answer(*rows), "resperr": "success", **top}


# --- the cancel flag ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["1", "2", 1, 2])
@pytest.mark.parametrize("row_respcd", ["0000", "1143"])
def test_cancel_flag_1_2_is_cancelled(flag, row_respcd):
    finding = read_enquiry(answer(payment_row(cancel=flag, respcd=row_respcd)), ORDER)
    assert finding.status is Status.CANCELLED
    assert finding.respcd == row_respcd
    assert finding.found
    assert not finding.live
    assert finding.reason.startswith("Enquiry confirms the payment is ")


@pytest.mark.parametrize("flag", ["3", 3])
def test_cancel_flag_3_refunded_is_not_charged_but_not_our_cancellation(flag):
    finding = read_enquiry(answer(payment_row(cancel=flag, respcd="0000")), ORDER)
    assert finding.status is Status.NOT_CHARGED
    assert not finding.live
    assert "refunded" in finding.reason


def test_cancel_flag_text_is_kept_in_the_reason():
    assert "reversed" in read_enquiry(answer(payment_row(cancel="1")), ORDER).reason
    assert "cancelled" in read_enquiry(answer(payment_row(cancel="2")), ORDER).reason
    assert "refunded" in read_enquiry(answer(payment_row(cancel="3")), ORDER).reason


@pytest.mark.parametrize("flag", ["4", "5", 4, 5])
def test_cancel_flag_4_5_still_charged_needs_refund(flag):
    finding = read_enquiry(answer(payment_row(cancel=flag)), ORDER)
    assert finding.status is Status.REFUND_REQUIRED
    assert not finding.live


@pytest.mark.parametrize("flag", ["9", "6", "-1", "01", "yes", 1.0, True])
@pytest.mark.parametrize("row_respcd", ["0000", "1143"])
def test_undocumented_cancel_flag_decides_nothing_and_shows_the_row(flag, row_respcd):
    """QFPay documents 0-5 only: any other flag is not read as cancelled (or as anything)."""
    finding = read_enquiry(answer(payment_row(cancel=flag, respcd=row_respcd)), ORDER)
    assert finding.status is None
    assert finding.found
    assert not finding.live  # never a reason to send a cancel either
    assert "cancel flag" in finding.reason
    assert '"cancel": ' in finding.reason  # the raw row, for the person who looks


# --- the row's own respcd ----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["0", 0])
def test_completed_and_not_cancelled_needs_refund(flag):
    finding = read_enquiry(answer(payment_row(cancel=flag, respcd="0000")), ORDER)
    assert finding.status is Status.REFUND_REQUIRED
    assert finding.respcd == "0000"
    assert finding.reason == "payment completed and was not cancelled"


def test_completed_then_fully_refunded_is_not_charged():
    finding = read_enquiry(answer(payment_row(), refund_row(respcd="0000")), ORDER)
    assert finding.status is Status.NOT_CHARGED
    assert finding.reason == "payment completed and was refunded in full"


def test_refund_row_before_the_payment_row_is_still_matched():
    finding = read_enquiry(answer(refund_row(), payment_row()), ORDER_BY_OUT_TRADE_NO)
    assert finding.status is Status.NOT_CHARGED


@pytest.mark.parametrize("refund_respcd", ["1143", "1269", "1265"])
def test_refund_that_did_not_succeed_still_needs_refund(refund_respcd):
    finding = read_enquiry(answer(payment_row(), refund_row(respcd=refund_respcd)), ORDER)
    assert finding.status is Status.REFUND_REQUIRED


def test_refund_of_another_payment_does_not_count():
    other = refund_row(origssn="20261126000101000099")
    assert read_enquiry(answer(payment_row(), other), ORDER).status is Status.REFUND_REQUIRED


def test_partial_refund_row_is_not_a_full_refund():
    finding = read_enquiry(answer(payment_row(), refund_row(txamt="1", respcd="0000")), ORDER)
    assert finding.status is Status.REFUND_REQUIRED


@pytest.mark.parametrize("row_respcd", ["1143", "1145", "1298"])
def test_payment_in_progress_is_live(row_respcd):
    finding = read_enquiry(answer(payment_row(respcd=row_respcd, paydtm="")), ORDER)
    assert finding.status is None
    assert finding.found
    assert finding.live
    assert finding.respcd == row_respcd
    assert row_respcd in finding.reason


def test_row_respcd_given_as_a_number_is_read():
    finding = read_enquiry(answer(payment_row(respcd=1143)), ORDER)
    assert finding.live
    assert finding.respcd == "1143"


@pytest.mark.parametrize("row_respcd", ["1261", "1201", "1147", "1142", "1181", "1212"])
def test_failed_payment_is_not_charged(row_respcd):
    finding = read_enquiry(answer(payment_row(respcd=row_respcd, paydtm="")), ORDER)
    assert finding.status is Status.NOT_CHARGED
    assert finding.respcd == row_respcd
    assert not finding.live
    assert finding.reason.startswith(f"payment did not complete (respcd {row_respcd}")


# --- a row we cannot read decides nothing -----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"respcd": None}, "no respcd"),
        ({"respcd": ""}, "no respcd"),
        ({"respcd": "9999"}, "not in QFPay's table"),
        ({"respcd": "00000"}, "not in QFPay's table"),
        ({"respcd": "1205"}, "not a payment state"),  # "try later"
        ({"respcd": "1100"}, "not a payment state"),  # maintenance
        ({"respcd": "1108"}, "not a payment state"),  # signature
        ({"respcd": "1260"}, "not a payment state"),  # "already paid" is not how a row says paid
        ({"cancel": None}, "no cancel flag"),
        ({"cancel": ""}, "no cancel flag"),
        ({"txamt": "12.50"}, "txamt"),
        ({"txamt": None}, "txamt"),
        ({"txcurrcd": "XXX"}, "txcurrcd"),
        ({"txcurrcd": None}, "txcurrcd"),
    ],
)
def test_row_we_cannot_read_decides_nothing(changes, problem):
    finding = read_enquiry(answer(payment_row(**changes, paydtm="")), ORDER)
    assert finding.status is None
    assert finding.found
    assert not finding.live
    assert problem in finding.reason
    assert f'"syssn": "{SYSSN}"' in finding.reason  # the raw row is kept


def test_row_without_the_cancel_field_decides_nothing():
    row = payment_row(respcd="0000")
    del row["cancel"]
    finding = read_enquiry(answer(row), ORDER)
    assert (finding.status, finding.live) == (None, False)


def test_refund_row_whose_amount_cannot_be_read_decides_nothing():
    finding = read_enquiry(answer(payment_row(), refund_row(txamt="lots", respcd="0000")), ORDER)
    assert finding.status is None
    assert "refund row" in finding.reason


def test_a_very_long_row_is_cut_in_the_reason():
    finding = read_enquiry(answer(payment_row(respcd="7777", errmsg="x" * 5000)), ORDER)
    assert finding.status is None
    assert len(finding.reason) < 1000


# --- a paid row while a cancel of ours may still take effect ------------------------------------


def reversal_row(respcd: str) -> dict[str, Any]:
    return payment_row(syssn=REVERSAL_SYSSN, respcd=respcd, cancel="0")


def test_paid_row_while_our_cancel_is_pending_is_not_yet_a_refund_case():
    finding = read_enquiry(
        answer(payment_row(respcd="0000", cancel="0")),
        ORDER,
        reversal_syssn=REVERSAL_SYSSN,
        cancel_pending=True,
    )
    assert finding.status is None
    assert not finding.live  # paid: a cancel would not be sent again either
    assert "may still take effect" in finding.reason


@pytest.mark.parametrize("own_respcd", ["1143", "1145", "0000", "7777"])
def test_paid_row_while_our_cancel_row_is_not_failed_waits(own_respcd):
    rows = answer(reversal_row(own_respcd), payment_row(respcd="0000", cancel="0"))
    finding = read_enquiry(rows, ORDER, reversal_syssn=REVERSAL_SYSSN, cancel_pending=True)
    assert finding.status is None
    assert own_respcd in finding.reason


@pytest.mark.parametrize("own_respcd", ["1261", "1147", "1260"])
def test_paid_row_and_our_cancel_row_failed_needs_refund(own_respcd):
    rows = answer(reversal_row(own_respcd), payment_row(respcd="0000", cancel="0"))
    finding = read_enquiry(rows, ORDER, reversal_syssn=REVERSAL_SYSSN, cancel_pending=True)
    assert finding.status is Status.REFUND_REQUIRED
    assert own_respcd in finding.reason


def test_our_cancel_row_sharing_the_out_trade_no_is_not_the_payment():
    rows = answer(reversal_row("0000"), payment_row(respcd="1143"))
    finding = read_enquiry(rows, ORDER_BY_OUT_TRADE_NO, reversal_syssn=REVERSAL_SYSSN)
    assert finding.live
    assert finding.respcd == "1143"


def test_paid_row_with_nothing_of_ours_pending_needs_refund():
    finding = read_enquiry(answer(payment_row(respcd="0000")), ORDER, cancel_pending=False)
    assert finding.status is Status.REFUND_REQUIRED


# --- finding the row ---------------------------------------------------------------------------


# QFPay's empty list of rows shows it does not know the payment; an answer without the list (or
# with rows that are not objects) shows nothing and is not read as that.
@pytest.mark.parametrize(("data", "unknown"), [([], True), (None, False), (["not a row"], False)])
def test_no_rows_means_not_found_and_not_live(data, unknown):
    finding = read_enquiry(answer(data=data), ORDER)
    assert finding == Finding(
        None, "QFPay has no record of the transaction", found=False, unknown_to_qfpay=unknown
    )
    assert not finding.live


def test_a_row_naming_the_order_without_its_payment_row_is_not_unknown_to_qfpay():
    refund = {"syssn": "20261126000300020099999999", "origssn": ORDER.syssn, "order_type": "refund"}
    finding = read_enquiry(answer(data=[refund]), ORDER)
    assert (finding.found, finding.unknown_to_qfpay) == (False, False)


def test_missing_data_means_not_found():
    reply = answer()
    del reply["data"]
    assert read_enquiry(reply, ORDER).found is False


def test_rows_of_other_orders_mean_not_found():
    other = payment_row(syssn="20261126000101000099", out_trade_no="SHOP-OTHER", cancel="1")
    finding = read_enquiry(answer(other), ORDER)
    assert not finding.found
    assert finding.status is None


def test_row_matched_by_syssn():
    row = payment_row(out_trade_no="", cancel="2")
    assert read_enquiry(answer(row), ORDER_BY_SYSSN).status is Status.CANCELLED


def test_row_matched_by_out_trade_no():
    row = payment_row(syssn="20261126000101000042", cancel="2")
    assert read_enquiry(answer(row), ORDER_BY_OUT_TRADE_NO).status is Status.CANCELLED


def test_the_reversal_row_is_not_read_as_the_payment():
    """The query asks for the payment and the reversal together: only the payment's row decides."""
    reversal = payment_row(syssn=REVERSAL_SYSSN, out_trade_no="", respcd="0000", cancel="0")
    finding = read_enquiry(answer(reversal, payment_row(respcd="1143")), ORDER_BY_SYSSN)
    assert finding.live
    assert finding.respcd == "1143"


def test_refund_row_with_the_same_out_trade_no_is_not_the_payment():
    refund = refund_row(out_trade_no=OUT_TRADE_NO, respcd="0000")
    assert read_enquiry(answer(refund), ORDER_BY_OUT_TRADE_NO).found is False


def test_rows_that_are_not_objects_are_skipped_when_looking_for_the_payment():
    assert read_enquiry(answer("garbage", None, 7), ORDER).found is False


def test_rows_that_are_not_objects_are_skipped():
    finding = read_enquiry(answer("garbage", None, 7, payment_row(cancel="1")), ORDER)
    assert finding.status is Status.CANCELLED


def test_row_without_order_type_is_a_payment():
    row = payment_row(cancel="1")
    del row["order_type"]
    assert read_enquiry(answer(row), ORDER).status is Status.CANCELLED


# --- a failed query ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("respcd", "resperr"),
    [("1100", "system maintenance"), ("1108", "sign error"), ("1205", ""), (None, None)],
)
def test_query_that_failed_raises(respcd, resperr):
    with pytest.raises(ValueError, match="enquiry failed") as caught:
        read_enquiry(answer(payment_row(cancel="1"), respcd=respcd, resperr=resperr), ORDER)
    assert str(respcd) in str(caught.value)
    if resperr:
        assert resperr in str(caught.value)


def test_data_that_is_not_a_list_raises():
    with pytest.raises(ValueError, match="data is not a list"):
        read_enquiry(answer(data={"syssn": SYSSN}), ORDER)


# --- the query ---------------------------------------------------------------------------------


def test_params_ask_for_the_original_and_the_reversal_in_one_syssn():
    [params] = enquiry_queries(ORDER, REVERSAL_SYSSN)
    assert params["syssn"] == f"{SYSSN},{REVERSAL_SYSSN}"
    assert params["mchid"] == "MCH1"


def test_params_without_a_reversal_ask_for_the_original():
    assert [q["syssn"] for q in enquiry_queries(ORDER)] == [SYSSN]
    assert [q["syssn"] for q in enquiry_queries(ORDER, "")] == [SYSSN]


def test_by_syssn_one_query_without_a_window_whatever_the_date():
    month_end = ORDER._replace(txdtm="2026-11-30 23:30:00")
    assert enquiry_queries(month_end) == [{"mchid": "MCH1", "syssn": SYSSN}]


def test_params_of_an_order_known_only_by_out_trade_no():
    [params] = enquiry_queries(ORDER_BY_OUT_TRADE_NO, REVERSAL_SYSSN)
    assert params["out_trade_no"] == OUT_TRADE_NO
    # QFPay filters on every list given: syssn=<reversal> together with out_trade_no=<order> would
    # leave out the original payment's row.
    assert not params.get("syssn")
    assert params.get("mchid") is None


@pytest.mark.parametrize(
    ("txdtm", "windows"),
    [
        ("2026-11-15 10:00:00", [("2026-11-14 10:00:00", "2026-11-16 10:00:00")]),  # inside November
        (
            "2026-11-30 23:30:00",  # a day later is December: November's part, then December's
            [("2026-11-29 23:30:00", "2026-11-30 23:59:59"), ("2026-12-01 00:00:00", "2026-12-01 23:30:00")],
        ),
        (
            "2026-12-01 00:10:00",  # a day earlier is November
            [("2026-11-30 00:10:00", "2026-11-30 23:59:59"), ("2026-12-01 00:00:00", "2026-12-02 00:10:00")],
        ),
        (
            "2026-12-31 12:00:00",  # into the next year
            [("2026-12-30 12:00:00", "2026-12-31 23:59:59"), ("2027-01-01 00:00:00", "2027-01-01 12:00:00")],
        ),
        (
            "2028-02-28 23:00:00",  # a leap year's February ends on the 29th
            [("2028-02-27 23:00:00", "2028-02-29 23:00:00")],
        ),
    ],
)
def test_by_out_trade_no_one_query_per_calendar_month_the_window_touches(txdtm, windows):
    """QFPay searches one calendar month at most: no window we send crosses a month's end, and
    together they cover a day either side of the order's txdtm."""
    order = Order(txamt=1250, txdtm=txdtm, out_trade_no=OUT_TRADE_NO, mchid="MCH1")
    queries = enquiry_queries(order)
    assert [(q["start_time"], q["end_time"]) for q in queries] == windows
    assert all(q["out_trade_no"] == OUT_TRADE_NO and q["mchid"] == "MCH1" for q in queries)
    assert all(str(q["start_time"])[:7] == str(q["end_time"])[:7] for q in queries)


def test_month_windows_cut_at_each_month_s_last_second():
    fmt = "%Y-%m-%d %H:%M:%S"
    start, end = datetime.strptime("2026-10-20 08:00:00", fmt), datetime.strptime("2027-01-02 08:00:00", fmt)
    pieces = [(s.strftime(fmt), e.strftime(fmt)) for s, e in month_windows(start, end)]
    assert pieces == [
        ("2026-10-20 08:00:00", "2026-10-31 23:59:59"),
        ("2026-11-01 00:00:00", "2026-11-30 23:59:59"),
        ("2026-12-01 00:00:00", "2026-12-31 23:59:59"),
        ("2027-01-01 00:00:00", "2027-01-02 08:00:00"),
    ]
    month_end = datetime.strptime("2026-11-30 23:59:59", fmt)
    assert month_windows(month_end, month_end) == [(month_end, month_end)]


def test_an_enquiry_of_two_months_is_read_as_one_answer_with_the_rows_of_both():
    """The order's txdtm is November's last hour; QFPay dated the payment (sysdtm) in December: its
    row is in December's answer only, and the order reads it as from one query."""
    order = Order(txamt=1250, txdtm="2026-11-30 23:30:00", out_trade_no=OUT_TRADE_NO)
    november = answer(data=[])
    december = answer(data=[payment_row(out_trade_no=OUT_TRADE_NO)])
    asked: list[Mapping[str, str | None]] = []

    def ask(query: Mapping[str, str | None]) -> dict[str, Any]:
        asked.append(query)
        return november if str(query["start_time"]).startswith("2026-11") else december

    finding = read_enquiry(enquire(ask, enquiry_queries(order)), order)
    assert len(asked) == 2
    assert finding.found
    assert finding.payment is not None
    assert finding.payment["syssn"] == SYSSN


def test_an_enquiry_of_two_months_whose_first_query_fails_asks_no_more_and_decides_nothing():
    order = Order(txamt=1250, txdtm="2026-11-30 23:30:00", out_trade_no=OUT_TRADE_NO)
    asked: list[Mapping[str, str | None]] = []

    def ask(query: Mapping[str, str | None]) -> dict[str, Any]:
        asked.append(query)
        return answer(respcd="1100", data=None)

    with pytest.raises(ValueError, match="enquiry failed: respcd 1100"):
        read_enquiry(enquire(ask, enquiry_queries(order)), order)
    assert len(asked) == 1


def test_an_enquiry_of_two_months_one_without_rows_shows_nothing_as_all_qfpay_knows():
    """One month's answer has no data list: the other month's empty list is not read as QFPay
    knowing nothing of the payment."""
    order = Order(txamt=1250, txdtm="2026-11-30 23:30:00", syssn=None, out_trade_no=OUT_TRADE_NO)
    answers = iter([answer(data=[]), answer(data=None)])
    finding = read_enquiry(enquire(lambda _: next(answers), enquiry_queries(order)), order)
    assert (finding.status, finding.found, finding.unknown_to_qfpay) == (None, False, False)
    assert merged([answer(data=[]), answer(data=None)])["data"] == [None]
