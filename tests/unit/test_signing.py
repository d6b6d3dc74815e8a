"""Unit tests of ``cancellation.signing`` against QFPay's published examples and its stated rules.

What QFPay publishes, and what of it can be checked:

* The request-signature guide (https://sdk.qfapi.com/docs/api-reference/signature-generation, same
  text at https://sdk.qfapi.com/integration/preparation/authentication-and-signature) gives the
  inputs (mchid=ZaMVg12345, txamt=100, txcurrcd=HKD, client_key=abcd1234) and the exact string to
  hash, but no resulting hash. Its only published hash, ``B3B251B202801388BE4AC8E5537B81B1``, is
  shown under code that signs a random out_trade_no, the current time, a masked mchid
  ('ZaMVg*****') and 'client_key_here', so it cannot be reproduced. The request tests therefore
  check our signing string against the published string, and the hash against hashlib.
* The 2018 "QFPay API Reference", section 3.2 (sorting example abc/bcd/bad) and section 3.4.3, a
  complete response-signature worked example (body, key and MD5 result):
  https://github.com/QFPay/QFPAY_Global/blob/master/QFPayAPIReference.md
"""

from __future__ import annotations

import hashlib

import pytest
from cancellation.signing import (
    SIGN_TYPES,
    response_signature,
    sign,
    signed_parameters,
    signing_string,
)

# https://sdk.qfapi.com/docs/api-reference/signature-generation (Steps 1-3)
DOC_PARAMS = {"mchid": "ZaMVg12345", "txamt": "100", "txcurrcd": "HKD"}
DOC_CLIENT_KEY = "abcd1234"
DOC_SORTED = "mchid=ZaMVg12345&txamt=100&txcurrcd=HKD"
DOC_STRING_TO_HASH = "mchid=ZaMVg12345&txamt=100&txcurrcd=HKDabcd1234"

# https://github.com/QFPay/QFPAY_Global/blob/master/QFPayAPIReference.md, 3.4.3 "Response Signature
# sample": the body (302 bytes, matching the Content-Length of sample 3.4.1) followed by the key.
RESPONSE_BODY = (
    '{"pay_type": "800108", "sysdtm": "2018-01-12 19:31:16", "cardcd": "2088802362210279", '
    '"txdtm": "2018-01-12 19:31:22", "resperr": "\\u4ea4\\u6613\\u6210\\u529f", '
    '"txcurrcd": "CNY", "txamt": "1", "respmsg": "", "out_trade_no": "130145934788787530052", '
    '"syssn": "20180112000100020001662134", "respcd": "0000"}'
).encode("ascii")
RESPONSE_KEY = "615ED178BA524459976CE40FAB78000F"
RESPONSE_SIGN = "1E2CE7C2A7F8F581C354A857182B7A31"


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324 - QFPay's protocol


def sha256_upper(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest().upper()


# --------------------------------------------------------------------------- published examples


def test_published_example_signing_string():
    assert signing_string(DOC_PARAMS) == DOC_SORTED
    assert signing_string(DOC_PARAMS) + DOC_CLIENT_KEY == DOC_STRING_TO_HASH


def test_published_example_is_order_independent():
    shuffled = {"txcurrcd": "HKD", "mchid": "ZaMVg12345", "txamt": "100"}
    assert signing_string(shuffled) == DOC_SORTED


def test_published_example_sha256_recommended_variant():
    # The guide's Step 3: SHA256("mchid=ZaMVg12345&txamt=100&txcurrcd=HKDabcd1234").
    expected = sha256_upper(DOC_STRING_TO_HASH)
    assert expected == "99D9F7174823928B74C74B1C7A7E1538DF733774DD21C9606A202CB8BB3D74E8"
    assert sign(DOC_PARAMS, DOC_CLIENT_KEY, "SHA256") == expected


def test_published_example_md5_variant():
    expected = md5_upper(DOC_STRING_TO_HASH)
    assert expected == "3CB3AA9C21D818AB4CAFAA8FA3FEACF4"
    assert sign(DOC_PARAMS, DOC_CLIENT_KEY, "MD5") == expected
    assert sign(DOC_PARAMS, DOC_CLIENT_KEY) == expected  # MD5 is the default


def test_2018_reference_sorting_example():
    # 3.2 Step 1-3: abc=value1 bcd=value2 bad=value3 -> abc=value1&bad=value3&bcd=value2 + Key
    params = {"abc": "value1", "bcd": "value2", "bad": "value3"}
    assert signing_string(params) == "abc=value1&bad=value3&bcd=value2"
    assert sign(params, "Key") == md5_upper("abc=value1&bad=value3&bcd=value2Key")


def test_2018_reference_response_signature_example():
    assert len(RESPONSE_BODY) == 302
    assert response_signature(RESPONSE_BODY, RESPONSE_KEY) == RESPONSE_SIGN


# --------------------------------------------------------------------------- the stated rules


def test_byte_order_puts_uppercase_before_underscore_before_lowercase():
    params = {"b": "1", "a": "2", "B": "3", "_x": "4", "A1": "5", "Ab": "6", "aB": "7"}
    assert signing_string(params) == "A1=5&Ab=6&B=3&_x=4&a=2&aB=7&b=1"


def test_byte_order_for_non_ascii_names_follows_utf8_bytes():
    params = {"é": "1", "z": "2", "Z": "3"}
    assert signing_string(params) == "Z=3&z=2&é=1"


def test_prefix_sorts_first():
    assert signing_string({"txamt2": "1", "txamt": "2"}) == "txamt=2&txamt2=1"


def test_empty_and_missing_values_are_left_out():
    params = {"syssn": "S1", "udid": "", "mchid": None, "txamt": "0", "note": " "}
    assert signed_parameters(params) == {"syssn": "S1", "txamt": "0", "note": " "}
    assert signing_string(params) == "note= &syssn=S1&txamt=0"
    assert sign(params, "K") == md5_upper("note= &syssn=S1&txamt=0K")


def test_nothing_to_sign_hashes_the_key_alone():
    assert signing_string({}) == ""
    assert sign({"udid": ""}, "K") == md5_upper("K")


def test_no_separator_before_the_key():
    signature = sign({"a": "1"}, "KEY")
    assert signature == md5_upper("a=1KEY")
    assert signature != md5_upper("a=1&KEY")
    assert signature != md5_upper("a=1&key=KEY")


def test_values_are_signed_raw_not_url_encoded():
    params = {"out_trade_no": "A&B=C d+e%20f/中文", "txamt": "100"}
    raw = "out_trade_no=A&B=C d+e%20f/中文&txamt=100"
    assert signing_string(params) == raw
    assert sign(params, "K") == md5_upper(raw + "K")
    assert sign(params, "K", "SHA256") == sha256_upper(raw + "K")


def test_names_and_values_are_case_sensitive():
    assert sign({"a": "x"}, "K") != sign({"a": "X"}, "K")
    assert sign({"a": "x"}, "K") != sign({"A": "x"}, "K")
    assert sign({"a": "x"}, "K") != sign({"a": "x"}, "k")


@pytest.mark.parametrize(("sign_type", "length"), [("MD5", 32), ("SHA256", 64)])
def test_output_is_upper_case_hex(sign_type, length):
    signature = sign({"syssn": "20261126000100020000000001"}, "key", sign_type)
    assert len(signature) == length
    assert signature == signature.upper()
    int(signature, 16)


def test_sha256_differs_from_md5():
    params = {"syssn": "S1", "txamt": "100"}
    assert sign(params, "K", "SHA256") == sha256_upper("syssn=S1&txamt=100K")
    assert sign(params, "K", "SHA256") != sign(params, "K", "MD5")


def test_sign_types_offered():
    assert SIGN_TYPES == ("MD5", "SHA256")


def test_response_signature_is_md5_of_body_then_key():
    body = '{"respcd": "0000", "resperr": "\u6210\u529f"}'.encode()
    digest = hashlib.md5(body + b"KEY")  # noqa: S324 - QFPay's protocol
    assert response_signature(body, "KEY") == digest.hexdigest().upper()
    assert response_signature(body, "KEY") != response_signature(body + b" ", "KEY")
