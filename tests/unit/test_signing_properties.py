"""Properties of ``cancellation.signing``, and of the client that sends what it signs.

The oracle for "the documented signature" is the QFPay stand-in's ``expected_signature``, written
independently of ``cancellation.signing``. At the HTTP boundary the client is checked two ways: a
connection pool stand-in (tests/canned_http.py) captures the request actually sent (body or query
string, headers), and the QFPay stand-in records the parameters it received over real HTTP and
verifies the signature itself.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
import urllib3
from cancellation.enquiry import enquiry_queries
from cancellation.orders import InvalidOrder, validate_order
from cancellation.qfpay import CLOSE_PATH, ENQUIRY_PATH, REVERSAL_PATH, Credentials, QFPayClient, new_pool
from cancellation.qfpay_steps import cancel_params
from cancellation.signing import SIGN_TYPES, SignType, sign, signed_parameters, signing_string
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.canned_http import CannedPool
from tests.local.qfpay_limits import MerchantRateLimits
from tests.local.qfpay_standin import Merchant, QFPayStandIn, expected_signature

# Any text UTF-8 can carry (no lone surrogates): separators, spaces, controls, non-ASCII included.
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=16)
names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=10)
sent_values = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=16)
values = st.none() | st.just("") | sent_values
params_strategy = st.dictionaries(names, values, max_size=8)
keys = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
sign_types = st.sampled_from(SIGN_TYPES)

HEX = {"MD5": re.compile(r"[0-9A-F]{32}"), "SHA256": re.compile(r"[0-9A-F]{64}")}


def non_empty(params: Mapping[str, str | None]) -> dict[str, str]:
    return {name: value for name, value in params.items() if value is not None and value != ""}


# --------------------------------------------------------------------------- the signature itself


@given(params=params_strategy, key=keys, sign_type=sign_types)
def test_signature_is_the_documented_one(params, key, sign_type):
    """Sorted by UTF-8 bytes, name=value joined by &, key appended, hashed, upper-case hex."""
    assert sign(params, key, sign_type) == expected_signature(non_empty(params), key, sign_type)


@given(data=st.data(), params=params_strategy, key=keys, sign_type=sign_types)
def test_parameter_order_does_not_matter(data, params, key, sign_type):
    shuffled = dict(data.draw(st.permutations(list(params.items()))))
    assert signing_string(shuffled) == signing_string(params)
    assert sign(shuffled, key, sign_type) == sign(params, key, sign_type)


@given(params=params_strategy, key=keys, sign_type=sign_types, extra_names=st.lists(names, max_size=4))
def test_empty_and_none_values_are_left_out(params, key, sign_type, extra_names):
    assert signed_parameters(params) == non_empty(params)
    # Adding parameters with no value, or blanking any, signs the same as leaving them out.
    padded: dict[str, str | None] = dict(non_empty(params))
    for i, name in enumerate(extra_names):
        if name not in padded:
            padded[name] = None if i % 2 else ""
    assert signing_string(padded) == signing_string(params)
    assert sign(padded, key, sign_type) == sign(params, key, sign_type)


@given(params=params_strategy, key=keys, sign_type=sign_types, data=st.data())
def test_changing_any_sent_value_changes_the_signature(params, key, sign_type, data):
    sent = signed_parameters(params)
    if not sent:
        return
    name = data.draw(st.sampled_from(sorted(sent)))
    other = data.draw(sent_values.filter(lambda value: value != sent[name]))
    assert sign({**params, name: other}, key, sign_type) != sign(params, key, sign_type)


@given(params=params_strategy, key=keys, sign_type=sign_types, name=names, value=sent_values)
def test_adding_a_sent_parameter_changes_the_signature(params, key, sign_type, name, value):
    sent = signed_parameters(params)
    if name in sent:
        return
    assert sign({**params, name: value}, key, sign_type) != sign(params, key, sign_type)


@given(params=params_strategy, key=keys, sign_type=sign_types, data=st.data())
def test_removing_a_sent_parameter_changes_the_signature(params, key, sign_type, data):
    sent = signed_parameters(params)
    if not sent:
        return
    name = data.draw(st.sampled_from(sorted(sent)))
    fewer = {n: v for n, v in params.items() if n != name}
    assert sign(fewer, key, sign_type) != sign(params, key, sign_type)
    blanked = {**params, name: data.draw(st.sampled_from([None, ""]))}
    assert sign(blanked, key, sign_type) == sign(fewer, key, sign_type)


@given(params=params_strategy, key=keys, other_key=keys, sign_type=sign_types)
def test_the_key_is_part_of_the_signature(params, key, other_key, sign_type):
    if other_key == key:
        return
    assert sign(params, key, sign_type) != sign(params, other_key, sign_type)


@given(params=params_strategy, key=keys)
def test_signatures_are_upper_case_hex_and_md5_differs_from_sha256(params, key):
    md5, sha256 = sign(params, key, "MD5"), sign(params, key, "SHA256")
    assert HEX["MD5"].fullmatch(md5), md5
    assert HEX["SHA256"].fullmatch(sha256), sha256
    assert md5 != sha256
    assert not sha256.startswith(md5)  # not the same digest, truncated or padded
    assert sign(params, key) == md5  # MD5 is the default


def test_separators_in_values_are_ambiguous_which_is_why_orders_are_validated():
    """QFPay signs raw values: a value holding & or = can sign as two parameters. The signer does
    not (cannot) tell; ``cancellation.orders`` refuses such values before they get here."""
    smuggled = {"out_trade_no": "A-1&txamt=1", "txamt": "100"}
    split = {"out_trade_no": "A-1", "txamt": "1&txamt=100"}
    assert signing_string(smuggled) == signing_string(split) == "out_trade_no=A-1&txamt=1&txamt=100"
    assert sign(smuggled, "K") == sign(split, "K")


# Without & and = in names or values, the signing string reads back as exactly the signed set.
plain_chars = st.characters(exclude_categories=["Cs"], exclude_characters="&=")
plain_params = st.dictionaries(
    st.text(plain_chars, min_size=1, max_size=10), st.text(plain_chars, max_size=16) | st.none(), max_size=8
)


@given(params=plain_params)
def test_without_separators_the_signing_string_is_unambiguous(params):
    string = signing_string(params)
    read_back = dict(pair.split("=", 1) for pair in string.split("&")) if string else {}
    assert read_back == signed_parameters(params)


# Orders as producers might send them: mostly valid, with separators, spaces, controls and non-ASCII
# mixed into any text field now and then. Whatever validation lets through must sign unambiguously.
risky_text = st.text(
    st.sampled_from(list("Ab9_-.:|/") + list("&=%+ \t\n\x00\u00a0\u3000é订")), min_size=1, max_size=12
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, risky_text)


alnum = st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)
risky_orders = st.fixed_dictionaries(
    {
        "txamt": mostly(st.integers(1, 10**12) | st.integers(1, 10**12).map(str)),
        "txdtm": mostly(st.just("2026-11-26 10:00:00")),
        "out_trade_no": mostly(st.from_regex(r"[A-Za-z0-9_\-.:|/]{1,12}", fullmatch=True)),
    },
    optional={
        "syssn": mostly(alnum),
        "mchid": mostly(alnum),
        "udid": mostly(alnum),
        "pay_type": mostly(st.just("800101")),
    },
)


@settings(max_examples=300)
@given(data=risky_orders, reversal_syssn=st.none() | st.from_regex(r"[0-9]{20,26}", fullmatch=True))
def test_every_accepted_order_signs_unambiguously(data, reversal_syssn):
    try:
        order = validate_order(data)
    except InvalidOrder:
        event("rejected")
        return
    event("accepted")
    for params in (cancel_params(order), *enquiry_queries(order, reversal_syssn)):
        sent = signed_parameters(params)
        for name, value in sent.items():
            assert "&" not in value, (name, value)
            assert "=" not in value, (name, value)
        string = signing_string(params)
        assert dict(pair.split("=", 1) for pair in string.split("&")) == sent


# --------------------------------------------------------------------------- what the client sends


def client_for(http: Any, credentials: Credentials, base_url: str) -> QFPayClient:
    return QFPayClient(base_url, lambda force: credentials, http=http)


ENDPOINTS = [("POST", REVERSAL_PATH), ("POST", ENQUIRY_PATH), ("GET", CLOSE_PATH), ("POST", CLOSE_PATH)]
credentials_strategy = st.builds(
    Credentials,
    app_code=st.text(st.sampled_from("ABCXYZ0123456789-_"), min_size=1, max_size=20),
    client_key=keys.map(lambda key: f"KEY<{key}>"),  # recognisable, to look for it in what is sent
    sign_type=sign_types,
)


@settings(max_examples=150)
@given(params=params_strategy, credentials=credentials_strategy, endpoint=st.sampled_from(ENDPOINTS))
def test_the_client_signs_exactly_the_parameters_it_sends(params, credentials, endpoint):
    method, path = endpoint
    pool = CannedPool()
    client_for(pool, credentials, "https://qfpay.invalid").call(method, path, params)
    (request,) = pool.sent
    received = request.parameters()
    assert received == signed_parameters(params)
    assert request.method == method
    assert request.headers["X-QF-SIGN"] == sign(received, credentials.client_key, credentials.sign_type)
    assert request.headers["X-QF-SIGN"] == expected_signature(
        received, credentials.client_key, credentials.sign_type
    )
    assert request.headers["X-QF-SIGNTYPE"] == credentials.sign_type
    assert request.headers["X-QF-APPCODE"] == credentials.app_code
    # The key travels only as part of the hash.
    sent_text = f"{request.url} {request.body!r} {dict(request.headers)}"
    assert credentials.client_key not in sent_text
    assert urllib.parse.quote_plus(credentials.client_key) not in sent_text


MERCHANT = Merchant(app_code="PROPERTY-APPCODE", client_key="PROPERTY-CLIENT-KEY-0001")


@pytest.fixture(scope="module")
def standin() -> Iterator[QFPayStandIn]:
    # Hundreds of generated requests a second: QFPay's rate limits are not what is checked here.
    unlimited = MerchantRateLimits(per_second=10**9, per_minute=10**9)
    with QFPayStandIn([MERCHANT], rate_limits=unlimited) as running:
        yield running


@pytest.fixture(scope="module")
def session() -> Iterator[urllib3.PoolManager]:
    with new_pool() as reused:
        yield reused


@settings(max_examples=120, deadline=None)
@given(params=params_strategy, sign_type=sign_types, endpoint=st.sampled_from(ENDPOINTS))
def test_qfpay_receives_exactly_what_was_signed(standin, session, params, sign_type, endpoint):
    """Over real HTTP: the stand-in decodes the request and checks the signature on its own."""
    method, path = endpoint
    credentials = Credentials(MERCHANT.app_code, MERCHANT.client_key, sign_type)
    client = client_for(session, credentials, standin.base_url)
    before = len(standin.calls)
    answer = client.call(method, path, params)  # raises CredentialsRejected on a 1108
    (call,) = standin.calls[before:]
    assert call.params == signed_parameters(params)
    assert (call.endpoint, call.method) == (path, method)
    assert answer.get("respcd") != "1108", answer


@pytest.mark.parametrize("sign_type", SIGN_TYPES)
def test_a_changed_parameter_after_signing_is_refused(standin, sign_type: SignType):
    """The stand-in is a real check: a body altered after signing gets QFPay's 1108."""
    params = {"syssn": "20261126000101000001", "txamt": "100"}
    headers = {
        "X-QF-APPCODE": MERCHANT.app_code,
        "X-QF-SIGN": sign(params, MERCHANT.client_key, sign_type),
        "X-QF-SIGNTYPE": sign_type,
    }
    tampered = {**params, "txamt": "1"}
    answer = requests.post(standin.base_url + ENQUIRY_PATH, data=tampered, headers=headers, timeout=5)
    assert answer.json()["respcd"] == "1108"
    honest = requests.post(standin.base_url + ENQUIRY_PATH, data=params, headers=headers, timeout=5)
    assert honest.json()["respcd"] == "0000"
