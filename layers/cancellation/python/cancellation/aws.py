"""The thin data layer: the only module that talks to AWS.

boto3 is imported at start: every invocation of the cancel function uses it. Clients are created
on first use (a cold start pays only for the ones it touches) under a lock, because boto3's client
creation is not thread-safe and orders of one batch run concurrently.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import boto3

from cancellation.batch import FIRST_ATTEMPT_AT, FIRST_MESSAGE_ID, REQUEUES
from cancellation.budget import SlotFull
from cancellation.outcomes import (
    CALLER_ERRORS,
    CALLER_SUCCESS_STATUSES,
    CORRECTION_DETAIL_TYPE,
    OUTCOME_DETAIL_TYPE,
    OUTCOME_SOURCE,
    Status,
)
from cancellation.qfpay import Credentials

if TYPE_CHECKING:
    from cancellation.models import Decision, LoopState, OutcomeDetail

_client_lock = threading.Lock()


class LazyClient:
    """A boto3 client made on first use, shared by the threads of one container."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._client: Any = None

    def __call__(self) -> Any:
        if self._client is None:
            with _client_lock:
                if self._client is None:
                    self._client = boto3.client(self._service)
        return self._client


class OutcomePublisher:
    def __init__(self, bus_name: str, events: Callable[[], Any] | None = None) -> None:
        self._bus_name = bus_name
        self._events = events or LazyClient("events")

    def publish(self, detail: OutcomeDetail) -> None:
        """A first outcome (revision 1) or a correction, each under its own DetailType."""
        correction = int(detail.get("revision") or 1) > 1
        answer = self._events().put_events(
            Entries=[
                {
                    "EventBusName": self._bus_name,
                    "Source": OUTCOME_SOURCE,
                    "DetailType": CORRECTION_DETAIL_TYPE if correction else OUTCOME_DETAIL_TYPE,
                    "Detail": _json(detail),
                }
            ]
        )
        if answer.get("FailedEntryCount"):
            entry = answer["Entries"][0]
            raise RuntimeError(
                f"outcome not accepted by EventBridge: {entry.get('ErrorCode')} {entry.get('ErrorMessage')}"
            )


class EnquiryLoopStarter:
    def __init__(self, state_machine_arn: str, stepfunctions: Callable[[], Any] | None = None) -> None:
        self._arn = state_machine_arn
        self._sfn = stepfunctions or LazyClient("stepfunctions")

    def start(self, name: str, state: LoopState) -> bool:
        """True if started; False if an execution of that name exists already (a repeated hand-off)."""
        client = self._sfn()
        try:
            client.start_execution(stateMachineArn=self._arn, name=name, input=json.dumps(state))
        except client.exceptions.ExecutionAlreadyExists:
            return False
        return True

    def result(self, name: str) -> LoopResult:
        """Where the loop of that name stands; its outcome once it has decided."""
        prefix, _, machine = self._arn.rpartition(":stateMachine:")
        arn = f"{prefix}:execution:{machine}:{name}"
        answer = self._sfn().describe_execution(executionArn=arn)
        output = json.loads(answer.get("output") or "null")
        outcome = output.get("outcome") if isinstance(output, dict) else None
        if outcome is None and answer["status"] == "FAILED":
            outcome = self._published_outcome(arn)
        state = json.loads(answer.get("input") or "null")
        started_at, deadline_at = (
            (float(state["started_at"]), float(state["deadline_at"]))
            if isinstance(state, dict) and "started_at" in state and "deadline_at" in state
            else (None, None)
        )
        return LoopResult(
            answer["status"], outcome, answer.get("error"), answer.get("cause"), started_at, deadline_at
        )

    def find(self, name: str) -> LoopResult | None:
        """:meth:`result`, or None if no execution of that name exists."""
        client = self._sfn()
        try:
            return self.result(name)
        except client.exceptions.ExecutionDoesNotExist:
            return None

    def _published_outcome(self, arn: str) -> dict[str, Any] | None:
        """A loop that ends UNKNOWN ends in a Fail state, which has no output: its outcome is the
        last one a state passed on (the most recent events come first)."""
        pages = (
            self._sfn()
            .get_paginator("get_execution_history")
            .paginate(executionArn=arn, reverseOrder=True, includeExecutionData=True)
        )
        for page in pages:
            for event in page["events"]:
                state = json.loads((event.get("stateExitedEventDetails") or {}).get("output") or "null")
                if isinstance(state, dict) and isinstance(state.get("outcome"), dict):
                    return dict(state["outcome"])
        return None


class LoopResult(NamedTuple):
    status: str  # RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED
    outcome: OutcomeDetail | None
    error: str | None
    cause: str | None
    started_at: float | None = None  # from the execution's input
    deadline_at: float | None = None


class CallerNotifier:
    """Answers a Step Functions caller that sent the order with a task token."""

    def __init__(self, stepfunctions: Callable[[], Any] | None = None) -> None:
        self._sfn = stepfunctions or LazyClient("stepfunctions")

    def notify(self, task_token: str, detail: OutcomeDetail) -> bool:
        """Answer with an outcome. False if the caller is gone (token expired or invalid): the
        outcome is published anyway."""
        status = Status(detail["status"])
        if status in CALLER_SUCCESS_STATUSES:
            return self._send(
                lambda sfn: sfn.send_task_success(taskToken=task_token, output=json.dumps(detail))
            )
        return self.fail(task_token, CALLER_ERRORS[status], detail["reason"])

    def fail(self, task_token: str, error: str, cause: str) -> bool:
        return self._send(
            lambda sfn: sfn.send_task_failure(taskToken=task_token, error=error, cause=cause[:32768])
        )

    def _send(self, call: Callable[[Any], Any]) -> bool:
        client = self._sfn()
        try:
            call(client)
        except (
            client.exceptions.TaskDoesNotExist,
            client.exceptions.TaskTimedOut,
            client.exceptions.InvalidToken,
        ):
            return False
        return True


class QFPayCredentials:
    """QFPay credentials from Secrets Manager (a JSON SecretString), read again after ``max_age``
    seconds or when forced (QFPay rejected our signature: the secret may have been rotated)."""

    def __init__(
        self,
        secret_id: str,
        max_age: int,
        secrets: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_id = secret_id
        self._max_age = max_age
        self._secrets = secrets or LazyClient("secretsmanager")
        self._clock = clock
        self._cached: tuple[float, Credentials] | None = None
        self._lock = threading.Lock()

    def __call__(self, force: bool = False) -> Credentials:
        with self._lock:  # one read per container, not one per concurrent order
            if force or self._cached is None or self._clock() - self._cached[0] >= self._max_age:
                read_at = self._clock()
                self._cached = (read_at, self._read())
            return self._cached[1]

    def _read(self) -> Credentials:
        text = self._secrets().get_secret_value(SecretId=self._secret_id).get("SecretString")
        try:
            value = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            # Not chained: a JSONDecodeError keeps the whole document (the secret) in ``doc``.
            value = None
        if not isinstance(value, dict):
            raise ValueError("QFPay secret is not a JSON object") from None
        return Credentials.from_secret(value)


class OrderBusy(Exception):
    """Another attempt holds this order (deciding or delivering); look again later.
    ``held_until``: when the holder's lease runs out, where the ledger said."""

    def __init__(self, message: str, held_until: float | None = None) -> None:
        super().__init__(message)
        self.held_until = held_until


class LedgerStage(StrEnum):
    """Where an order's ledger record is (stored as its ``stage`` attribute)."""

    DECIDING = "DECIDING"  # an attempt holds the lease and may call QFPay
    DECIDED = "DECIDED"  # the decision is stored; its delivery is under way
    DELIVERED = "DELIVERED"  # the outcome was published or the loop started: nothing left to do


class Claim(NamedTuple):
    """What an attempt may do with an order after claiming its record."""

    stage: LedgerStage  # DECIDING: decide it; DECIDED: deliver ``decision``; DELIVERED: nothing left
    decision: Decision | None
    result: str | None  # the delivered decision's status, once DELIVERED
    earlier_attempt: bool  # an attempt before this one started deciding and may have reached QFPay
    earlier_sends: int = 0  # cancels that attempts before this one may have sent (0 if none known)
    # Requests of earlier attempts refused as the message's own (QFPay's 1266, figures that
    # disagree with its record, ...): handed back, as they did nothing, but the next attempt reads
    # QFPay's record before sending a cancel.
    earlier_refusals: int = 0
    # The order's record had expired (not yet swept by DynamoDB's TTL): attempts came before, all
    # longer ago than the ledger remembers, so nothing of theirs can still be pending.
    forgotten: bool = False

    @property
    def reached_qfpay(self) -> bool:
        """An earlier attempt's cancel may have reached QFPay (counted), or one reached it and was
        refused: the next attempt reads QFPay's record before sending, never an older look."""
        return self.earlier_sends > 0 or self.earlier_refusals > 0


class LedgerTable:
    """The decision ledger's DynamoDB table: every write conditional, every read strongly
    consistent. A write whose condition fails raises :class:`OrderBusy` (another attempt holds the
    record), except a new record's, whose caller is told what stands there instead."""

    def __init__(self, table_name: str, dynamodb: Callable[[], Any]) -> None:
        self._table = table_name
        self._dynamodb = dynamodb

    def put_new(self, item: dict[str, Any], now: float) -> tuple[bool, dict[str, Any]]:
        """Write ``item`` where no record lives (absent, or past its TTL and not yet swept).
        Returns whether it was written, and the record it replaced or that stands in its way."""
        client = self._dynamodb()
        try:
            answer = client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(#id) OR #expiration < :now",
                ExpressionAttributeNames={"#id": "id", "#expiration": "expiration"},
                ExpressionAttributeValues={":now": {"N": _number(now)}},
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except client.exceptions.ConditionalCheckFailedException as held:
            return False, held.response.get("Item") or {}
        return True, answer.get("Attributes") or {}

    def get(self, key: str, *names: str) -> dict[str, Any] | None:
        """The record's attributes ``names``; None if there is no record."""
        answer = self._dynamodb().get_item(
            TableName=self._table,
            Key={"id": {"S": key}},
            ConsistentRead=True,
            ProjectionExpression=", ".join(f"#{name}" for name in names),
            ExpressionAttributeNames={f"#{name}": name for name in names},
        )
        return answer.get("Item") or None

    def update(
        self, key: str, expression: str, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> None:
        """Apply ``expression`` if ``condition`` holds, else :class:`OrderBusy`."""
        client = self._dynamodb()
        try:
            client.update_item(
                TableName=self._table,
                Key={"id": {"S": key}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except client.exceptions.ConditionalCheckFailedException:
            raise OrderBusy("another attempt took the order over") from None

    def set(
        self, key: str, condition: str, names: dict[str, str], values: dict[str, Any], **attributes: str
    ) -> None:
        """SET ``attributes`` if ``condition`` (with its ``names`` and ``values``) holds."""
        self.update(
            key,
            "SET " + ", ".join(f"#{name} = :{name}" for name in attributes),
            condition,
            {**names, **{f"#{name}": name for name in attributes}},
            {
                **values,
                **{f":{name}": {"N" if name in _NUMBERS else "S": v} for name, v in attributes.items()},
            },
        )

    def set_held(self, key: str, holder: str, **attributes: str) -> None:
        """SET ``attributes`` if ``holder`` still holds the record's lease."""
        self.set(key, "#holder = :holder", {"#holder": "holder"}, {":holder": {"S": holder}}, **attributes)


class DecisionLedger:
    """One record per order in the decision ledger table, through three stages (:class:`LedgerStage`):
    DECIDING (an attempt holds a lease and may call QFPay), DECIDED (the decision is stored, its
    delivery under way) and DELIVERED. Only the lease's holder may act. A lease that ran out (its
    invocation died) or was released (its attempt failed) is taken over by the next attempt, which
    carries on where the other stopped: deciding again, knowing an earlier attempt may have sent a
    cancel, or delivering the stored decision. Four writes on the usual path: claim, the cancel's
    count (:class:`CancelCount`, ``sends``), decision, delivered. Records expire (TTL
    ``expiration``) after ``expiry_seconds``."""

    def __init__(
        self, table_name: str, expiry_seconds: int, dynamodb: Callable[[], Any] | None = None
    ) -> None:
        self._expiry = expiry_seconds
        self._table = LedgerTable(table_name, dynamodb or LazyClient("dynamodb"))
        self.sends = CancelCount(self._table)
        self.names = PaymentNames(self._table, expiry_seconds)

    def claim(
        self, key: str, holder: str, now: float, lease_until: float, decision: Decision | None = None
    ) -> Claim:
        """Take the order's lease, or raise :class:`OrderBusy` while another attempt holds it.
        ``decision``: one known without asking QFPay; the record then starts DECIDED."""
        stage = LedgerStage.DECIDING if decision is None else LedgerStage.DECIDED
        item = {
            "id": {"S": key},
            "stage": {"S": stage},
            "holder": {"S": holder},
            "lease_until": {"N": _number(lease_until)},
            "expiration": {"N": str(int(now) + self._expiry)},
        }
        if decision is not None:
            item["decision"] = {"S": _json(decision)}
        else:
            item["sends"] = {"N": "0"}  # counted when a cancel is about to leave (CancelCount)
        written, old = self._table.put_new(item, now)
        if not written:
            if old.get("stage", {}).get("S") == LedgerStage.DECIDING:
                return self._take_over_decision(key, holder, now, lease_until, old)
            return self._claim_delivery(key, holder, now, lease_until, old)
        # A record past its expiry (DynamoDB sweeps late) is read as swept, except that it proves the
        # ledger forgot the order whatever the message's txdtm says (the Enquiry goes first).
        return Claim(stage, decision, None, earlier_attempt=False, forgotten=bool(old))

    def _take_over_decision(
        self, key: str, holder: str, now: float, lease_until: float, old: dict[str, Any]
    ) -> Claim:
        """A decision its holder abandoned (lease run out or released): decide again, knowing how
        many cancels earlier attempts may have sent."""
        held_until = float(old["lease_until"]["N"])
        if held_until >= now:
            raise OrderBusy("another attempt holds the order (DECIDING)", held_until)
        # A record without the count comes from before it was kept: one cancel may have been sent.
        earlier = int(old.get("sends", {}).get("N", "1"))
        refusals = int(old.get("refusals", {}).get("N", "0"))
        self._take_over(
            key,
            LedgerStage.DECIDING,
            holder,
            now,
            lease_until,
            sends=old.get("sends"),
            refusals=old.get("refusals"),
        )
        return Claim(
            LedgerStage.DECIDING,
            None,
            None,
            earlier_attempt=True,
            earlier_sends=earlier,
            earlier_refusals=refusals,
        )

    def _claim_delivery(
        self, key: str, holder: str, now: float, lease_until: float, old: dict[str, Any]
    ) -> Claim:
        stage = old.get("stage", {}).get("S")
        decision = json.loads(old["decision"]["S"]) if "decision" in old else None
        if stage == LedgerStage.DELIVERED:
            return Claim(
                LedgerStage.DELIVERED, decision, old.get("result", {}).get("S"), earlier_attempt=True
            )
        held_until = float(old["lease_until"]["N"])
        if stage != LedgerStage.DECIDED or held_until >= now:
            raise OrderBusy(f"another attempt holds the order ({stage})", held_until)
        # Decided, but its delivery was abandoned: this attempt delivers the stored decision.
        self._take_over(key, LedgerStage.DECIDED, holder, now, lease_until)
        return Claim(LedgerStage.DECIDED, decision, None, earlier_attempt=True)

    def _take_over(
        self,
        key: str,
        stage: LedgerStage,
        holder: str,
        now: float,
        lease_until: float,
        *,
        sends: Mapping[str, str] | None = None,
        refusals: Mapping[str, str] | None = None,
    ) -> None:
        """Take the lease of a record still at ``stage`` whose lease ran out (or was released);
        :class:`OrderBusy` if another attempt took it first. ``sends``, ``refusals``: as read
        (DECIDING only; None: the record has none). What is taken over is what was read: an
        attempt that counts a cancel or notes a refusal in between makes the take-over fail."""
        condition = "#stage = :stage AND #lease_until < :now"
        names = {"#stage": "stage", "#lease_until": "lease_until"}
        values: dict[str, Any] = {":stage": {"S": stage}, ":now": {"N": _number(now)}}
        counted: dict[str, str] = {}
        if stage == LedgerStage.DECIDING:
            for name, read in (("sends", sends), ("refusals", refusals)):
                names[f"#{name}"] = name
                if read is None:
                    condition += f" AND attribute_not_exists(#{name})"
                else:
                    condition += f" AND #{name} = :{name}_read"
                    values[f":{name}_read"] = dict(read)
            if sends is None:
                counted["sends"] = "1"  # kept from here on (see _take_over_decision)
        self._table.set(
            key, condition, names, values, holder=holder, lease_until=_number(lease_until), **counted
        )

    def stage_of(self, key: str, now: float) -> tuple[LedgerStage, bool] | None:
        """The record's stage and whether an attempt holds it now (a strongly consistent read);
        None if there is no record."""
        item = self._table.get(key, "stage", "lease_until")
        if item is None:
            return None
        return LedgerStage(item["stage"]["S"]), float(item.get("lease_until", {}).get("N", "0")) >= now

    def decision_of(self, key: str) -> Decision | None:
        """The decision recorded under ``key``, if any (a strongly consistent read)."""
        item = self._table.get(key, "decision") or {}
        return json.loads(item["decision"]["S"]) if "decision" in item else None

    def record_decision(self, key: str, holder: str, decision: Decision) -> None:
        """Store the decision. :class:`OrderBusy` if this attempt's lease ran out and another took
        the order over (that one decides again, asking the Enquiry first)."""
        self._table.set_held(key, holder, stage=LedgerStage.DECIDED, decision=_json(decision))

    def record_delivered(self, key: str, holder: str, result: str) -> None:
        self._table.set_held(key, holder, stage=LedgerStage.DELIVERED, result=result)

    def release(self, key: str, holder: str) -> None:
        """Hand the order back now rather than when the lease runs out: this attempt failed."""
        self._table.set_held(key, holder, lease_until="0")


class CancelCount:
    """An order record's ``sends``: the attempts that sent a cancel, or may have. Counted just
    before the request leaves, so an attempt that dies after sending, or whose decision DynamoDB
    refuses, is counted all the same, and one that died before sending is not."""

    def __init__(self, table: LedgerTable) -> None:
        self._table = table

    def count(self, key: str, holder: str) -> None:
        """Count this attempt's cancel just before it leaves: from now on the next attempt knows it
        may have reached QFPay. :class:`OrderBusy` if another attempt took the order over (then
        nothing may be sent)."""
        self._table.update(
            key,
            "ADD #sends :one",
            "#holder = :holder",
            {"#holder": "holder", "#sends": "sends"},
            {":holder": {"S": holder}, ":one": {"N": "1"}},
        )

    def hand_back_refused(self, key: str, holder: str, *, counted: bool) -> None:
        """Hand the order back after QFPay refused this attempt's request (the message's own
        refusal: its cancel, if ``counted``, did nothing and is taken off the count), noting the
        refusal (``refusals``), so the next attempt reads QFPay's record before sending a cancel:
        one refused cancel reached QFPay, and the next message may make the same bad request."""
        names = {"#holder": "holder", "#lease_until": "lease_until", "#refusals": "refusals"}
        values = {":holder": {"S": holder}, ":zero": {"N": "0"}, ":one": {"N": "1"}}
        if counted:
            names["#sends"] = "sends"
            expression = "SET #lease_until = :zero, #sends = #sends - :one ADD #refusals :one"
            condition = "#holder = :holder AND #sends >= :one"
        else:
            expression, condition = "SET #lease_until = :zero ADD #refusals :one", "#holder = :holder"
        self._table.update(key, expression, condition, names, values)

    def release_unsent(self, key: str, holder: str) -> None:
        """:meth:`DecisionLedger.release`, for an attempt whose counted cancel QFPay showed did
        nothing (a "try later" answer, HTTP 429, no connection): it no longer counts against the
        order."""
        self._table.update(
            key,
            "SET #lease_until = :zero, #sends = #sends - :one",
            "#holder = :holder AND #sends >= :one",
            {"#holder": "holder", "#lease_until": "lease_until", "#sends": "sends"},
            {":holder": {"S": holder}, ":zero": {"N": "0"}, ":one": {"N": "1"}},
        )


class PaymentNames:
    """Which order identity a merchant's ``out_trade_no`` stands for (``name#<mchid>|out_trade_no=<n>``):
    the payment's syssn, once QFPay's row showed it, or the ``out_trade_no`` naming itself, when an
    order was decided under it (QFPay showed no row, or could not be asked). The first binding
    stands, so every later message naming the payment by ``out_trade_no`` decides under the same
    identity, whatever QFPay's look-up answers then. Kept an hour longer than order records, so a
    binding never expires before the record it names."""

    PREFIX = "name#"
    _KEPT_LONGER = 3600

    def __init__(self, table: LedgerTable, expiry_seconds: int) -> None:
        self._table = table
        self._expiry = expiry_seconds

    def bound(self, naming: str, now: float) -> str | None:
        """The identity ``naming`` is bound to, if any (a strongly consistent read)."""
        item = self._table.get(self.PREFIX + naming, "identity", "expiration")
        if item is None or float(item["expiration"]["N"]) < now:
            return None  # none, or past its expiry and not yet swept
        return str(item["identity"]["S"])

    def bind(self, naming: str, identity: str, now: float) -> str:
        """Bind ``naming`` to ``identity`` unless it is bound already; the identity it stands for."""
        item = {
            "id": {"S": self.PREFIX + naming},
            "identity": {"S": identity},
            "expiration": {"N": str(int(now) + self._expiry + self._KEPT_LONGER)},
        }
        written, old = self._table.put_new(item, now)
        return identity if written else str(old["identity"]["S"])


_NUMBERS = frozenset({"lease_until", "sends"})


def _json(value: Mapping[str, Any]) -> str:
    """Compact JSON: what EventBridge and DynamoDB bill by is its size."""
    return json.dumps(value, separators=(",", ":"))


def _number(value: float) -> str:
    return f"{value:.3f}"


class RedeliveryDelay:
    """Backs off one SQS record by extending its visibility (the message reappears later)."""

    def __init__(self, sqs: Callable[[], Any] | None = None) -> None:
        self._sqs = sqs or LazyClient("sqs")
        self._queue_urls: dict[str, str] = {}

    def delay(self, queue_arn: str, receipt_handle: str, seconds: int) -> None:
        client = self._sqs()
        client.change_message_visibility(
            QueueUrl=self._url(queue_arn), ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
        )

    def requeue(
        self,
        queue_arn: str,
        body: str,
        seconds: int,
        first_attempt_at: float,
        requeues: int,
        *,
        message_id: str,
    ) -> None:
        """Send the message again as a new one, due in ``seconds`` (at most 900): unlike a
        redelivery, it does not count toward the queue's maxReceiveCount. The caller then lets
        the original be deleted. ``message_id``: the message's first id, which the copy keeps."""
        self._sqs().send_message(
            QueueUrl=self._url(queue_arn),
            MessageBody=body,
            DelaySeconds=max(0, min(900, seconds)),
            MessageAttributes={
                FIRST_ATTEMPT_AT: {"DataType": "Number", "StringValue": _number(first_attempt_at)},
                REQUEUES: {"DataType": "Number", "StringValue": str(requeues)},
                FIRST_MESSAGE_ID: {"DataType": "String", "StringValue": message_id},
            },
        )

    def _url(self, queue_arn: str) -> str:
        url = self._queue_urls.get(queue_arn)
        if url is None:
            _, _, _, _, account, name = queue_arn.split(":", 5)
            url = self._sqs().get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            self._queue_urls[queue_arn] = url
        return str(url)


# ------------------------------------------------------------------ reconciliation records


class ReconciliationStage(StrEnum):
    """Where a reconciliation record is (stored as its ``stage`` attribute)."""

    DUE = "DUE"  # the next Transaction Enquiry is due at ``due_at``
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  # a person has to settle it
    RESOLVED = "RESOLVED"  # QFPay's final status, or a person's, was published


# The sparse index's partitions: a record is in one of them until it is resolved, then in none.
_INDEX_QUEUE = {ReconciliationStage.DUE: "due", ReconciliationStage.NEEDS_ATTENTION: "attention"}
RECONCILIATION_INDEX = "ReconciliationQueue"
RECONCILIATION_PREFIX = "reconcile#"


class ReconciliationRecord(NamedTuple):
    """One order whose outcome a person would otherwise have to settle: UNKNOWN (re-checked by the
    Transaction Enquiry on a schedule) or REFUND_REQUIRED (a person refunds it)."""

    outcome_id: str
    stage: ReconciliationStage
    due_at: float  # DUE: when the next check is due; NEEDS_ATTENTION: since when
    checks: int  # Transaction Enquiries asked so far
    outcome: OutcomeDetail  # the latest revision published
    history: list[dict[str, Any]]  # every revision: revision, status, reason, decided_by, decided_at
    enrolled_at: float
    version: int  # optimistic lock: every write names the version it read
    last_finding: str | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    note: str | None = None


class ReconciliationBusy(Exception):
    """Another pass or a person changed the record since it was read; it is left to them."""


class ReconciliationLedger:
    """The due list and the needs-attention list, as records of their own in the ledger table
    (``reconcile#<outcome_id>``), found through a sparse index (``queue`` + ``due_at``): only
    unresolved records carry ``queue``, so a pass reads what is due and nothing else."""

    def __init__(self, table_name: str, dynamodb: Callable[[], Any] | None = None) -> None:
        self._table = table_name
        self._dynamodb = dynamodb or LazyClient("dynamodb")

    def enrol(self, record: ReconciliationRecord) -> bool:
        """False if the order is enrolled already (a repeated outcome event)."""
        client = self._dynamodb()
        try:
            client.put_item(
                TableName=self._table,
                Item=_reconciliation_item(record),
                ConditionExpression="attribute_not_exists(#id)",
                ExpressionAttributeNames={"#id": "id"},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def get(self, outcome_id: str) -> ReconciliationRecord | None:
        answer = self._dynamodb().get_item(
            TableName=self._table,
            Key={"id": {"S": RECONCILIATION_PREFIX + outcome_id}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _reconciliation_record(item) if item else None

    def due(self, now: float, limit: int) -> list[ReconciliationRecord]:
        """Records whose next check is due, oldest first."""
        return self._query(ReconciliationStage.DUE, limit, "#due_at <= :now", {":now": {"N": _number(now)}})

    def needing_attention(self, limit: int = 1000) -> list[ReconciliationRecord]:
        return self._query(ReconciliationStage.NEEDS_ATTENTION, limit)

    def unresolved(self, limit: int = 1000) -> list[ReconciliationRecord]:
        """Every record still due or needing attention (the index holds nothing else)."""
        return self._query(ReconciliationStage.DUE, limit) + self._query(
            ReconciliationStage.NEEDS_ATTENTION, limit
        )

    def _query(
        self,
        stage: ReconciliationStage,
        limit: int,
        condition: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> list[ReconciliationRecord]:
        client = self._dynamodb()
        names = {"#queue": "queue", **({"#due_at": "due_at"} if condition else {})}
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": RECONCILIATION_INDEX,
            "KeyConditionExpression": "#queue = :queue" + (f" AND {condition}" if condition else ""),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":queue": {"S": _INDEX_QUEUE[stage]}, **(values or {})},
        }
        records: list[ReconciliationRecord] = []
        while len(records) < limit:
            answer = client.query(**request, Limit=limit - len(records))
            records += [_reconciliation_record(item) for item in answer.get("Items", [])]
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return records

    def save(self, record: ReconciliationRecord) -> ReconciliationRecord:
        """Write ``record`` (read at ``record.version``) as the next version; :class:`ReconciliationBusy`
        if someone else wrote it in between."""
        saved = record._replace(version=record.version + 1)
        client = self._dynamodb()
        try:
            client.put_item(
                TableName=self._table,
                Item=_reconciliation_item(saved),
                ConditionExpression="#version = :version",
                ExpressionAttributeNames={"#version": "version"},
                ExpressionAttributeValues={":version": {"N": str(record.version)}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            raise ReconciliationBusy(f"reconciliation record {record.outcome_id} changed meanwhile") from None
        return saved


def _reconciliation_item(record: ReconciliationRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": {"S": RECONCILIATION_PREFIX + record.outcome_id},
        "stage": {"S": record.stage},
        "due_at": {"N": _number(record.due_at)},
        "checks": {"N": str(record.checks)},
        "outcome": {"S": _json(record.outcome)},
        "history": {"S": json.dumps(record.history, separators=(",", ":"))},
        "enrolled_at": {"N": _number(record.enrolled_at)},
        "version": {"N": str(record.version)},
    }
    if record.stage in _INDEX_QUEUE:
        item["queue"] = {"S": _INDEX_QUEUE[record.stage]}
    for name in ("last_finding", "resolved_by", "note"):
        value = getattr(record, name)
        if value is not None:
            item[name] = {"S": value}
    if record.resolved_at is not None:
        item["resolved_at"] = {"N": _number(record.resolved_at)}
    return item


def _reconciliation_record(item: dict[str, Any]) -> ReconciliationRecord:
    def text(name: str) -> str | None:
        return item[name]["S"] if name in item else None

    return ReconciliationRecord(
        outcome_id=item["id"]["S"].removeprefix(RECONCILIATION_PREFIX),
        stage=ReconciliationStage(item["stage"]["S"]),
        due_at=float(item["due_at"]["N"]),
        checks=int(item["checks"]["N"]),
        outcome=json.loads(item["outcome"]["S"]),
        history=json.loads(item["history"]["S"]),
        enrolled_at=float(item["enrolled_at"]["N"]),
        version=int(item["version"]["N"]),
        last_finding=text("last_finding"),
        resolved_by=text("resolved_by"),
        resolved_at=float(item["resolved_at"]["N"]) if "resolved_at" in item else None,
        note=text("note"),
    )


class OutcomeIntake:
    """The queue EventBridge copies UNKNOWN and REFUND_REQUIRED outcomes into; a pass enrols each
    before deleting it, so an outcome is never lost between the bus and the due list."""

    def __init__(self, queue_url: str, sqs: Callable[[], Any] | None = None) -> None:
        self._url = queue_url
        self._sqs = sqs or LazyClient("sqs")

    def receive(self) -> list[tuple[str, str]]:
        """Up to 10 messages as (receipt handle, body)."""
        answer = self._sqs().receive_message(QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        return [(m["ReceiptHandle"], m["Body"]) for m in answer.get("Messages", [])]

    def delete(self, receipt_handle: str) -> None:
        self._sqs().delete_message(QueueUrl=self._url, ReceiptHandle=receipt_handle)


class BudgetSlots:
    """The merchants' request budgets (:mod:`cancellation.budget`), one record per merchant
    (``budget#<merchant>``) holding ``next_slot``, the start of its next free slot. Taking a slot
    is one conditional ``UpdateItem`` while the merchant is busy (the usual case in a burst); an
    idle merchant's first slot costs a second write."""

    def __init__(
        self, table_name: str, expiry_seconds: int = 86400, dynamodb: Callable[[], Any] | None = None
    ) -> None:
        self._table = table_name
        self._expiry = expiry_seconds
        self._dynamodb = dynamodb or LazyClient("dynamodb")

    def reserve(self, merchant: str, now: float, interval: float, latest: float) -> float:
        client = self._dynamodb()
        key = {"id": {"S": f"budget#{merchant}"}}
        for _ in range(8):  # each round loses only to another container taking a slot
            try:
                # Busy: the next slot is now or later; take it and move it on by one interval.
                answer = client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="SET next_slot = next_slot + :interval, expiration = :expiration",
                    ConditionExpression="next_slot >= :now AND next_slot <= :latest",
                    ExpressionAttributeValues={
                        ":interval": {"N": _number(interval)},
                        ":now": {"N": _number(now)},
                        ":latest": {"N": _number(min(latest, now + 86400))},
                        ":expiration": {"N": str(int(now) + self._expiry)},
                    },
                    ReturnValues="UPDATED_OLD",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                taken = answer.get("Attributes", {}).get("next_slot")
                if taken is None:
                    # DynamoDB returns the old value; moto under concurrent writes to one item may
                    # not. The slot is taken but its time unknown: take another (one slot wasted
                    # never exceeds the limit).
                    continue
                return float(taken["N"])
            except client.exceptions.ConditionalCheckFailedException as refused:
                old = refused.response.get("Item") or {}
            next_slot = float(old["next_slot"]["N"]) if "next_slot" in old else None
            if next_slot is not None and next_slot > latest:
                raise SlotFull(next_slot)
            if next_slot is not None and next_slot >= now:
                continue  # moved on meanwhile: try the busy path again
            try:
                # Idle: the slot is now.
                client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="SET next_slot = :next, expiration = :expiration",
                    ConditionExpression="attribute_not_exists(next_slot) OR next_slot < :now",
                    ExpressionAttributeValues={
                        ":next": {"N": _number(now + interval)},
                        ":now": {"N": _number(now)},
                        ":expiration": {"N": str(int(now) + self._expiry)},
                    },
                )
                return now
            except client.exceptions.ConditionalCheckFailedException:
                continue  # another container took the idle slot: the merchant is busy now
        raise SlotFull(now + interval)  # heavy contention: come back shortly

    def hold_until(self, merchant: str, until: float) -> None:
        client = self._dynamodb()
        # A refusal means it is already held at least that long.
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            client.update_item(
                TableName=self._table,
                Key={"id": {"S": f"budget#{merchant}"}},
                UpdateExpression="SET next_slot = :until, expiration = :expiration",
                ConditionExpression="attribute_not_exists(next_slot) OR next_slot < :until",
                ExpressionAttributeValues={
                    ":until": {"N": _number(until)},
                    ":expiration": {"N": str(int(until) + self._expiry)},
                },
            )
