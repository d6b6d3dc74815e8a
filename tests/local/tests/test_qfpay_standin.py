"""The QFPay stand-in, exercised over real HTTP.

Requests are signed with our own ``cancellation.signing.sign`` while the stand-in verifies with its
own independent code, so every accepted request cross-checks both. Where a test needs a signature
our signer would never produce (wrong order, lower case, ...), it builds it with hashlib by hand.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from typing import Any

import pytest
import requests
from cancellation.qfpay import (
    Credentials,
    QFPayAmbiguous,
    QFPayClient,
    QFPayUnavailable,
    Timeouts,
    new_pool,
)
from cancellation.signing import response_signature, sign

from tests.local.qfpay_standin import (
    CANCEL_ENDPOINTS,
    DEFAULT_FAULT_WEIGHTS,
    FAULT_KINDS,
    UNDOCUMENTED_RESPCD,
    Anomaly,
    Fault,
    FaultPlan,
    Merchant,
    QFPayStandIn,
    Transaction,
)

PLAIN = Merchant(app_code="APPCODE-PLAIN", client_key="KEY-PLAIN-0123456789")
AGENT = Merchant(app_code="APPCODE-AGENT", client_key="KEY-AGENT-9876543210", mchid="MCH-A1")
TXDTM = "2026-11-26 10:00:00"
RAW_OUT_TRADE_NO = "A&B=C d+e%20f/中文?"  # every character a sloppy signer would mangle


def make_txn(n: int = 1, **changes: Any) -> Transaction:
    fields: dict[str, Any] = {
        "syssn": f"202611260001000200{n:08d}",
        "out_trade_no": f"ORDER-{n}",
        "txamt": 100,
        "txdtm": TXDTM,
        "pay_type": "800101",
    }
    fields.update(changes)
    return Transaction(**fields)


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324 - QFPay's protocol


def send(
    qf: QFPayStandIn,
    endpoint: str,
    params: dict[str, str],
    *,
    merchant: Merchant = PLAIN,
    method: str = "POST",
    sign_type: str = "MD5",
    declared_type: str | None = None,
    signed_params: dict[str, str] | None = None,
    signature: str | None = None,
    app_code: str | None = None,
    timeout: float = 5.0,
) -> requests.Response:
    """Send a signed request; each keyword spoils one aspect of it for the negative tests."""
    if signature is None:
        to_sign = params if signed_params is None else signed_params
        signature = sign(to_sign, merchant.client_key, "SHA256" if sign_type == "SHA256" else "MD5")
    headers = {"X-QF-APPCODE": app_code or merchant.app_code, "X-QF-SIGN": signature}
    if declared_type is not None:
        headers["X-QF-SIGNTYPE"] = declared_type
    url = f"{qf.base_url}/trade/v1/{endpoint}"
    if method == "GET":
        return requests.get(url, params=params, headers=headers, timeout=timeout)
    return requests.request(method, url, data=params, headers=headers, timeout=timeout)


def cancel_params(txn: Transaction, **extra: str) -> dict[str, str]:
    return {"syssn": txn.syssn, "txamt": str(txn.txamt), "txdtm": txn.txdtm, **extra}


def enquire(qf: QFPayStandIn, merchant: Merchant = PLAIN, **params: str) -> dict[str, Any]:
    response = send(qf, "query", params, merchant=merchant)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["respcd"] == "0000", body
    return body


def only_row(qf: QFPayStandIn, txn: Transaction) -> dict[str, Any]:
    rows = enquire(qf, syssn=txn.syssn)["data"]
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    return row


@pytest.fixture
def qf():
    with QFPayStandIn([PLAIN, AGENT]) as standin:
        yield standin


# --------------------------------------------------------------------------- authentication


def test_md5_signature_is_accepted(qf):
    txn = qf.add(make_txn())
    response = send(qf, "reversal", cancel_params(txn))
    assert response.status_code == 200
    assert response.json()["respcd"] == "0000"


def test_sha256_signature_is_accepted(qf):
    txn = qf.add(make_txn())
    response = send(qf, "reversal", cancel_params(txn), sign_type="SHA256", declared_type="SHA256")
    assert response.json()["respcd"] == "0000"


def test_explicit_md5_sign_type_is_accepted(qf):
    txn = qf.add(make_txn())
    response = send(qf, "reversal", cancel_params(txn), declared_type="MD5")
    assert response.json()["respcd"] == "0000"


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param({"signature": "0" * 32}, id="wrong-signature"),
        pytest.param({"signature": ""}, id="empty-signature"),
        pytest.param({"app_code": "NO-SUCH-APPCODE"}, id="wrong-app-code"),
        pytest.param({"merchant": Merchant("APPCODE-PLAIN", "OTHER-KEY")}, id="wrong-client-key"),
        pytest.param({"signed_params": {"txamt": "999"}}, id="tampered-parameter"),
        pytest.param({"signed_params": {"drop": "udid"}}, id="extra-unsigned-parameter"),
        pytest.param({"sign_type": "SHA256"}, id="sha256-signed-but-md5-declared-by-default"),
        pytest.param({"sign_type": "SHA256", "declared_type": "MD5"}, id="sha256-declared-md5"),
        pytest.param({"declared_type": "SHA256"}, id="md5-signed-sha256-declared"),
        pytest.param({"declared_type": "SHA1"}, id="unknown-sign-type"),
        pytest.param({"declared_type": "md5"}, id="sign-type-wrong-spelling"),
    ],
)
def test_bad_authentication_answers_1108_and_changes_nothing(qf, spoil):
    txn = qf.add(make_txn())
    params = cancel_params(txn, udid="TERMINAL-7")
    spoil = dict(spoil)
    if "signed_params" in spoil:
        changes = spoil.pop("signed_params")
        signed = dict(params)
        if "drop" in changes:
            del signed[changes.pop("drop")]
        signed.update(changes)
        spoil["signed_params"] = signed
    response = send(qf, "reversal", params, **spoil)
    assert response.status_code == 200
    body = response.json()
    assert body["respcd"] == "1108"
    assert set(body) == {"respcd", "resperr", "respmsg"}
    assert body["respmsg"] == ""
    assert qf.cancellations_applied(txn.syssn) == 0
    assert qf.transaction(txn.syssn).cancel == 0


@pytest.mark.parametrize("sign_type", ["MD5", "SHA256"])
def test_our_signer_and_the_stand_in_agree_on_order_empties_and_raw_values(qf, sign_type):
    """Names that sort differently by bytes and by case, an empty value, reserved characters."""
    txn = qf.add(make_txn())
    params = cancel_params(txn, Zeta="Z&=中", alpha="a b+c", _under="_", udid="")
    response = send(qf, "reversal", params, sign_type=sign_type, declared_type=sign_type)
    assert response.json()["respcd"] == "0000"


def test_missing_sign_header_answers_1108(qf):
    txn = qf.add(make_txn())
    url = f"{qf.base_url}/trade/v1/reversal"
    response = requests.post(
        url, data=cancel_params(txn), headers={"X-QF-APPCODE": PLAIN.app_code}, timeout=5
    )
    assert response.json()["respcd"] == "1108"


def test_lower_case_hex_signature_is_refused(qf):
    txn = qf.add(make_txn())
    params = cancel_params(txn)
    good = sign(params, PLAIN.client_key)
    assert send(qf, "reversal", params, signature=good.lower()).json()["respcd"] == "1108"
    assert send(qf, "reversal", params, signature=good).json()["respcd"] == "0000"


def test_stand_in_sorts_by_byte_order_not_case_insensitively(qf):
    """Hand-made signatures: the stand-in's own verifier, independent of our signer."""
    txn = qf.add(make_txn())
    params = cancel_params(txn, Zeta="upper", alpha="lower")
    byte_order = "&".join(f"{k}={params[k]}" for k in ["Zeta", "alpha", "syssn", "txamt", "txdtm"])
    case_insensitive = "&".join(f"{k}={params[k]}" for k in ["alpha", "syssn", "txamt", "txdtm", "Zeta"])
    wrong = md5_upper(case_insensitive + PLAIN.client_key)
    assert send(qf, "reversal", params, signature=wrong).json()["respcd"] == "1108"
    right = md5_upper(byte_order + PLAIN.client_key)
    assert send(qf, "reversal", params, signature=right).json()["respcd"] == "0000"


def test_empty_parameter_is_received_but_not_signed(qf):
    txn = qf.add(make_txn())
    params = cancel_params(txn, udid="")
    with_empty = "&".join(f"{k}={params[k]}" for k in sorted(params)) + PLAIN.client_key
    assert "udid=&" not in with_empty  # 'udid' sorts last: the empty pair ends the string
    assert send(qf, "reversal", params, signature=md5_upper(with_empty)).json()["respcd"] == "1108"
    assert send(qf, "reversal", params).json()["respcd"] == "0000"
    assert qf.calls[-1].params["udid"] == ""


def test_repeated_parameter_is_a_format_error(qf):
    txn = qf.add(make_txn())
    body = f"syssn={txn.syssn}&syssn={txn.syssn}&txamt=100&txdtm=2026-11-26+10%3A00%3A00"
    signature = sign({"syssn": txn.syssn, "txamt": "100", "txdtm": TXDTM}, PLAIN.client_key)
    response = requests.post(
        f"{qf.base_url}/trade/v1/reversal",
        data=body,
        headers={
            "X-QF-APPCODE": PLAIN.app_code,
            "X-QF-SIGN": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        timeout=5,
    )
    assert response.json()["respcd"] == "1103"
    assert qf.cancellations_applied(txn.syssn) == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("syssn", "application/x-www-form-urlencoded"),
        ("syssn=%zz", "application/x-www-form-urlencoded"),
        ("syssn=%ff%fe", "application/x-www-form-urlencoded"),
        ('{"syssn": "1"}', "application/json"),
    ],
)
def test_malformed_form_is_a_format_error(qf, body, content_type):
    response = requests.post(
        f"{qf.base_url}/trade/v1/query",
        data=body.encode("ascii"),
        headers={"X-QF-APPCODE": PLAIN.app_code, "X-QF-SIGN": "X", "Content-Type": content_type},
        timeout=5,
    )
    assert response.json()["respcd"] == "1103"


# --------------------------------------------------------------------------- raw values


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_values_with_ampersand_equals_and_unicode_are_signed_raw(qf, method):
    txn = qf.add(make_txn(out_trade_no=RAW_OUT_TRADE_NO))
    params = {"out_trade_no": RAW_OUT_TRADE_NO, "txamt": "100", "txdtm": TXDTM}
    response = send(qf, "close", params, method=method)
    body = response.json()
    assert body["respcd"] == "0000", body
    assert body["out_trade_no"] == RAW_OUT_TRADE_NO
    assert body["orig_syssn"] == txn.syssn
    assert qf.calls[-1].params["out_trade_no"] == RAW_OUT_TRADE_NO


def test_signing_the_url_encoded_value_is_refused(qf):
    qf.add(make_txn(out_trade_no=RAW_OUT_TRADE_NO))
    params = {"out_trade_no": RAW_OUT_TRADE_NO, "txamt": "100", "txdtm": TXDTM}
    encoded = {k: urllib.parse.quote(v, safe="") for k, v in params.items()}
    response = send(qf, "reversal", params, signed_params=encoded)
    assert response.json()["respcd"] == "1108"


def test_unicode_query_value_round_trips(qf):
    txn = qf.add(make_txn(out_trade_no="訂單-一號"))
    rows = enquire(qf, out_trade_no="訂單-一號")["data"]
    assert [row["syssn"] for row in rows] == [txn.syssn]


# --------------------------------------------------------------------------- scripted behaviour


def test_unpaid_reversal_answers_0000_and_enquiry_shows_cancel_1(qf):
    txn = qf.add(make_txn())
    assert only_row(qf, txn)["cancel"] == "0"
    response = send(qf, "reversal", cancel_params(txn))
    body = response.json()
    assert body["respcd"] == "0000"
    assert body["syssn"]
    assert body["syssn"] != txn.syssn  # the reversal's own new number
    assert body["orig_syssn"] == txn.syssn
    assert body["txamt"] == "100"
    assert body["txcurrcd"] == "HKD"
    assert body["txdtm"] == TXDTM
    assert {"sysdtm", "chnlsn", "resperr", "respmsg"} <= set(body)
    assert "out_trade_no" not in body  # only close answers it
    row = only_row(qf, txn)
    assert row["cancel"] == "1"
    assert row["syssn"] == txn.syssn
    assert qf.cancellations_applied(txn.syssn) == 1
    assert qf.transaction(txn.out_trade_no).cancel == 1


def test_reversal_by_out_trade_no(qf):
    txn = qf.add(make_txn())
    params = {"out_trade_no": txn.out_trade_no, "txamt": "100", "txdtm": TXDTM}
    assert send(qf, "reversal", params).json()["orig_syssn"] == txn.syssn


def test_in_progress_for_n_enquiries_then_reversed(qf):
    txn = qf.add(make_txn(in_progress_enquiries=2))
    first = send(qf, "reversal", cancel_params(txn)).json()
    assert first["respcd"] == "1143"
    assert first["syssn"]
    assert qf.cancellations_applied(txn.syssn) == 0
    # A repeat while in progress: same answer, same reversal number, no second effect.
    again = send(qf, "reversal", cancel_params(txn)).json()
    assert (again["respcd"], again["syssn"]) == ("1143", first["syssn"])
    for _ in range(2):
        row = only_row(qf, txn)
        assert (row["respcd"], row["cancel"]) == ("1143", "0")
    row = only_row(qf, txn)
    assert row["cancel"] == "1"
    assert qf.cancellations_applied(txn.syssn) == 1
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1264"
    assert qf.cancellations_applied(txn.syssn) == 1


def test_in_progress_close_ends_with_cancel_2(qf):
    txn = qf.add(make_txn(in_progress_enquiries=1))
    assert send(qf, "close", cancel_params(txn)).json()["respcd"] == "1143"
    assert only_row(qf, txn)["cancel"] == "0"
    assert only_row(qf, txn)["cancel"] == "2"


@pytest.mark.parametrize(
    ("state", "respcd"),
    [("paid", "1260"), ("failed", "1261"), ("closed", "1142"), ("expired", "1181"),
     ("refunded", "1262")],
)  # fmt: skip
@pytest.mark.parametrize("endpoint", ["reversal", "close"])
def test_final_states_refuse_cancellation(qf, state, respcd, endpoint):
    txn = qf.add(make_txn(state=state))
    body = send(qf, endpoint, cancel_params(txn)).json()
    assert body["respcd"] == respcd
    assert "syssn" not in body  # no reversal number of its own
    assert body["orig_syssn"] == txn.syssn
    assert qf.cancellations_applied(txn.syssn) == 0
    assert qf.transaction(txn.syssn).cancel == 0


@pytest.mark.parametrize(
    ("state", "respcd", "cancel"),
    [("unpaid", "1143", "0"), ("paid", "0000", "0"), ("failed", "1147", "0"),
     ("closed", "1142", "0"), ("expired", "1181", "0"), ("refunded", "0000", "3")],
)  # fmt: skip
def test_enquiry_row_respcd_per_state(qf, state, respcd, cancel):
    txn = qf.add(make_txn(state=state))
    row = only_row(qf, txn)
    assert (row["respcd"], row["cancel"]) == (respcd, cancel)


def test_http_500_for_the_first_k_calls(qf):
    txn = qf.add(make_txn(http_500_first=2))
    for _ in range(2):
        response = send(qf, "reversal", cancel_params(txn))
        assert response.status_code == 500
        assert "X-QF-SIGN" not in response.headers
    assert qf.cancellations_applied(txn.syssn) == 0
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"
    assert qf.count("reversal", txn.syssn) == 3
    assert [(c.http_status, c.respcd) for c in qf.calls] == [
        (500, None),
        (500, None),
        (200, "0000"),
    ]


def test_http_500_budget_is_shared_by_every_endpoint(qf):
    txn = qf.add(make_txn(http_500_first=1))
    assert send(qf, "query", {"syssn": txn.syssn}).status_code == 500
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"


def test_transaction_latency_delays_the_answer(qf):
    slow = qf.add(make_txn(1, latency=0.3))
    fast = qf.add(make_txn(2))
    started = time.monotonic()
    send(qf, "query", {"syssn": fast.syssn})
    assert time.monotonic() - started < 0.25
    started = time.monotonic()
    assert send(qf, "reversal", cancel_params(slow)).json()["respcd"] == "0000"
    assert time.monotonic() - started >= 0.3


def test_server_wide_latency():
    with QFPayStandIn([PLAIN], latency=0.2) as standin:
        started = time.monotonic()
        enquire(standin, syssn="NOTHING")
        assert time.monotonic() - started >= 0.2


def test_timed_out_reversal_has_still_taken_effect(qf):
    txn = qf.add(make_txn(latency=0.5))
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(qf, "reversal", cancel_params(txn), timeout=0.1)
    assert qf.cancellations_applied(txn.syssn) == 1
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1264"
    assert qf.cancellations_applied(txn.syssn) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_close_by_get_and_post(qf, method):
    txn = qf.add(make_txn(pay_type="800008"))
    body = send(qf, "close", cancel_params(txn), method=method).json()
    assert body["respcd"] == "0000"
    assert body["out_trade_no"] == txn.out_trade_no
    assert body["syssn"] != txn.syssn
    assert only_row(qf, txn)["cancel"] == "2"
    assert qf.calls[0].method == method


@pytest.mark.parametrize(("allowed", "refused"), [(("GET",), "POST"), (("POST",), "GET")])
def test_close_methods_restricts_close(allowed, refused):
    with QFPayStandIn([PLAIN], close_methods=allowed) as standin:
        txn = standin.add(make_txn())
        response = send(standin, "close", cancel_params(txn), method=refused)
        assert response.status_code == 405
        assert response.headers["Allow"] == allowed[0]
        assert standin.cancellations_applied(txn.syssn) == 0
        response = send(standin, "close", cancel_params(txn), method=allowed[0])
        assert response.json()["respcd"] == "0000"


@pytest.mark.parametrize("endpoint", ["reversal", "query"])
def test_reversal_and_query_are_post_only(qf, endpoint):
    txn = qf.add(make_txn())
    assert send(qf, endpoint, cancel_params(txn), method="GET").status_code == 405
    assert send(qf, endpoint, cancel_params(txn), method="PUT").status_code == 405
    assert qf.cancellations_applied(txn.syssn) == 0


def test_unknown_path_is_404(qf):
    assert requests.post(f"{qf.base_url}/trade/v1/refund", timeout=5).status_code == 404


def test_close_unsupported_answers_1297_without_syssn(qf):
    txn = qf.add(make_txn(close_supported=False))
    body = send(qf, "close", cancel_params(txn)).json()
    assert body["respcd"] == "1297"
    assert "syssn" not in body
    assert qf.cancellations_applied(txn.syssn) == 0
    # Reversal is not affected by close_supported.
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"


def test_not_found_answers_1136(qf):
    qf.add(make_txn())
    params = {"syssn": "20990101000000000000000000", "txamt": "100", "txdtm": TXDTM}
    assert send(qf, "reversal", params).json()["respcd"] == "1136"
    params = {"out_trade_no": "NO-SUCH-ORDER", "txamt": "100", "txdtm": TXDTM}
    assert send(qf, "close", params).json()["respcd"] == "1136"


def test_amount_mismatch_answers_1266(qf):
    txn = qf.add(make_txn())
    body = send(qf, "reversal", cancel_params(txn) | {"txamt": "101"}).json()
    assert body["respcd"] == "1266"
    assert qf.cancellations_applied(txn.syssn) == 0


def test_numbers_naming_different_transactions_answer_1267(qf):
    one, two = qf.add(make_txn(1)), qf.add(make_txn(2))
    params = cancel_params(one, out_trade_no=two.out_trade_no)
    assert send(qf, "reversal", params).json()["respcd"] == "1267"
    params = cancel_params(one, out_trade_no=one.out_trade_no)
    assert send(qf, "reversal", params).json()["respcd"] == "0000"


def test_second_reversal_answers_1264_and_is_not_counted_as_applied(qf):
    txn = qf.add(make_txn())
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"
    second = send(qf, "reversal", cancel_params(txn)).json()
    assert second["respcd"] == "1264"
    assert "syssn" not in second
    assert send(qf, "close", cancel_params(txn)).json()["respcd"] == "1264"
    assert qf.cancellations_applied(txn.syssn) == 1
    assert qf.count("reversal", txn.syssn) == 2


def test_already_cancelled_in_the_ledger_answers_1264(qf):
    txn = qf.add(make_txn(cancel=2))
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1264"
    assert qf.cancellations_applied(txn.syssn) == 0


def test_forced_cancel_respcd(qf):
    risky = qf.add(make_txn(1, cancel_respcd="1294"))
    body = send(qf, "reversal", cancel_params(risky)).json()
    assert (body["respcd"], "syssn" in body) == ("1294", False)
    lying = qf.add(make_txn(2, cancel_respcd="0000"))
    body = send(qf, "reversal", cancel_params(lying)).json()
    assert (body["respcd"], "syssn" in body) == ("0000", True)
    # A forced answer never touches the ledger: the enquiry is the truth.
    assert only_row(qf, lying)["cancel"] == "0"
    assert qf.cancellations_applied(risky.syssn) == qf.cancellations_applied(lying.syssn) == 0


@pytest.mark.parametrize(
    ("change", "respcd"),
    [
        ({"txamt": None}, "1104"),
        ({"txdtm": None}, "1104"),
        ({"syssn": None}, "1104"),
        ({"txamt": "1.00"}, "1103"),
        ({"txamt": "0"}, "1103"),
        ({"txdtm": "2026-11-26T10:00:00"}, "1103"),
    ],
)
def test_request_validation(qf, change, respcd):
    txn = qf.add(make_txn())
    params = {k: v for k, v in (cancel_params(txn) | change).items() if v is not None}
    assert send(qf, "reversal", params).json()["respcd"] == respcd


def test_update_changes_a_transaction_mid_scenario(qf):
    txn = qf.add(make_txn())
    assert qf.update(txn.out_trade_no, state="paid").state == "paid"
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1260"
    with pytest.raises(TypeError):
        qf.update(txn.syssn, syssn="OTHER")


def test_duplicate_transactions_are_refused(qf):
    qf.add(make_txn(1))
    with pytest.raises(ValueError, match="syssn"):
        qf.add(make_txn(1, out_trade_no="OTHER"))
    with pytest.raises(ValueError, match="out_trade_no"):
        qf.add(make_txn(2, out_trade_no="ORDER-1"))


# --------------------------------------------------------------------------- mchid


def test_merchant_with_mchid(qf):
    mine = qf.add(make_txn(1, mchid=AGENT.mchid))
    plain = qf.add(make_txn(2))
    params = cancel_params(mine, mchid="MCH-A1")
    assert send(qf, "reversal", cancel_params(mine), merchant=AGENT).json()["respcd"] == "1104"
    wrong = cancel_params(mine, mchid="MCH-OTHER")
    assert send(qf, "reversal", wrong, merchant=AGENT).json()["respcd"] == "1104"
    # Transactions of another mchid are invisible.
    other = cancel_params(plain, mchid="MCH-A1")
    assert send(qf, "reversal", other, merchant=AGENT).json()["respcd"] == "1136"
    assert send(qf, "reversal", params, merchant=AGENT).json()["respcd"] == "0000"
    rows = enquire(qf, merchant=AGENT, mchid="MCH-A1", syssn=mine.syssn)["data"]
    assert rows[0]["cancel"] == "1"


def test_merchant_without_mchid_must_not_send_one(qf):
    txn = qf.add(make_txn())
    assert send(qf, "reversal", cancel_params(txn, mchid="X")).json()["respcd"] == "1104"
    assert send(qf, "query", {"syssn": txn.syssn, "mchid": "X"}).json()["respcd"] == "1104"


# --------------------------------------------------------------------------- enquiry


def test_enquiry_rows_and_lists(qf):
    one, two = qf.add(make_txn(1)), qf.add(make_txn(2, state="paid", pay_type="800201"))
    body = enquire(qf, syssn=f"{one.syssn},{two.syssn},20990101000000000000000000")
    assert [row["syssn"] for row in body["data"]] == [one.syssn, two.syssn]
    assert (body["page"], body["page_size"]) == (1, 10)
    assert body["resperr"]
    assert body["respmsg"] == ""
    row = body["data"][1]
    expected_fields = {
        "syssn", "out_trade_no", "order_type", "pay_type", "txamt", "txcurrcd", "txdtm",
        "sysdtm", "paydtm", "respcd", "errmsg", "cancel", "chnlsn", "origssn", "cash_fee",
        "cash_fee_type", "cash_refund_fee", "cash_refund_fee_type", "exchange_rate",
    }  # fmt: skip
    assert set(row) == expected_fields
    assert (row["order_type"], row["pay_type"], row["txamt"]) == ("payment", "800201", "100")
    assert row["paydtm"] == TXDTM
    by_out = enquire(qf, out_trade_no=f"{two.out_trade_no}, NOPE")["data"]
    assert [row["syssn"] for row in by_out] == [two.syssn]
    assert enquire(qf, syssn="20990101000000000000000000")["data"] == []
    assert enquire(qf, syssn=one.syssn, out_trade_no=two.out_trade_no)["data"] == []


def test_enquiry_never_lists_a_reversal_number(qf):
    txn = qf.add(make_txn())
    reversal_syssn = send(qf, "reversal", cancel_params(txn)).json()["syssn"]
    assert enquire(qf, syssn=reversal_syssn)["data"] == []
    assert [row["syssn"] for row in enquire(qf)["data"]] == [txn.syssn]


def test_enquiry_filters_and_pages(qf):
    for n in range(1, 6):
        qf.add(make_txn(n, state="paid" if n % 2 else "unpaid"))
    assert len(enquire(qf)["data"]) == 5
    assert len(enquire(qf, respcd="0000")["data"]) == 3
    assert len(enquire(qf, pay_type="800201")["data"]) == 0
    page2 = enquire(qf, page="2", page_size="2")
    assert [row["out_trade_no"] for row in page2["data"]] == ["ORDER-3", "ORDER-4"]
    assert (page2["page"], page2["page_size"]) == (2, 2)
    assert send(qf, "query", {"page": "x"}).json()["respcd"] == "1103"
    assert send(qf, "query", {"page_size": "101"}).json()["respcd"] == "1104"
    assert send(qf, "query", {"page": "0"}).json()["respcd"] == "1104"


# --------------------------------------------------------------------------- response signature


def test_response_signature_is_md5_of_body_and_key(qf):
    txn = qf.add(make_txn())
    answers = [
        send(qf, "reversal", cancel_params(txn)),  # 0000
        send(qf, "reversal", cancel_params(txn)),  # 1264
        send(qf, "query", {"syssn": txn.syssn}),
        send(qf, "reversal", cancel_params(txn), signature="BAD"),  # 1108, known merchant
    ]
    for response in answers:
        digest = hashlib.md5(response.content + PLAIN.client_key.encode())  # noqa: S324
        expected = digest.hexdigest().upper()
        assert response.headers["X-QF-SIGN"] == expected
        assert response_signature(response.content, PLAIN.client_key) == expected
        assert response.headers["Content-Type"].startswith("application/json")
    agent = send(qf, "query", {"mchid": "MCH-A1"}, merchant=AGENT)
    assert agent.headers["X-QF-SIGN"] == response_signature(agent.content, AGENT.client_key)


def test_unknown_app_code_answer_is_unsigned(qf):
    response = send(qf, "query", {}, app_code="NO-SUCH-APPCODE")
    assert response.json()["respcd"] == "1108"
    assert "X-QF-SIGN" not in response.headers


# --------------------------------------------------------------------------- counting


def test_counting_and_call_log(qf):
    one, two = qf.add(make_txn(1)), qf.add(make_txn(2))
    send(qf, "reversal", cancel_params(one))
    send(qf, "reversal", cancel_params(one), signature="BAD")
    send(qf, "close", cancel_params(two), method="GET")
    enquire(qf, syssn=f"{one.syssn},{two.syssn}")
    assert qf.count("reversal") == 2
    assert qf.count("/trade/v1/reversal", one.out_trade_no) == 1  # the bad one named no txn
    assert qf.count("reversal", two.syssn) == 0
    assert qf.count("close", two.out_trade_no) == 1
    assert qf.count("query", one.syssn) == qf.count("query", two.syssn) == 1
    assert qf.count("query") == 1
    first = qf.calls[0]
    assert (first.endpoint, first.method, first.http_status) == ("/trade/v1/reversal", "POST", 200)
    assert (first.respcd, first.key, first.app_code) == ("0000", one.syssn, PLAIN.app_code)
    assert first.params == cancel_params(one)
    assert qf.calls[1].respcd == "1108"
    assert qf.calls[-1].key is None  # an enquiry about two transactions
    assert qf.calls[-1].keys == (one.syssn, two.syssn)
    assert all(first.timestamp <= c.timestamp for c in qf.calls)
    log = repr(qf.calls) + repr(PLAIN)
    assert PLAIN.client_key not in log
    assert "X-QF-SIGN" not in log
    qf.reset_calls()
    assert qf.calls == []
    assert qf.count("reversal") == 0
    assert qf.cancellations_applied(one.out_trade_no) == 1  # the ledger is kept


def test_lifecycle():
    standin = QFPayStandIn([PLAIN], transactions=[make_txn()])
    with pytest.raises(RuntimeError):
        _ = standin.base_url
    standin.start()
    try:
        base_url = standin.base_url
        assert base_url == f"http://127.0.0.1:{standin.port}"
        assert standin.port > 0
        assert enquire(standin)["data"][0]["out_trade_no"] == "ORDER-1"
    finally:
        standin.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{base_url}/trade/v1/query", timeout=1)


# --------------------------------------------------------------------------- fault modes


def our_client(qf: QFPayStandIn, read_timeout: float = 5.0) -> QFPayClient:
    """The service's own client, to see each fault as the cancel function sees it."""
    credentials = Credentials(app_code=PLAIN.app_code, client_key=PLAIN.client_key)
    return QFPayClient(
        qf.base_url,
        lambda _force: credentials,
        http=new_pool(),
        timeouts=Timeouts(connect=1.0, read=read_timeout),
    )


def test_our_client_reports_every_calls_latency_answered_or_not(qf):
    """The QFPayLatency metric: one figure per request sent, also when QFPay answered an error."""
    txn = qf.add(make_txn(faults=(Fault("http_5xx", CANCEL_ENDPOINTS, status=503),)))
    qf.latency = 0.05
    seen: list[float] = []
    client = QFPayClient(
        qf.base_url,
        lambda _force: Credentials(app_code=PLAIN.app_code, client_key=PLAIN.client_key),
        http=new_pool(),
        observe_latency=seen.append,
    )
    with pytest.raises(QFPayAmbiguous, match="HTTP 503"):
        client.reversal(cancel_params(txn))
    assert client.reversal(cancel_params(txn))["respcd"] == "0000"
    assert len(seen) == 2
    assert all(0.05 <= seconds < 5 for seconds in seen)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fault_http_5xx_changes_nothing(qf, status):
    txn = qf.add(make_txn(faults=(Fault("http_5xx", CANCEL_ENDPOINTS, status=status),)))
    response = send(qf, "reversal", cancel_params(txn))
    assert response.status_code == status
    assert "X-QF-SIGN" not in response.headers
    assert qf.cancellations_applied(txn.syssn) == 0
    assert only_row(qf, txn)["cancel"] == "0"
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"  # consumed
    first = qf.calls[0]
    assert (first.http_status, first.fault, first.delivered) == (status, "http_5xx", True)


def test_fault_http_429_answers_retry_after_and_changes_nothing(qf):
    txn = qf.add(make_txn(faults=(Fault("http_429"),)))
    response = send(qf, "reversal", cancel_params(txn))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert qf.cancellations_applied(txn.syssn) == 0
    qf.update(txn.syssn, faults=(Fault("http_429"),))
    with pytest.raises(QFPayUnavailable) as refused:  # what the cancel function makes of it
        our_client(qf).reversal(cancel_params(txn))
    assert refused.value.http_status == 429
    assert qf.cancellations_applied(txn.syssn) == 0


def test_fault_slow_answers_late_and_takes_effect(qf):
    txn = qf.add(make_txn(faults=(Fault("slow", seconds=0.4),)))
    started = time.monotonic()
    body = send(qf, "reversal", cancel_params(txn)).json()
    assert time.monotonic() - started >= 0.4
    assert body["respcd"] == "0000"
    assert qf.cancellations_applied(txn.syssn) == 1
    assert (qf.calls[0].fault, qf.calls[0].delivered) == ("slow", True)


def test_fault_reset_drops_the_connection_before_any_effect(qf):
    txn = qf.add(make_txn(faults=(Fault("reset", CANCEL_ENDPOINTS),)))
    with pytest.raises(requests.exceptions.ConnectionError):
        send(qf, "reversal", cancel_params(txn))
    assert qf.cancellations_applied(txn.syssn) == 0
    assert only_row(qf, txn)["cancel"] == "0"
    call = qf.calls[0]
    assert (call.http_status, call.respcd, call.fault, call.delivered) == (0, None, "reset", False)
    # The cancel function cannot tell: the request was sent, so it is ambiguous, never "unavailable".
    qf.update(txn.syssn, faults=(Fault("reset"),))
    with pytest.raises(QFPayAmbiguous):
        our_client(qf).reversal(cancel_params(txn))
    assert qf.cancellations_applied(txn.syssn) == 0
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"


def test_fault_applied_then_timeout_reverses_but_the_client_times_out(qf):
    txn = qf.add(make_txn(faults=(Fault("applied_then_timeout", CANCEL_ENDPOINTS, seconds=1.0),)))
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(qf, "reversal", cancel_params(txn), timeout=0.3)
    assert qf.cancellations_applied(txn.syssn) == 1
    assert only_row(qf, txn)["cancel"] == "1"
    call = qf.calls[0]
    assert (call.http_status, call.respcd, call.fault, call.delivered) == (
        200,
        "0000",
        "applied_then_timeout",
        False,
    )
    assert call.answer is not None
    assert call.answer["syssn"]  # the reversal's own number, decided but never read
    qf.update(txn.syssn, faults=(Fault("applied_then_timeout", seconds=1.0),))
    with pytest.raises(QFPayAmbiguous):
        our_client(qf, read_timeout=0.3).reversal(cancel_params(txn))
    assert qf.cancellations_applied(txn.syssn) == 1  # the repeat answered 1264, applied nothing


def test_fault_applied_then_reset_reverses_and_drops_the_answer(qf):
    txn = qf.add(make_txn(faults=(Fault("applied_then_reset", ("close",)),)))
    with pytest.raises(requests.exceptions.ConnectionError):
        send(qf, "close", cancel_params(txn))
    assert qf.cancellations_applied(txn.syssn) == 1
    assert only_row(qf, txn)["cancel"] == "2"
    call = qf.calls[0]
    assert (call.http_status, call.respcd, call.fault, call.delivered) == (
        200,
        "0000",
        "applied_then_reset",
        False,
    )


def test_fault_applied_then_reset_starts_an_in_progress_reversal(qf):
    txn = qf.add(make_txn(in_progress_enquiries=1, faults=(Fault("applied_then_reset", CANCEL_ENDPOINTS),)))
    with pytest.raises(QFPayAmbiguous):
        our_client(qf).reversal(cancel_params(txn))
    assert qf.cancellations_applied(txn.syssn) == 0  # started, not yet applied
    assert only_row(qf, txn)["cancel"] == "0"
    assert only_row(qf, txn)["cancel"] == "1"
    assert qf.cancellations_applied(txn.syssn) == 1


def test_fault_on_the_enquiry_only_leaves_cancels_alone(qf):
    txn = qf.add(make_txn(faults=(Fault("http_5xx", ("query",), status=502), Fault("reset", ("reversal",)))))
    # The head of the script aims at the Enquiry: a reversal passes and leaves the script alone.
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "0000"
    assert send(qf, "query", {"syssn": txn.syssn}).status_code == 502
    with pytest.raises(requests.exceptions.ConnectionError):
        send(qf, "reversal", cancel_params(txn))
    assert only_row(qf, txn)["cancel"] == "1"  # the script is used up
    assert [c.fault for c in qf.calls] == [None, "http_5xx", "reset", None]


def test_fault_applied_then_timeout_on_an_enquiry_still_advances_the_countdown(qf):
    txn = qf.add(make_txn(in_progress_enquiries=1, faults=(Fault("applied_then_timeout", ("query",), 1.0),)))
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1143"
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(qf, "query", {"syssn": txn.syssn}, timeout=0.3)
    assert only_row(qf, txn)["cancel"] == "1"


def test_bad_signatures_are_never_faulted(qf):
    txn = qf.add(make_txn(faults=(Fault("reset"),)))
    assert send(qf, "reversal", cancel_params(txn), signature="BAD").json()["respcd"] == "1108"
    with pytest.raises(requests.exceptions.ConnectionError):
        send(qf, "reversal", cancel_params(txn))


def test_fault_validation():
    with pytest.raises(ValueError, match="kind"):
        Fault("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="endpoints"):
        Fault("reset", frozenset({"refund"}))
    with pytest.raises(ValueError, match="500"):
        Fault("http_5xx", status=404)
    assert Fault("slow").delay == 0.5
    assert Fault("applied_then_timeout").delay == 3.0
    assert Fault("reset").delay == 0.0
    assert Fault("reset", ("reversal", "/trade/v1/close")).endpoints == CANCEL_ENDPOINTS
    with pytest.raises(ValueError, match="share"):
        FaultPlan(share=1.5)
    with pytest.raises(ValueError, match="weights"):
        FaultPlan(share=0.5, weights={"teapot": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="in_progress_range"):
        make_txn(in_progress_range=(3, 1))


def test_in_progress_length_is_drawn_from_the_seed():
    def lengths(seed: int) -> list[int]:
        standin = QFPayStandIn([PLAIN], seed=seed)
        return [
            standin.add(make_txn(n, in_progress_range=(1, 6))).in_progress_enquiries for n in range(1, 21)
        ]

    assert lengths(7) == lengths(7)
    assert lengths(7) != lengths(8)
    assert set(lengths(7)) <= set(range(1, 7))
    assert len(set(lengths(7))) > 1


def test_drawn_in_progress_length_is_what_the_enquiry_shows():
    with QFPayStandIn([PLAIN], seed=3) as standin:
        txn = standin.add(make_txn(in_progress_range=(2, 5)))
        drawn = txn.in_progress_enquiries
        assert 2 <= drawn <= 5
        assert send(standin, "reversal", cancel_params(txn)).json()["respcd"] == "1143"
        for _ in range(drawn):
            assert only_row(standin, txn)["cancel"] == "0"
        assert only_row(standin, txn)["cancel"] == "1"
        assert standin.cancellations_applied(txn.syssn) == 1


def test_fault_plan_is_reproducible_from_the_seed():
    plan = FaultPlan(share=0.5, max_faults=3)

    def scripts(seed: int) -> list[tuple[Fault, ...]]:
        standin = QFPayStandIn([PLAIN], seed=seed, fault_plan=plan)
        return [standin.add(make_txn(n)).faults for n in range(1, 201)]

    first = scripts(11)
    assert first == scripts(11)
    assert first != scripts(12)
    faulty = [s for s in first if s]
    assert 60 < len(faulty) < 140  # about half
    assert all(1 <= len(s) <= 3 for s in faulty)
    drawn = [f for s in faulty for f in s]
    assert {f.kind for f in drawn} == set(DEFAULT_FAULT_WEIGHTS)
    assert all(f.endpoints == CANCEL_ENDPOINTS for f in drawn if f.kind.startswith("applied"))
    assert any(f.endpoints == frozenset({"/trade/v1/query"}) for f in drawn)
    assert {f.status for f in drawn if f.kind == "http_5xx"} <= {500, 502, 503, 504}


def test_fault_plan_spares_scripted_transactions_and_share_zero():
    scripted = (Fault("http_429"),)
    standin = QFPayStandIn([PLAIN], seed=1, fault_plan=FaultPlan(share=1.0))
    assert standin.add(make_txn(1, faults=scripted)).faults == scripted
    assert standin.add(make_txn(2)).faults != ()
    standin.configure_faults(seed=1, plan=FaultPlan(share=0.0))
    assert all(standin.add(make_txn(n)).faults == () for n in range(3, 30))


def test_fault_plan_over_http_with_every_kind():
    """A drawn script is served exactly as a hand-written one: one call per fault, in order."""
    plan = FaultPlan(share=1.0, max_faults=1, query_share=0.0, slow_seconds=0.05, timeout_seconds=0.6)
    with QFPayStandIn([PLAIN], seed=5, fault_plan=plan) as standin:
        seen: set[str] = set()
        n = 0
        while seen != set(DEFAULT_FAULT_WEIGHTS):
            n += 1
            txn = standin.add(make_txn(n))
            (fault,) = txn.faults
            seen.add(fault.kind)
            try:
                status = send(standin, "reversal", cancel_params(txn), timeout=0.3).status_code
            except requests.exceptions.RequestException:
                status = 0
            applied = standin.cancellations_applied(txn.syssn)
            if fault.kind in ("http_5xx", "http_429"):
                assert (status, applied) == (fault.status if fault.kind == "http_5xx" else 429, 0)
            elif fault.kind == "reset":
                assert (status, applied) == (0, 0)
            elif fault.kind == "slow":
                assert (status, applied) == (200, 1)
            else:
                assert (status, applied) == (0, 1)
            assert standin.calls[-1].fault == fault.kind


def test_every_fault_kind_but_the_opt_in_ones_is_drawn_by_default():
    """A 5xx or an undocumented code after the call took effect is opt-in: a scenario scripts it or
    gives it a weight."""
    assert set(FAULT_KINDS) - set(DEFAULT_FAULT_WEIGHTS) == {"applied_then_5xx", "applied_then_undocumented"}
    plan = FaultPlan(share=1.0, weights={"applied_then_5xx": 1.0})
    drawn = QFPayStandIn([PLAIN], seed=2, fault_plan=plan).add(make_txn()).faults
    assert drawn
    assert all(f.kind == "applied_then_5xx" and f.endpoints == CANCEL_ENDPOINTS for f in drawn)


# --------------------------------------------------------------------------- anomalies


@pytest.mark.parametrize("status", [502, 504])
def test_fault_applied_then_5xx_reverses_and_answers_a_gateway_error(qf, status):
    txn = qf.add(make_txn(faults=(Fault("applied_then_5xx", CANCEL_ENDPOINTS, status=status),)))
    response = send(qf, "reversal", cancel_params(txn))
    assert response.status_code == status
    assert "X-QF-SIGN" not in response.headers
    assert qf.cancellations_applied(txn.syssn) == 1
    assert only_row(qf, txn)["cancel"] == "1"
    call = qf.calls[0]
    assert (call.http_status, call.respcd, call.fault, call.delivered) == (
        status,
        "0000",
        "applied_then_5xx",
        True,
    )
    assert call.answer is not None
    assert call.answer["syssn"]  # QFPay issued a reversal number the client never saw


def test_fault_applied_then_5xx_can_start_an_in_progress_reversal(qf):
    txn = qf.add(make_txn(in_progress_enquiries=2, faults=(Fault("applied_then_5xx", status=502),)))
    assert send(qf, "reversal", cancel_params(txn)).status_code == 502
    assert (only_row(qf, txn)["cancel"], qf.calls[-1].pending) == ("0", (txn.syssn,))
    assert only_row(qf, txn)["cancel"] == "0"
    assert only_row(qf, txn)["cancel"] == "1"
    assert (qf.cancellations_applied(txn.syssn), qf.calls[-1].pending) == (1, ())


@pytest.mark.parametrize(("in_progress", "cancel"), [(0, "1"), (2, "0")], ids=["applied", "started"])
def test_fault_applied_then_undocumented_takes_effect_and_answers_a_signed_code_no_table_has(
    qf, in_progress, cancel
):
    txn = qf.add(
        make_txn(
            in_progress_enquiries=in_progress, faults=(Fault("applied_then_undocumented", CANCEL_ENDPOINTS),)
        )
    )
    response = send(qf, "reversal", cancel_params(txn))
    assert response.status_code == 200
    assert "X-QF-SIGN" in response.headers
    body = response.json()
    assert body["respcd"] == UNDOCUMENTED_RESPCD
    assert body["syssn"]  # QFPay's number for the reversal, as its answer would carry
    assert only_row(qf, txn)["cancel"] == cancel
    qf.settle()
    assert qf.cancellations_applied(txn.syssn) == 1
    call = qf.calls[0]
    assert (call.http_status, call.respcd, call.fault, call.delivered) == (
        200,
        UNDOCUMENTED_RESPCD,
        "applied_then_undocumented",
        True,
    )


def test_without_an_anomaly_a_cancel_repeated_while_in_progress_changes_nothing(qf):
    txn = qf.add(make_txn(in_progress_enquiries=1))
    first = send(qf, "reversal", cancel_params(txn)).json()
    again = send(qf, "reversal", cancel_params(txn)).json()
    assert again["syssn"] == first["syssn"]
    assert qf.settle() == 1
    assert qf.cancellations_applied(txn.syssn) == 1


def test_anomaly_repeat_applies_starts_a_second_cancellation_on_a_live_looking_row(qf):
    txn = qf.add(make_txn(in_progress_enquiries=2, anomaly=Anomaly("repeat_applies")))
    first = send(qf, "reversal", cancel_params(txn)).json()
    row = only_row(qf, txn)
    assert (row["respcd"], row["cancel"]) == ("1143", "0")  # what a client reads as "still live"
    assert qf.calls[-1].pending == (txn.syssn,)  # but QFPay is still working on ours
    again = send(qf, "reversal", cancel_params(txn)).json()
    assert (first["respcd"], again["respcd"]) == ("1143", "1143")
    assert again["syssn"] != first["syssn"]  # a second reversal, not the first one repeated
    only_row(qf, txn)
    assert only_row(qf, txn)["cancel"] == "1"
    assert qf.cancellations_applied(txn.syssn) == 2  # the double shows in the ledger
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1264"
    assert qf.cancellations_applied(txn.syssn) == 2


def test_anomaly_processing_while_paid_reverses_a_paid_payment_after_showing_it_paid(qf):
    txn = qf.add(make_txn(state="paid", in_progress_enquiries=2, anomaly=Anomaly("processing_while_paid")))
    answer = send(qf, "reversal", cancel_params(txn)).json()
    assert answer["respcd"] == "1143"
    assert answer["syssn"]
    for _ in range(2):
        row = only_row(qf, txn)
        assert (row["respcd"], row["cancel"]) == ("0000", "0")  # reads paid, not cancelled
    assert qf.cancellations_applied(txn.syssn) == 0
    row = only_row(qf, txn)
    assert (row["respcd"], row["cancel"]) == ("0000", "1")
    assert qf.cancellations_applied(txn.syssn) == 1
    assert qf.transaction(txn.syssn).cancel == 1


def test_a_paid_payment_without_the_anomaly_answers_1260(qf):
    txn = qf.add(make_txn(state="paid", in_progress_enquiries=2))
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1260"
    assert qf.settle() == 0


@pytest.mark.parametrize(
    ("row_field", "row_value"),
    [("respcd", "9999"), ("respcd", "1205"), ("respcd", None), ("cancel", "7"), ("cancel", None)],
)
def test_anomaly_undocumented_row_on_a_paid_payment(qf, row_field, row_value):
    anomaly = Anomaly("undocumented_row", row_field, row_value)
    txn = qf.add(make_txn(state="paid", in_progress_enquiries=2, anomaly=anomaly))
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1143"
    for _ in range(2):
        row = only_row(qf, txn)
        if row_value is None:
            assert row_field not in row
        else:
            assert row[row_field] == row_value
    row = only_row(qf, txn)  # the reversal ended without effect: the customer paid
    assert (row["respcd"], row["cancel"]) == ("0000", "0")
    assert qf.cancellations_applied(txn.syssn) == 0
    assert qf.transaction(txn.syssn).cancel == 0


def test_anomaly_undocumented_row_on_an_unpaid_payment_then_reversed(qf):
    txn = qf.add(make_txn(in_progress_enquiries=1, anomaly=Anomaly("undocumented_row", "cancel", "9")))
    assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1143"
    assert only_row(qf, txn)["cancel"] == "9"
    assert only_row(qf, txn)["cancel"] == "1"
    assert qf.cancellations_applied(txn.syssn) == 1


def test_a_refused_cancel_leaves_the_payment_live(qf):
    txn = qf.add(make_txn(cancel_respcd="1261"))
    for _ in range(2):
        assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1261"
    row = only_row(qf, txn)
    assert (row["respcd"], row["cancel"]) == ("1143", "0")  # the customer can still pay
    assert qf.cancellations_applied(txn.syssn) == 0


def test_settle_ends_every_cancellation_in_progress(qf):
    repeated = qf.add(make_txn(1, in_progress_enquiries=5, anomaly=Anomaly("repeat_applies")))
    paid = qf.add(
        make_txn(2, state="paid", in_progress_enquiries=5, anomaly=Anomaly("processing_while_paid"))
    )
    spoiled = qf.add(make_txn(3, state="paid", in_progress_enquiries=5, anomaly=Anomaly("undocumented_row")))
    untouched = qf.add(make_txn(4))
    for txn in (repeated, repeated, paid, spoiled):
        assert send(qf, "reversal", cancel_params(txn)).json()["respcd"] == "1143"
    assert qf.settle() == 3
    assert [qf.cancellations_applied(t.syssn) for t in (repeated, paid, spoiled, untouched)] == [2, 1, 0, 0]
    assert [qf.transaction(t.syssn).cancel for t in (repeated, paid, spoiled, untouched)] == [1, 1, 0, 0]
    assert qf.settle() == 0


def test_anomaly_validation():
    with pytest.raises(ValueError, match="kind"):
        Anomaly("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row_field"):
        Anomaly("undocumented_row", "txamt")
    with pytest.raises(ValueError, match="500"):
        Fault("applied_then_5xx", status=200)


def test_with_search_windows_an_enquiry_without_syssn_searches_only_its_window_on_sysdtm(qf):
    """QFPay searches start_time..end_time on its own sysdtm; by syssn it ignores them."""
    txn = make_txn(71, sysdtm="2026-11-29 11:00:00")
    qf.add(txn)
    qf.search_windows = True
    near_txdtm, near_sysdtm = (
        ("2026-11-25 11:00:00", "2026-11-27 11:00:00"),
        ("2026-11-28 11:00:00", "2026-11-30 11:00:00"),
    )

    def rows(window: tuple[str, str], **named: str) -> list[str]:
        answer = enquire(qf, PLAIN, start_time=window[0], end_time=window[1], **named)
        return [row["syssn"] for row in answer["data"]]

    assert rows(near_txdtm, out_trade_no=txn.out_trade_no) == []
    assert rows(near_sysdtm, out_trade_no=txn.out_trade_no) == [txn.syssn]
    assert rows(near_txdtm, syssn=txn.syssn) == [txn.syssn]
    qf.search_windows = False  # the default: windows are ignored
    assert rows(near_txdtm, out_trade_no=txn.out_trade_no) == [txn.syssn]


def test_with_search_windows_a_window_crossing_a_month_is_searched_only_in_its_first_month(qf):
    """QFPay searches one calendar month at most: the strictest reading is that a window crossing
    into the next month is searched only within start_time's month. By syssn no window applies."""
    early_december = make_txn(72, sysdtm="2026-12-01 00:30:00")
    late_november = make_txn(73, sysdtm="2026-11-30 23:30:00")
    for txn in (early_december, late_november):
        qf.add(txn)
    qf.search_windows = True

    def rows(start: str, end: str, **named: str) -> list[str]:
        answer = enquire(qf, PLAIN, start_time=start, end_time=end, **named)
        return sorted(row["syssn"] for row in answer["data"])

    crossing = ("2026-11-29 23:30:00", "2026-12-01 23:30:00")
    assert rows(*crossing, out_trade_no=early_december.out_trade_no) == []
    assert rows(*crossing, out_trade_no=late_november.out_trade_no) == [late_november.syssn]
    assert rows("2026-12-01 00:00:00", "2026-12-01 23:30:00", out_trade_no=early_december.out_trade_no) == [
        early_december.syssn
    ]
    assert rows(*crossing, syssn=early_december.syssn) == [early_december.syssn]
    qf.search_windows = False  # the default: windows are ignored
    assert rows(*crossing, out_trade_no=early_december.out_trade_no) == [early_december.syssn]
