"""tests/local/moto_speedups.py: moto answers and stores the same with and without its patches.

Every scenario runs twice against moto in-process (``mock_aws``, moto's random numbers seeded the
same), once with moto's own functions and once patched, and the answers (and what moto stored)
must be equal. Where a cache is involved the scenario repeats the cached input with different
data, so the second, cached, call is compared too.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import boto3
import moto.core.responses
import pytest
from botocore.exceptions import ClientError
from cancellation.aws import DecisionLedger, OrderBusy
from moto import mock_aws
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.events.utils import EventTemplateParser
from moto.moto_api._internal import mock_random

from tests.local import moto_speedups

SEED = 20261126
EVENT_TIME = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _as_found(aws_env: None) -> Iterator[None]:
    """Leave the patches as this test found them (create_stack installs them for the session)."""
    was_installed = moto_speedups.is_installed()
    yield
    if was_installed:
        moto_speedups.install()
    else:
        moto_speedups.uninstall()


@contextmanager
def speedups(on: bool) -> Iterator[None]:
    if on:
        moto_speedups.install()
    else:
        moto_speedups.uninstall()
    yield


def without_and_with(scenario: Callable[[], Any]) -> tuple[Any, Any]:
    """What ``scenario`` returns in a fresh moto: with moto's own functions, then patched."""
    answers = []
    for on in (False, True):
        with speedups(on), mock_aws():
            mock_random.seed(SEED)
            answers.append(scenario())
    return answers[0], answers[1]


def outcome(call: Callable[[], Any]) -> Any:
    """A call's answer, the error moto answered with (code and message), or what moto raised."""
    try:
        answer = call()
    except ClientError as error:
        return ("error", error.response["Error"].get("Code"), error.response["Error"].get("Message"))
    except Exception as error:
        return ("raised", type(error).__name__, str(error))
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    return answer


# -- install / uninstall ---------------------------------------------------------------------------
def test_install_replaces_every_target_and_uninstall_puts_moto_back() -> None:
    moto_speedups.uninstall()
    originals = {target: vars(target[0])[target[1]] for target in moto_speedups.PATCH_TARGETS}
    assert not moto_speedups.is_installed()

    moto_speedups.install()
    moto_speedups.install()  # idempotent: the originals kept are moto's, not our replacements
    assert moto_speedups.is_installed()
    for (owner, name), original in originals.items():
        assert vars(owner)[name] is not original, f"{owner.__name__}.{name} not patched"

    moto_speedups.uninstall()
    assert not moto_speedups.is_installed()
    for (owner, name), original in originals.items():
        assert vars(owner)[name] is original, f"{owner.__name__}.{name} not restored"
    moto_speedups.uninstall()  # idempotent
    assert all(vars(owner)[name] is original for (owner, name), original in originals.items())


def test_the_patched_functions_keep_their_kind() -> None:
    """A staticmethod stays one (callable on instances too), a classmethod too."""
    moto_speedups.install()
    assert isinstance(vars(EventTemplateParser)["parse"], staticmethod)
    assert isinstance(vars(UpdateExpressionParser)["make"], classmethod)
    assert EventTemplateParser().parse("", {}, _event(0, {"status": "x"}))["detail"] == {"status": "x"}


# -- EventBridge -----------------------------------------------------------------------------------
EVENTS: list[dict[str, Any]] = [
    {"status": "CANCELLED", "order": {"out_trade_no": "A-1", "txamt": 1250}, "amounts": [1, 2.5]},
    {"status": "UNKNOWN", "order": {"out_trade_no": "A-2"}, "amounts": [], "flags": [True, None]},
    {"status": "REVERSED", "order": {}, "amounts": [{"hkd": 3}, "text"]},
]
TRANSFORMER = {
    "InputPathsMap": {
        "status": "$.detail.status",
        "order": "$.detail.order.out_trade_no",
        "amount": "$.detail.order.txamt",
        "amounts": "$.detail.amounts",
        "missing": "$.detail.nothing.here",
        "source": "$.source",
        "resources": "$.resources",
    },
    "InputTemplate": (
        '{"status": "<status>", "order": "<order>", "amount": "<amount>", "amounts": <amounts>,'
        ' "missing": "<missing>", "source": "<source>", "resources": <resources>,'
        ' "event": <aws.events.event.json>}'
    ),
}


def _drop_ingestion_time(value: Any) -> Any:
    """Events carry the wall-clock time moto received them: not part of the comparison."""
    if isinstance(value, dict):
        return {k: _drop_ingestion_time(v) for k, v in value.items() if k != "ingestion-time"}
    if isinstance(value, list):
        return [_drop_ingestion_time(v) for v in value]
    return value


def _events_delivered() -> dict[str, Any]:
    events, sqs = boto3.client("events"), boto3.client("sqs")
    events.create_event_bus(Name="outcomes")
    queues = {}
    for name in ("plain", "transformed", "text", "fifo.fifo"):
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if "fifo" in name else {}
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[name] = (url, arn)
    events.put_rule(
        Name="observer", EventBusName="outcomes", EventPattern=json.dumps({"source": ["qfpay.cancellation"]})
    )
    events.put_targets(
        Rule="observer",
        EventBusName="outcomes",
        Targets=[
            {"Id": "plain", "Arn": queues["plain"][1]},
            {"Id": "transformed", "Arn": queues["transformed"][1], "InputTransformer": TRANSFORMER},
            {
                "Id": "text",
                "Arn": queues["text"][1],
                "InputTransformer": {
                    "InputPathsMap": {"s": "$.detail.status"},
                    "InputTemplate": '"order <s> decided"',
                },
            },
            {"Id": "fifo", "Arn": queues["fifo.fifo"][1], "SqsParameters": {"MessageGroupId": "outcomes"}},
        ],
    )

    def publish(detail: dict[str, Any]) -> Any:
        return outcome(
            lambda: events.put_events(
                Entries=[
                    {
                        "EventBusName": "outcomes",
                        "Source": "qfpay.cancellation",
                        "DetailType": "Cancellation decided",
                        "Detail": json.dumps(detail),
                        "Resources": ["arn:aws:states:ap-east-1:123456789012:execution:m:x"],
                        "Time": EVENT_TIME,
                    }
                ]
            )
        )

    answers = [publish(detail) for detail in [*EVENTS, *EVENTS]]  # twice: the second reads cached paths
    delivered = {}
    for name, (url, _) in queues.items():
        bodies = []
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                body = message["Body"]
                # The body has the time moto received the event: compare its checksum, not its value.
                intact = hashlib.md5(body.encode()).hexdigest() == message["MD5OfBody"]  # noqa: S324
                bodies.append((message["MessageId"], intact, _drop_ingestion_time(json.loads(body))))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        delivered[name] = bodies
    return {"answers": answers, "delivered": delivered}


def test_eventbridge_delivers_the_same_events_with_and_without_an_input_transformer() -> None:
    without, with_ = without_and_with(_events_delivered)
    assert with_ == without
    # The scenario did deliver: plain and transformed events, six of each (FIFO deduplicates).
    assert [len(without["delivered"][name]) for name in ("plain", "transformed", "text")] == [6, 6, 6]
    assert without["delivered"]["transformed"][0][2]["status"] == "CANCELLED"
    assert without["delivered"]["text"][1][2] == "order UNKNOWN decided"


def _event(n: int, detail: dict[str, Any]) -> Any:
    """An event as moto's EventBridge hands it to a rule's targets."""
    return {
        "version": "0",
        "id": f"id-{n}",
        "detail-type": "Cancellation decided",
        "source": "qfpay.cancellation",
        "account": "123456789012",
        "time": 1794650400.0,
        "region": "ap-east-1",
        "resources": [],
        "detail": detail,
        "ingestion-time": 1794650401.5 + n,
    }


@pytest.mark.parametrize(
    ("template", "paths"),
    [
        (None, {}),
        ("", None),
        (TRANSFORMER["InputTemplate"], TRANSFORMER["InputPathsMap"]),
        (
            '{"n": <n>, "flags": <flags>, "t": <aws.events.event.ingestion-time>}',
            {"n": "$.detail.n", "flags": "$.detail.flags"},
        ),
        ('"<a>-<b>"', {"a": "$.detail.status", "b": "$.detail.nope"}),
        ('{"first": "<x>"}', {"x": "$.detail.amounts[0]"}),
        ('{"all": <x>}', {"x": "$.detail.amounts[*]"}),
    ],
)
def test_event_templates_match_moto_for_each_event(
    template: str | None, paths: dict[str, str] | None
) -> None:
    moto_parse = moto_speedups._moto_parse_event_template
    assert moto_parse.__module__ == "moto.events.utils"

    def parsed(parse: Callable[..., Any], event: Any) -> Any:
        return outcome(lambda: parse(template, paths, event))

    for round_ in range(2):  # the second round reads cached paths
        for n, detail in enumerate(EVENTS):
            event = _event(n, {**detail, "n": n + round_, "flags": [n, "y"]})
            assert parsed(moto_speedups._parse_event_template, event) == parsed(moto_parse, event)


def test_an_invalid_input_path_fails_as_in_moto_every_time() -> None:
    event = _event(0, {})
    errors = []
    for parse in (moto_speedups._moto_parse_event_template, moto_speedups._parse_event_template):
        for _ in range(2):
            with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever jsonpath raises
                parse('"<x>"', {"x": "$.detail.[[["}, event)
            errors.append((type(raised.value), str(raised.value)))
    assert len(set(errors)) == 1, errors


# -- Response dispatch: method names -----------------------------------------------------------------
def _response_classes() -> list[type[Any]]:
    from moto.dynamodb.responses import DynamoHandler  # noqa: PLC0415
    from moto.events.responses import EventsHandler  # noqa: PLC0415
    from moto.sqs.responses import SQSResponse  # noqa: PLC0415
    from moto.stepfunctions.responses import StepFunctionResponse  # noqa: PLC0415

    return [DynamoHandler, EventsHandler, SQSResponse, StepFunctionResponse, moto.core.responses.BaseResponse]


def test_method_names_are_moto_s_and_follow_a_class_that_changes() -> None:
    moto_names = vars(moto.core.responses)["method_names_from_class"]
    if moto_speedups.is_installed():
        moto_speedups.uninstall()
        moto_names = vars(moto.core.responses)["method_names_from_class"]
    moto_speedups.install()
    names = vars(moto.core.responses)["method_names_from_class"]
    assert names is not moto_names
    for cls in _response_classes():
        assert names(cls) == moto_names(cls)
        assert names(cls) == moto_names(cls)  # cached
        assert "dispatch" not in names(cls)  # a classmethod is not a function member

    from moto.sqs.responses import SQSResponse  # noqa: PLC0415

    class Grown(SQSResponse):
        pass

    before = names(Grown)
    Grown.brand_new_action = lambda self: "new"  # type: ignore[attr-defined]
    assert "brand_new_action" in names(Grown)
    assert names(Grown) == moto_names(Grown)
    del Grown.brand_new_action  # type: ignore[attr-defined]
    assert names(Grown) == before == moto_names(Grown)


# -- DynamoDB: condition expressions ---------------------------------------------------------------
POWERTOOLS_CONDITION = (
    "attribute_not_exists(#id) OR #expiry < :now OR (#status = :inprogress AND "
    "attribute_exists(#in_progress_expiry) AND #in_progress_expiry < :now_in_millis)"
)
POWERTOOLS_NAMES = {
    "#id": "id",
    "#expiry": "expiration",
    "#in_progress_expiry": "in_progress_expiration",
    "#status": "status",
}
CONDITIONS: list[tuple[str, dict[str, str] | None, list[dict[str, Any]] | None]] = [
    (
        POWERTOOLS_CONDITION,
        POWERTOOLS_NAMES,
        [
            {":now": {"N": "100"}, ":now_in_millis": {"N": "100000"}, ":inprogress": {"S": "INPROGRESS"}},
            {":now": {"N": "300"}, ":now_in_millis": {"N": "100"}, ":inprogress": {"S": "COMPLETED"}},
            {":now": {"S": "300"}, ":now_in_millis": {"N": "1e9"}, ":inprogress": {"S": "INPROGRESS"}},
        ],
    ),
    ("attribute_not_exists(id)", None, None),
    ("attribute_not_exists(id)", {}, [{}]),
    (
        "#a.b[1] = :v AND size(#a) > :n",
        {"#a": "nested"},
        [
            {":v": {"N": "2"}, ":n": {"N": "1"}},
            {":v": {"S": "x"}, ":n": {"N": "5"}},
        ],
    ),
    (
        "NOT (#s IN (:a, :b, :c)) OR #n BETWEEN :lo AND :hi",
        {"#s": "status", "#n": "expiration"},
        [
            {
                ":a": {"S": "INPROGRESS"},
                ":b": {"S": "X"},
                ":c": {"S": "Y"},
                ":lo": {"N": "1"},
                ":hi": {"N": "200"},
            },
            {
                ":a": {"S": "COMPLETED"},
                ":b": {"S": "INPROGRESS"},
                ":c": {"S": "Y"},
                ":lo": {"N": "1"},
                ":hi": {"N": "2"},
            },
        ],
    ),
    (
        "begins_with(#s, :p) AND contains(tags, :t) AND attribute_type(#s, :ty) AND #s <> :p",
        {"#s": "status"},
        [
            {":p": {"S": "IN"}, ":t": {"S": "a"}, ":ty": {"S": "S"}},
            {":p": {"S": "CO"}, ":t": {"S": "z"}, ":ty": {"S": "N"}},
        ],
    ),
    ("(#s = :a)", {"#s": "status"}, [{":a": {"S": "INPROGRESS"}}, {":a": {"S": "nope"}}]),
    ("((#s = :a))", {"#s": "status"}, [{":a": {"S": "INPROGRESS"}}]),  # redundant parentheses
    ("#s = :missing", {"#s": "status"}, [{":other": {"S": "x"}}]),  # a value that is not given
    ("#nope = :a", {"#s": "status"}, [{":a": {"S": "x"}}]),  # a name that is not given
    ("#s = :a", None, [{":a": {"S": "x"}}]),  # no names at all
    (":a = #s", {"#s": "status"}, None),  # no values at all
    ("size = :a", None, [{":a": {"N": "1"}}]),  # a reserved word as a name
    ("status = :a AND", None, [{":a": {"S": "x"}}]),  # incomplete
    ("#s == :a", {"#s": "status"}, [{":a": {"S": "x"}}]),
    ("attribute_exists(:a)", None, [{":a": {"S": "x"}}]),
    ("#s = :a", {"#s": "status"}, [{":a": {"SS": ["x"]}}, {":a": {}}, {":a": {"S": "INPROGRESS"}}]),
]
ITEMS = [
    None,
    Item(DynamoType({"S": "k1"}), None, {"id": {"S": "k1"}}),
    Item(
        DynamoType({"S": "k2"}),
        None,
        {
            "id": {"S": "k2"},
            "status": {"S": "INPROGRESS"},
            "expiration": {"N": "150"},
            "in_progress_expiration": {"N": "99999"},
            "nested": {"M": {"b": {"L": [{"N": "1"}, {"N": "2"}]}}},
            "tags": {"SS": ["a", "b"]},
        },
    ),
    Item(
        DynamoType({"S": "k3"}),
        None,
        {"id": {"S": "k3"}, "status": {"S": "COMPLETED"}, "expiration": {"N": "500"}, "nested": {"L": []}},
    ),
]


def _dump(value: Any) -> Any:
    """A condition (moto's Op/Func/Operand objects) as plain data, to compare two of them."""
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if hasattr(value, "__dict__") and type(value).__module__.startswith("moto."):
        return (type(value).__name__, _dump(vars(value)))
    return value


def _parse_outcome(
    parse: Callable[[ConditionExpressionParser], Any], expression: str, names: Any, values: Any
) -> Any:
    parser = ConditionExpressionParser(expression, names, values)
    try:
        condition = parse(parser)
    except Exception as error:
        return (
            "raised",
            type(error).__name__,
            str(error),
            parser.expr_attr_names_found,
            parser.expr_attr_values_found,
        )
    evaluations = []
    for item in ITEMS:
        try:
            evaluations.append(condition.expr(item))
        except Exception as error:
            evaluations.append(("raised", type(error).__name__, str(error)))
    return (_dump(condition), evaluations, parser.expr_attr_names_found, parser.expr_attr_values_found)


@pytest.mark.parametrize(("expression", "names", "value_sets"), CONDITIONS)
def test_conditions_parse_and_evaluate_as_in_moto_when_cached(
    expression: str, names: dict[str, str] | None, value_sets: list[dict[str, Any]] | None
) -> None:
    moto_speedups.install()
    moto_speedups._conditions.clear()
    moto_parse = moto_speedups._moto_parse_condition
    rounds: list[dict[str, Any] | None] = [None] if value_sets is None else list(value_sets)
    rounds *= 2  # the repeat reads the cache
    for values in rounds:
        expected = _parse_outcome(moto_parse, expression, names, values)
        assert _parse_outcome(ConditionExpressionParser.parse, expression, names, values) == expected


def test_a_cached_condition_uses_each_call_s_own_values() -> None:
    moto_speedups.install()
    moto_speedups._conditions.clear()
    item = ITEMS[2]
    names = {"#s": "status"}
    assert ConditionExpressionParser("#s = :a", names, {":a": {"S": "INPROGRESS"}}).parse().expr(item)
    assert len(moto_speedups._conditions) == 1
    assert not ConditionExpressionParser("#s = :a", names, {":a": {"S": "COMPLETED"}}).parse().expr(item)
    # Different names are a different tree, and so are other value names (or none at all).
    assert ConditionExpressionParser("#s = :a", {"#s": "id"}, {":a": {"S": "k2"}}).parse().expr(item)
    assert len(moto_speedups._conditions) == 2
    with pytest.raises(KeyError, match=":a"):
        ConditionExpressionParser("#s = :a", names, {":b": {"S": "INPROGRESS"}}).parse()
    with pytest.raises(TypeError):
        ConditionExpressionParser("#s = :a", names, None).parse()
    assert ConditionExpressionParser("#s = :a", names, {":a": {"S": "x"}, ":b": {"S": "y"}}).parse()
    assert len(moto_speedups._conditions) == 3


def _create_table(dynamodb: Any, name: str) -> None:
    """A table keyed on a string ``id``, as the decision ledger table is."""
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def _powertools_puts() -> list[Any]:
    dynamodb = boto3.client("dynamodb")
    _create_table(dynamodb, "idempotency")

    def put(key: str, now: int, status: str = "INPROGRESS", expiry: int = 1000) -> Any:
        return outcome(
            lambda: dynamodb.put_item(
                TableName="idempotency",
                Item={
                    "id": {"S": key},
                    "expiration": {"N": str(expiry)},
                    "in_progress_expiration": {"N": str(now * 1000 + 500)},
                    "status": {"S": status},
                },
                ConditionExpression=POWERTOOLS_CONDITION,
                ExpressionAttributeNames=POWERTOOLS_NAMES,
                ExpressionAttributeValues={
                    ":now": {"N": str(now)},
                    ":now_in_millis": {"N": str(now * 1000)},
                    ":inprogress": {"S": "INPROGRESS"},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        )

    ledger = DecisionLedger("idempotency", 1000, lambda: dynamodb)

    def step(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except OrderBusy as busy:
            return ("busy", str(busy))

    answers = [
        put("order-1", now=10),  # new
        put("order-1", now=10),  # in progress, not expired: ConditionalCheckFailed with the old item
        put("order-1", now=11),  # in-progress expiry (10500 ms) passed: taken over
        put("order-2", now=10, status="COMPLETED"),
        put("order-2", now=20),  # completed, not expired
        put("order-2", now=2000),  # expired
        # The decision ledger's conditional writes, through each of its stages.
        step(lambda: ledger.claim("cancel#o3", "a", 10, 40)),
        step(lambda: ledger.claim("cancel#o3", "b", 20, 50)),  # held
        step(lambda: ledger.claim("cancel#o3", "b", 41, 70)),  # lease ran out: taken over
        step(lambda: ledger.record_decision("cancel#o3", "a", {"outcome": {"status": "CANCELLED"}})),
        step(lambda: ledger.record_decision("cancel#o3", "b", {"outcome": {"status": "CANCELLED"}})),
        step(lambda: ledger.release("cancel#o3", "b")),
        step(lambda: ledger.claim("cancel#o3", "c", 42, 80)),  # delivery taken over
        step(lambda: ledger.record_delivered("cancel#o3", "c", "CANCELLED")),
        step(lambda: ledger.claim("cancel#o3", "d", 43, 90)),  # delivered
        outcome(
            lambda: dynamodb.delete_item(
                TableName="idempotency",
                Key={"id": {"S": "order-2"}},
                ConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": "COMPLETED"}},
                ReturnValues="ALL_OLD",
            )
        ),
        outcome(
            lambda: dynamodb.scan(
                TableName="idempotency",
                FilterExpression="#s = :s OR begins_with(id, :p)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": "INPROGRESS"}, ":p": {"S": "cancel"}},
            )
        ),
        outcome(
            lambda: dynamodb.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": "idempotency",
                            "Key": {"id": {"S": "order-1"}},
                            "ConditionExpression": "#s = :s",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": {":s": {"S": "COMPLETED"}},
                        }
                    }
                ]
            )
        ),
    ]
    table = dynamodb.scan(TableName="idempotency")["Items"]
    return [answers, sorted(table, key=lambda item: str(item["id"]["S"]))]


def test_dynamodb_conditional_writes_answer_and_store_the_same() -> None:
    without, with_ = without_and_with(_powertools_puts)
    assert with_ == without
    answers = without[0]
    assert answers[1][:2] == ("error", "ConditionalCheckFailedException")
    assert "error" not in str(answers[2])
    # A Claim's first field is its stage; ("busy", why) when another attempt held the order.
    assert [a[0] if isinstance(a, tuple) else a for a in answers[6:15]] == [
        "DECIDING",
        "busy",
        "DECIDING",
        "busy",
        None,
        None,
        "DECIDED",
        None,
        "DELIVERED",
    ]


# -- DynamoDB: update expressions --------------------------------------------------------------------
def _updates() -> list[Any]:
    dynamodb = boto3.client("dynamodb")
    for table, key in (("by-id", "id"), ("by-pk", "pk")):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def update(
        table: str, key: str, expression: str, names: Any = None, values: Any = None, **more: Any
    ) -> Any:
        arguments: dict[str, Any] = {
            "TableName": table,
            "Key": {("id" if table == "by-id" else "pk"): {"S": key}},
            "UpdateExpression": expression,
            "ReturnValues": "ALL_NEW",
            **more,
        }
        if names is not None:
            arguments["ExpressionAttributeNames"] = names
        if values is not None:
            arguments["ExpressionAttributeValues"] = values
        return outcome(lambda: dynamodb.update_item(**arguments))

    powertools = "SET #response_data = :response_data, #expiry = :expiry, #status = :status"
    powertools_names = {"#expiry": "expiration", "#response_data": "data", "#status": "status"}
    answers = []
    for n in range(3):
        answers.append(
            update(
                "by-id",
                f"order-{n % 2}",  # new, new, then existing
                powertools,
                powertools_names,
                {
                    ":expiry": {"N": str(100 + n)},
                    ":response_data": {"S": json.dumps({"n": n})},
                    ":status": {"S": "COMPLETED"},
                },
            )
        )
    answers += [
        update("by-id", "order-0", "SET #k = :v", {"#k": "note"}, {":v": {"S": "fine"}}),
        update("by-id", "order-0", "SET #k = :v", {"#k": "id"}, {":v": {"S": "changed"}}),  # the key
        update("by-id", "order-0", "SET #k = :v", {"#k": "note"}, {":v": {"S": "again"}}),
        update("by-id", "order-0", "SET #k = :v", {"#other": "note"}, {":v": {"S": "x"}}),  # name missing
        update("by-id", "order-0", "SET pk = :v", None, {":v": {"S": "ok on by-id"}}),
        update("by-pk", "p-0", "SET pk = :v", None, {":v": {"S": "the key of by-pk"}}),
        update("by-pk", "p-0", "SET other = :v", None, {":v": {"S": "fine"}}),
        update("by-id", "order-0", "SET a = :a, a = :b", None, {":a": {"N": "1"}, ":b": {"N": "2"}}),
        update("by-id", "order-0", "SET a = :a, a = :b", None, {":a": {"N": "1"}, ":b": {"N": "2"}}),
        update("by-id", "order-0", "SET a.b = :a, a = :b", None, {":a": {"N": "1"}, ":b": {"N": "2"}}),
        update("by-id", "order-0", "SET a = :a SET b = :b", None, {":a": {"N": "1"}, ":b": {"N": "2"}}),
        update(
            "by-id",
            "order-0",
            "SET #l = list_append(if_not_exists(#l, :empty), :more)",
            {"#l": "log"},
            {":empty": {"L": []}, ":more": {"L": [{"S": "one"}]}},
        ),
        update(
            "by-id",
            "order-0",
            "SET #l = list_append(if_not_exists(#l, :empty), :more)",
            {"#l": "log"},
            {":empty": {"L": []}, ":more": {"L": [{"S": "two"}]}},
        ),
        update(
            "by-id",
            "order-0",
            "ADD tries :one, tags :t REMOVE note",
            None,
            {":one": {"N": "1"}, ":t": {"SS": ["a"]}},
        ),
        update(
            "by-id",
            "order-0",
            "ADD tries :one, tags :t REMOVE note",
            None,
            {":one": {"N": "1"}, ":t": {"SS": ["b"]}},
        ),
        update("by-id", "order-0", "DELETE tags :t", None, {":t": {"SS": ["a"]}}),
        update("by-id", "order-0", "SET tries = tries + :one", None, {":one": {"N": "5"}}),
        update("by-id", "order-0", "SET nothere.deeper = :one", None, {":one": {"N": "5"}}),
        update(
            "by-id",
            "order-0",
            "SET tries = :one",
            None,
            {":one": {"S": "text"}},
            ConditionExpression="tries > :one",
        ),
        update("by-id", "order-0", "SET a = ", None, None),  # does not parse
        update("by-id", "order-0", "SET a = ", None, None),
        update("by-id", "order-0", "SET a = :missing", None, {":one": {"N": "1"}}),
    ]
    tables = {
        table: sorted(dynamodb.scan(TableName=table)["Items"], key=json.dumps) for table in ("by-id", "by-pk")
    }
    return [answers, tables]


def test_dynamodb_updates_answer_and_store_the_same() -> None:
    without, with_ = without_and_with(_updates)
    assert with_ == without
    answers = without[0]
    assert answers[2]["Attributes"]["data"] == {"S": '{"n": 2}'}
    assert answers[4][:2] == ("error", "ValidationException")  # the key, by name
    assert "error" not in str(answers[5])
    assert answers[8][0] == "error"  # by-pk's key
    assert "error" not in str(answers[7])  # the same expression on by-id
    assert answers[10][0] == answers[11][0] == "error"  # overlapping paths, twice


def test_update_expressions_are_parsed_once_and_stay_as_moto_made_them() -> None:
    moto_speedups.install()
    expression = "SET #response_data = :response_data, #expiry = :expiry, #status = :status"
    tree = UpdateExpressionParser.make(expression)
    assert UpdateExpressionParser.make(expression) is tree
    moto_made = moto_speedups._moto_make_update_expression(UpdateExpressionParser, expression)
    assert _tree(tree) == _tree(moto_made)

    def scenario() -> Any:
        dynamodb = boto3.client("dynamodb")
        _create_table(dynamodb, "t")
        for n in range(3):
            dynamodb.update_item(
                TableName="t",
                Key={"id": {"S": "k"}},
                UpdateExpression=expression,
                ExpressionAttributeNames={"#expiry": "e", "#response_data": "d", "#status": "s"},
                ExpressionAttributeValues={
                    ":expiry": {"N": str(n)},
                    ":response_data": {"S": "r"},
                    ":status": {"S": "OK"},
                },
            )

    with speedups(True), mock_aws():
        scenario()
    assert UpdateExpressionParser.make(expression) is tree
    assert _tree(tree) == _tree(moto_made)  # the validators worked on copies

    with pytest.raises(Exception) as first:  # noqa: PT011 - whatever moto raises
        UpdateExpressionParser.make("SET a = ")
    with pytest.raises(type(first.value)):
        UpdateExpressionParser.make("SET a = ")
    assert "SET a = " not in moto_speedups._update_trees


def _tree(node: Any) -> Any:
    if isinstance(node, list):
        return [_tree(child) for child in node]
    if hasattr(node, "children"):
        return (type(node).__name__, {k: _tree(v) for k, v in vars(node).items() if k != "parent"})
    return node


# -- SQS -------------------------------------------------------------------------------------------
def _messages_sent() -> list[Any]:
    sqs = boto3.client("sqs")
    standard = sqs.create_queue(QueueName="standard")["QueueUrl"]
    content = sqs.create_queue(
        QueueName="content.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )["QueueUrl"]
    explicit = sqs.create_queue(QueueName="explicit.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    sends: list[tuple[str, dict[str, Any]]] = [
        (
            standard,
            {"MessageBody": "one", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
        ),
        (standard, {"MessageBody": "two", "DelaySeconds": 0}),
        (standard, {"MessageBody": "late", "DelaySeconds": 901}),
        (content, {"MessageBody": "same", "MessageGroupId": "g"}),
        (content, {"MessageBody": "same", "MessageGroupId": "g"}),  # deduplicated
        (content, {"MessageBody": "other", "MessageGroupId": "g"}),
        (explicit, {"MessageBody": "x", "MessageGroupId": "g"}),  # needs a deduplication id
        (explicit, {"MessageBody": "x", "MessageGroupId": "g", "MessageDeduplicationId": "d1"}),
        (explicit, {"MessageBody": "x", "MessageGroupId": "g", "MessageDeduplicationId": "d1"}),
        (explicit, {"MessageBody": "y", "MessageGroupId": "g", "MessageDeduplicationId": "d2"}),
    ]

    def send(url: str, arguments: dict[str, Any]) -> Any:
        return outcome(lambda: sqs.send_message(QueueUrl=url, **arguments))

    answers = [send(url, arguments) for url, arguments in sends]
    received = {}
    for url in (standard, content, explicit):
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
        ).get("Messages", [])
        for message in messages:
            for volatile in ("SentTimestamp", "ApproximateFirstReceiveTimestamp"):
                message["Attributes"].pop(volatile, None)
            message.pop("ReceiptHandle")
        received[url.rsplit("/", 1)[-1]] = messages
    return [answers, received]


def test_sqs_sends_and_deduplicates_the_same() -> None:
    without, with_ = without_and_with(_messages_sent)
    assert with_ == without
    answers, received = without
    assert answers[2][0] == "error"  # DelaySeconds 901
    assert [m["Body"] for m in received["content.fifo"]] == ["same", "other"]
    assert [m["Body"] for m in received["explicit.fifo"]] == ["x", "y"]
    assert "SequenceNumber" in received["explicit.fifo"][0]["Attributes"]


def test_the_copied_functions_are_moto_5_2_5_s() -> None:
    """The module copies a few moto functions (with one change each): checked against moto 5.2.5."""
    import moto  # noqa: PLC0415

    assert moto.__version__ == moto_speedups.WRITTEN_FOR_MOTO, (
        "moto was upgraded: compare tests/local/moto_speedups.py's copies with the new moto, then"
        " update WRITTEN_FOR_MOTO"
    )
    # Each copy names the moto function it follows.
    for copy in (
        moto_speedups._parse_event_template,
        moto_speedups._send_message,
        moto_speedups._condition_tree,
    ):
        assert "moto 5.2.5's" in (inspect.getdoc(copy) or "")
