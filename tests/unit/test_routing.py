"""Which PayType is cancelled through /trade/v1/close and which through /trade/v1/reversal."""

from __future__ import annotations

import pytest
from cancellation.routing import DEFAULT_CLOSE_PAY_TYPES, Routing

# The current English guide: close for multi-wallet CPM, WeChat CPM and WeChat Pay HK CPM.
ENGLISH_GUIDE_CLOSE = ["800008", "800208", "801008"]
REVERSAL_EXAMPLES = [
    "800101",
    "801501",
    "800201",
    "800108",
    "801101",
    "801510",
    "801514",
    "800207",
    "800212",
    "801010",
    "805801",
    "800701",
    "800708",
    "802001",
    "803701",
    "802801",
    "806527",
]


def test_default_close_pay_types_follow_the_english_guide():
    assert frozenset(ENGLISH_GUIDE_CLOSE) == DEFAULT_CLOSE_PAY_TYPES
    assert Routing().close_method == "GET"


@pytest.mark.parametrize("pay_type", ENGLISH_GUIDE_CLOSE)
def test_default_routes_close_pay_types_to_close(pay_type):
    assert Routing().endpoint_for(pay_type) == "close"


@pytest.mark.parametrize("pay_type", REVERSAL_EXAMPLES)
def test_default_routes_every_other_pay_type_to_reversal(pay_type):
    assert Routing().endpoint_for(pay_type) == "reversal"


@pytest.mark.parametrize("pay_type", [None, "", "999999", "80000", "8000080"])
def test_missing_or_unknown_pay_type_goes_to_reversal(pay_type):
    assert Routing().endpoint_for(pay_type) == "reversal"


def test_parse_default_text_equals_the_default():
    assert Routing.parse("800008,800208,801008", "GET") == Routing()


def test_parse_traditional_chinese_guide():
    routing = Routing.parse("800201,800212,800701,801514", "POST")
    assert routing.close_pay_types == frozenset({"800201", "800212", "800701", "801514"})
    assert routing.close_method == "POST"
    assert routing.endpoint_for("800201") == "close"
    assert routing.endpoint_for("800208") == "reversal"  # close by default, reversal in this edition
    assert routing.endpoint_for(None) == "reversal"


def test_parse_tolerates_spaces_empty_items_and_repeats():
    routing = Routing.parse(" 800008 , ,800208,800008,\t801008 ,", " get ")
    assert routing == Routing()


def test_parse_empty_text_routes_everything_to_reversal():
    routing = Routing.parse("", "GET")
    assert routing.close_pay_types == frozenset()
    assert {routing.endpoint_for(p) for p in ENGLISH_GUIDE_CLOSE} == {"reversal"}


@pytest.mark.parametrize(("text", "method"), [("800008", "GET"), ("800008", "get"), ("800008", "Post")])
def test_close_method_is_case_insensitive(text, method):
    assert Routing.parse(text, method).close_method == method.upper()


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("800008;800208", "['800008;800208']"),
        ("800008,80020", "['80020']"),
        ("800008,WECHAT", "['WECHAT']"),
        ("800008 800208", "['800008 800208']"),
        ("8000080", "['8000080']"),
        ("\uff18\uff10\uff10\uff1008", "['\uff18\uff10\uff10\uff1008']"),  # fullwidth digits
    ],
)
def test_bad_pay_types_are_rejected_naming_them(text, bad):
    with pytest.raises(ValueError, match="CLOSE_PAY_TYPES") as caught:
        Routing.parse(text, "GET")
    assert str(caught.value) == f"CLOSE_PAY_TYPES holds values that are not six-digit PayTypes: {bad}"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "", "G E T", "GET,POST"])
def test_bad_close_method_is_rejected(method):
    with pytest.raises(ValueError, match="CLOSE_HTTP_METHOD must be GET or POST") as caught:
        Routing.parse("800008", method)
    assert repr(method) in str(caught.value)
