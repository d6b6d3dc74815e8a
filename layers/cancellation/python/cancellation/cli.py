"""``qfpay-cancellation``: the operators' tool, against a deployed stack (``--stack``) or the local
pipeline (``--endpoint-url``). Not used by the functions; it reads and writes what they do, through
the same ledger, publisher and order validation.

Exit codes: 0 done; 1 the operation ran but did not succeed (a message not moved, an AWS error);
2 bad usage or an invalid order; 3 not found (stack, order, record); 4 no AWS access (no
credentials, endpoint unreachable); 5 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cancellation.aws import (
    DecisionLedger,
    LedgerStage,
    ReconciliationLedger,
    ReconciliationRecord,
    ReconciliationStage,
)
from cancellation.cancel import execution_name
from cancellation.naming import adopt
from cancellation.orders import InvalidOrder, Order, parse_order_message
from cancellation.outcomes import outcome_id
from cancellation.reconciliation import OPERATOR_STATUSES, summarise_revisions

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NO_ACCESS, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
EXIT_CODES = """exit codes:
  0  done
  1  the operation ran but did not succeed (a message not moved, an AWS error)
  2  bad usage, or the order is not valid
  3  not found: the stack, the order or its record
  4  no AWS access: no credentials, or the endpoint cannot be reached
  5  timed out waiting (cancel --wait)"""
# The stack outputs the tool needs (template.yaml, Outputs).
OUTPUTS = (
    "OrderTimeoutQueueUrl",
    "OrderTimeoutDeadLetterQueueUrl",
    "OutcomeEventBusName",
    "CancellationStateMachineArn",
    "LedgerTableName",
    "ReconcileFunctionName",
)
# SQS answers these where a queue cannot use StartMessageMoveTask (or the backend lacks it).
_NO_MOVE_TASK = {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction"}


class Failure(Exception):
    """One clear line for the operator, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Stack(NamedTuple):
    """The deployed (or local) resources, by their stack outputs."""

    queue_url: str
    dlq_url: str
    bus_name: str
    state_machine_arn: str
    table: str
    reconcile_function: str


class Tool:
    def __init__(self, session: boto3.session.Session, endpoint_url: str | None, out: TextIO, err: TextIO):
        self._session, self._endpoint, self.out, self.err = session, endpoint_url, out, err
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(service, endpoint_url=self._endpoint)
        return self._clients[service]

    def stack(self, name: str) -> Stack:
        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            if "does not exist" in str(exc):
                raise Failure(f"stack {name!r} not found", EXIT_NOT_FOUND) from None
            raise
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [key for key in OUTPUTS if key not in outputs]
        if missing:
            raise Failure(f"stack {name!r} lacks the outputs {', '.join(missing)}: is it this service's?")
        return Stack(*(outputs[key] for key in OUTPUTS))

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def progress(self, text: str) -> None:
        print(text, file=self.err, flush=True)


# ------------------------------------------------------------------------------------- show


def order_named(args: argparse.Namespace) -> Order:
    """The order (enough for its identity) named on the command line."""
    if not (args.out_trade_no or args.syssn):
        raise Failure("name the order with --out-trade-no or --syssn", EXIT_USAGE)
    return Order(txamt=1, txdtm="", out_trade_no=args.out_trade_no, syssn=args.syssn, mchid=args.mchid)


def ledger_record(tool: Tool, stack: Stack, order: Order) -> dict[str, Any] | None:
    item = (
        tool.client("dynamodb")
        .get_item(TableName=stack.table, Key={"id": {"S": f"cancel#{order.identity}"}}, ConsistentRead=True)
        .get("Item")
    )
    if not item:
        return None
    record = {name: next(iter(value.values())) for name, value in item.items()}
    if "decision" in record:
        record["decision"] = json.loads(record["decision"])
    return record


def loop_summary(tool: Tool, stack: Stack, order: Order) -> dict[str, Any] | None:
    """The enquiry loop's execution for the order, summarised: turns, Enquiry answers, resend."""
    prefix, _, machine = stack.state_machine_arn.rpartition(":stateMachine:")
    arn = f"{prefix}:execution:{machine}:{execution_name(order)}"
    sfn = tool.client("stepfunctions")
    try:
        execution = sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("ExecutionDoesNotExist", "ResourceNotFound"):
            return None
        raise
    history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    answers = []
    for event in history:
        exited = event.get("stateExitedEventDetails") or {}
        if exited.get("name") == "AskEnquiry":
            state = json.loads(exited.get("output") or "{}")
            answers.append(
                f"{state.get('status')}: {state.get('last_reason') or state.get('outcome', {}).get('reason')}"
            )
    output = json.loads(execution.get("output") or "{}")
    return {
        "execution": execution["executionArn"],
        "status": execution["status"],
        "turns": len(answers),
        "enquiry_answers": answers,
        "resent": bool(output.get("resent")),
        "outcome_status": (output.get("outcome") or {}).get("status"),
    }


def peek(tool: Tool, queue_url: str) -> list[dict[str, Any]]:
    """Every message of a queue, left as it was: each is received once, then made visible again."""
    sqs = tool.client("sqs")
    seen: dict[str, dict[str, Any]] = {}
    try:
        while True:
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=60,
                WaitTimeSeconds=0,
                AttributeNames=["All"],
            ).get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            seen.update({m["MessageId"]: m for m in fresh})
            if not fresh:
                return list(seen.values())
    finally:
        for message in seen.values():
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )


def names_order(message: dict[str, Any], order: Order) -> bool:
    try:
        parsed = parse_order_message(message["Body"])
    except InvalidOrder:
        return False
    return parsed.identity == order.identity or bool(order.syssn and parsed.syssn == order.syssn)


def show(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    order = _with_syssn(tool, stack, order_named(args))
    oid = outcome_id(order.identity)
    record = ledger_record(tool, stack, order)
    reconciled = _reconciliation_records(
        tool, stack, order, [oid, *([args.outcome_id] if args.outcome_id else [])]
    )
    loop = loop_summary(tool, stack, order)
    dead = [m["MessageId"] for m in peek(tool, stack.dlq_url) if names_order(m, order)]
    if record is None and not reconciled and loop is None and not dead:
        raise Failure(f"no such order: nothing recorded for {order.identity}", EXIT_NOT_FOUND)
    revisions = _first_revision(record)
    views = [_reconciliation_view(r) for r in reconciled]
    found = {
        "order": order.identity,
        "outcome_id": oid,
        "ledger": record,
        "revisions": revisions,
        "reconciliation": views,
        "loop": loop,
        "dead_letters": dead,
    }
    if args.json:
        tool.say(json.dumps(found, indent=2, default=str))
        return EXIT_OK
    tool.say(f"order        {order.identity}")
    tool.say(f"outcome_id   {oid} (the order's)")
    if record is not None:
        tool.say(f"ledger       stage {record.get('stage')}, result {record.get('result', '-')}")
    for line in summarise_revisions(revisions if not reconciled else []):
        tool.say(f"  {line}")
    for view in views:
        tool.say(
            f"reconcile    {view['outcome_id']}: {view['stage']}, {view['checks']} checks, "
            f"last: {view['last_finding'] or '-'}"
        )
        for line in summarise_revisions(view["revisions"]):
            tool.say(f"  {line}")
    if loop is not None:
        tool.say(f"loop         {loop['status']}, {loop['turns']} turns, resent {loop['resent']}")
        for answer in loop["enquiry_answers"]:
            tool.say(f"  {answer}")
    tool.say(f"DLQ          {', '.join(dead) if dead else 'none'}")
    return EXIT_OK


def _with_syssn(tool: Tool, stack: Stack, order: Order) -> Order:
    """The order under the identity the ledger bound its out_trade_no to (cancellation.naming);
    else, named by out_trade_no alone, with the payment's syssn (its identity, under which the
    ledger and the loop keep it) when an outcome awaiting reconciliation names exactly one."""
    if order.out_trade_no:
        names = DecisionLedger(stack.table, 0, lambda: tool.client("dynamodb")).names
        bound = names.bound(order.out_trade_no_naming, time.time())
        if bound is not None:
            return adopt(order, bound)
    if order.syssn is not None or not order.out_trade_no:
        return order
    ledger = ReconciliationLedger(stack.table, lambda: tool.client("dynamodb"))
    named = {
        str(record.outcome.get("syssn"))
        for record in ledger.unresolved()
        if record.outcome.get("out_trade_no") == order.out_trade_no
        and record.outcome.get("syssn")
        and (order.mchid is None or record.outcome.get("mchid") == order.mchid)
    }
    return order._replace(syssn=named.pop()) if len(named) == 1 else order


def _reconciliation_records(
    tool: Tool, stack: Stack, order: Order, outcome_ids: Sequence[str]
) -> list[ReconciliationRecord]:
    """The order's reconciliation records: by outcome_id (the order's, or one given), and every
    unresolved one naming the order (a refused request's outcome has an outcome_id of its own)."""
    ledger = ReconciliationLedger(stack.table, lambda: tool.client("dynamodb"))
    found: dict[str, ReconciliationRecord] = {}
    for oid in outcome_ids:
        if (record := ledger.get(oid)) is not None:
            found[oid] = record
    for record in ledger.unresolved():
        outcome = record.outcome
        if (order.out_trade_no and outcome.get("out_trade_no") == order.out_trade_no) or (
            order.syssn and outcome.get("syssn") == order.syssn
        ):
            found.setdefault(record.outcome_id, record)
    return list(found.values())


def _first_revision(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    outcome = ((record or {}).get("decision") or {}).get("outcome")
    if not outcome:
        return []
    return [
        {
            "revision": int(outcome.get("revision") or 1),
            "status": outcome["status"],
            "reason": outcome.get("reason"),
            "decided_by": outcome.get("decided_by"),
            "decided_at": outcome.get("decided_at"),
        }
    ]


def _reconciliation_view(record: ReconciliationRecord) -> dict[str, Any]:
    return {
        "outcome_id": record.outcome_id,
        "status": record.outcome.get("status"),
        "revisions": record.history,
        "stage": record.stage,
        "checks": record.checks,
        "due_at": _iso(record.due_at) if record.stage != ReconciliationStage.RESOLVED else None,
        "last_finding": record.last_finding,
        "resolved_by": record.resolved_by,
        "resolved_at": _iso(record.resolved_at) if record.resolved_at else None,
        "note": record.note,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------------- cancel


def cancel(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    text = args.order
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as file:
            text = file.read()
    try:
        order = parse_order_message(text)  # what the queue would accept
    except InvalidOrder as invalid:
        raise Failure(f"invalid order: {invalid.reason}", EXIT_USAGE) from None
    sent = tool.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=text)
    tool.progress(f"sent {order.identity} as message {sent['MessageId']}")
    if not args.wait:
        return EXIT_OK
    deadline = time.monotonic() + args.wait
    outcome = None
    while outcome is None:
        outcome = _decided(tool, stack, order)
        if outcome is None:
            if time.monotonic() > deadline:
                raise Failure(f"no outcome for {order.identity} after {args.wait} s", EXIT_TIMEOUT)
            tool.progress("waiting for the outcome ...")
            time.sleep(1)
    tool.say(json.dumps(outcome, indent=2))
    return EXIT_OK


def _decided(tool: Tool, stack: Stack, order: Order) -> dict[str, Any] | None:
    record = ledger_record(tool, stack, order)
    if record is None or record.get("stage") != LedgerStage.DELIVERED:
        return None
    decision = record.get("decision") or {}
    if "outcome" in decision:
        return dict(decision["outcome"])
    loop = loop_summary(tool, stack, order)  # handed to the enquiry loop: its output has the outcome
    if loop is None or loop["status"] == "RUNNING":
        return None
    execution = tool.client("stepfunctions").describe_execution(executionArn=loop["execution"])
    output = json.loads(execution.get("output") or "{}")
    return dict(output.get("outcome") or {"status": loop["status"], "reason": execution.get("cause")})


# -------------------------------------------------------------------------------- attention


def attention(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for record in ReconciliationLedger(stack.table, lambda: tool.client("dynamodb")).needing_attention():
        outcome = record.outcome
        rows.append(
            {
                "kind": outcome["status"],
                "id": record.outcome_id,
                "order": outcome.get("out_trade_no") or outcome.get("syssn"),
                "since": _iso(record.due_at),
                "checks": record.checks,
                "reason": record.last_finding or outcome.get("reason"),
            }
        )
    for message in peek(tool, stack.dlq_url):
        rows.append(
            {
                "kind": "DLQ",
                "id": message["MessageId"],
                "order": _order_label(message["Body"]),
                "since": _iso(int(message["Attributes"]["SentTimestamp"]) / 1000),
                "checks": int(message["Attributes"].get("ApproximateReceiveCount", 0)),
                "reason": dead_letter_reason(tool, stack, message["Body"]),
            }
        )
    if args.json:
        tool.say(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        tool.say("nothing needs attention")
        return EXIT_OK
    columns = ("kind", "id", "order", "since", "checks", "reason")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns[:-1]}
    tool.say("  ".join(c.upper().ljust(widths.get(c, 0)) for c in columns).rstrip())
    for row in rows:
        tool.say("  ".join(str(row[c]).ljust(widths.get(c, 0)) for c in columns).rstrip())
    return EXIT_OK


def _order_label(body: str) -> str:
    try:
        order = parse_order_message(body)
    except InvalidOrder as invalid:
        ids = invalid.identifiers
        return ids.get("out_trade_no") or ids.get("syssn") or "-"
    return order.out_trade_no or order.syssn or "-"


def dead_letter_reason(tool: Tool, stack: Stack, body: str) -> str:
    """Why a message is in the DLQ, as far as the ledger tells (the full reason is in the logs)."""
    try:
        order = parse_order_message(body)
    except InvalidOrder as invalid:
        return f"invalid order ({invalid.reason}): redriving makes it a REJECTED outcome"
    record = ledger_record(tool, stack, order)
    if record is None:
        return "no attempt got as far as the ledger (QFPay unreachable or refusing; see the cancel logs)"
    stage = record.get("stage")
    if stage == LedgerStage.DELIVERED:
        return f"already decided ({record.get('result')}): redriving repeats that answer"
    if stage == LedgerStage.DECIDED:
        return "decided but not delivered: redriving delivers the stored decision"
    return (
        "an attempt was deciding when it failed (QFPay may have been reached; a redrive asks the "
        "Enquiry first)"
    )


# ---------------------------------------------------------------------------------- redrive


def redrive(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    sqs = tool.client("sqs")
    if args.dry_run:
        messages = peek(tool, stack.dlq_url)
        for message in messages:
            label = _order_label(message["Body"])
            tool.say(f"{message['MessageId']}  {label}  {dead_letter_reason(tool, stack, message['Body'])}")
        tool.say(f"{len(messages)} message(s) would be moved to the queue")
        return EXIT_OK
    if args.method in ("auto", "move-task"):
        dlq_arn = _arn(sqs, stack.dlq_url)
        try:
            task = sqs.start_message_move_task(
                SourceArn=dlq_arn,
                DestinationArn=_arn(sqs, stack.queue_url),
                MaxNumberOfMessagesPerSecond=max(1, int(args.rate)),
            )
            return _follow_move_task(tool, dlq_arn, task["TaskHandle"])
        except ClientError as exc:
            unsupported = exc.response["Error"]["Code"] in _NO_MOVE_TASK or (
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (500, 501)
            )
            if args.method == "move-task" or not unsupported:
                raise
            tool.progress("StartMessageMoveTask is not available here: moving message by message")
    return _copy_messages(tool, stack, args.rate, args.max)


def _arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def _follow_move_task(tool: Tool, source_arn: str, handle: str) -> int:
    sqs = tool.client("sqs")
    while True:
        (task,) = [
            t
            for t in sqs.list_message_move_tasks(SourceArn=source_arn)["Results"]
            if t.get("TaskHandle") == handle
        ] or [{}]
        moved, total = (
            task.get("ApproximateNumberOfMessagesMoved", 0),
            task.get("ApproximateNumberOfMessagesToMove"),
        )
        tool.progress(
            f"moved {moved} of {total if total is not None else '?'} ({task.get('Status', 'unknown')})"
        )
        if task.get("Status") in ("COMPLETED", "CANCELLED", "FAILED", None):
            return EXIT_OK if task.get("Status") == "COMPLETED" else EXIT_FAILED
        time.sleep(2)


def _copy_messages(tool: Tool, stack: Stack, rate: float, limit: int | None) -> int:
    """Receive, send to the queue, and only then delete from the DLQ: a message is never lost,
    at worst (a crash between send and delete) it is sent twice, which the ledger absorbs."""
    sqs = tool.client("sqs")
    total = int(
        sqs.get_queue_attributes(QueueUrl=stack.dlq_url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
    )
    moved = failed = 0
    interval = 1 / rate
    while limit is None or moved + failed < limit:
        messages = sqs.receive_message(
            QueueUrl=stack.dlq_url,
            MaxNumberOfMessages=1,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            break
        (message,) = messages
        started = time.monotonic()
        try:
            attributes = message.get("MessageAttributes") or {}
            sqs.send_message(
                QueueUrl=stack.queue_url,
                MessageBody=message["Body"],
                **({"MessageAttributes": attributes} if attributes else {}),
            )
        except ClientError as exc:
            failed += 1
            tool.progress(
                f"not moved {message['MessageId']}: {exc.response['Error']['Code']} (left in the DLQ)"
            )
            continue
        sqs.delete_message(QueueUrl=stack.dlq_url, ReceiptHandle=message["ReceiptHandle"])
        moved += 1
        tool.progress(f"moved {moved} of {total}")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    tool.say(f"moved {moved} message(s) to the queue" + (f", {failed} failed" if failed else ""))
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------- resolve


def resolve(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    """Through the reconcile function: only the service's own roles may publish outcomes."""
    who = args.who or str(tool.client("sts").get_caller_identity()["Arn"])
    request = {"outcome_id": args.outcome_id, "status": args.status, "note": args.note, "who": who}
    outcome = invoke_reconcile(tool, stack, {"resolve": request})
    tool.say(f"{args.outcome_id}: revision {outcome['revision']} {outcome['status']} published ({who})")
    return EXIT_OK


def invoke_reconcile(tool: Tool, stack: Stack, event: dict[str, Any]) -> dict[str, Any]:
    """The reconcile function's answer; its refusal as one line with the matching exit code."""
    answer = tool.client("lambda").invoke(FunctionName=stack.reconcile_function, Payload=json.dumps(event))
    payload = json.loads(answer["Payload"].read() or b"null")
    if "FunctionError" in answer:
        error = payload if isinstance(payload, dict) else {}
        code = {"LookupError": EXIT_NOT_FOUND, "ValueError": EXIT_USAGE}.get(
            str(error.get("errorType")), EXIT_FAILED
        )
        raise Failure(str(error.get("errorMessage") or payload).strip("'\""), code)
    return dict(payload)


# -------------------------------------------------------------------------------- reconcile


def reconcile(tool: Tool, stack: Stack, args: argparse.Namespace) -> int:
    event = {"outcome_id": args.outcome_id} if args.outcome_id else {}
    tool.say(json.dumps(invoke_reconcile(tool, stack, event)))
    return EXIT_OK


# ------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="qfpay-cancellation",
        description="Operate the QFPay cancellation service: look at orders, send one, list what needs a "
        "person, redrive the dead-letter queue, resolve by hand, reconcile now.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--stack", required=True, help="CloudFormation stack name; its outputs name the resources"
    )
    top.add_argument("--endpoint-url", help="AWS endpoint (e.g. the local moto server); default: AWS itself")
    top.add_argument("--region", help="AWS region (default: the profile's or AWS_DEFAULT_REGION)")
    top.add_argument("--profile", help="AWS profile")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def order_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--out-trade-no", help="the merchant's order number")
        command.add_argument("--syssn", help="QFPay's transaction number (when there is no out_trade_no)")
        command.add_argument("--mchid", help="the sub-merchant, if the order names one")

    show_cmd = commands.add_parser("show", help="an order: ledger record, outcome revisions, loop, DLQ")
    order_options(show_cmd)
    show_cmd.add_argument("--outcome-id", help="also the outcome with this id (e.g. from `attention`)")
    show_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    show_cmd.set_defaults(run=show)

    cancel_cmd = commands.add_parser("cancel", help="send one order-timeout message now (validated first)")
    cancel_cmd.add_argument("order", help="the order as JSON, or @FILE")
    cancel_cmd.add_argument(
        "--wait", type=int, default=0, metavar="SECONDS", help="wait for and print the outcome"
    )
    cancel_cmd.set_defaults(run=cancel)

    attention_cmd = commands.add_parser(
        "attention", help="orders needing a person: UNKNOWN after reconciliation, REFUND_REQUIRED, DLQ"
    )
    attention_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    attention_cmd.set_defaults(run=attention)

    redrive_cmd = commands.add_parser(
        "redrive", help="move the dead-letter queue's messages back to the queue"
    )
    redrive_cmd.add_argument(
        "--dry-run", action="store_true", help="list each message and why it is there; move nothing"
    )
    redrive_cmd.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    redrive_cmd.add_argument("--max", type=int, help="move at most this many (message-by-message only)")
    redrive_cmd.add_argument(
        "--method",
        choices=("auto", "move-task", "copy"),
        default="auto",
        help="SQS StartMessageMoveTask, or receive/send/delete; auto: the task where supported",
    )
    redrive_cmd.set_defaults(run=redrive)

    resolve_cmd = commands.add_parser(
        "resolve", help="settle an order by hand; publishes a corrected outcome"
    )
    resolve_cmd.add_argument("outcome_id", help="from `show` or `attention`")
    resolve_cmd.add_argument("--status", required=True, choices=sorted(s.value for s in OPERATOR_STATUSES))
    resolve_cmd.add_argument(
        "--note", required=True, help="what was done (kept in the ledger and the outcome)"
    )
    resolve_cmd.add_argument("--who", help="who resolves it (default: the caller's AWS identity)")
    resolve_cmd.set_defaults(run=resolve)

    reconcile_cmd = commands.add_parser("reconcile", help="run a reconciliation pass now, or check one order")
    reconcile_cmd.add_argument("--outcome-id", help="check this order now, whatever its due time")
    reconcile_cmd.set_defaults(run=reconcile)
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = parser().parse_args(argv)
    run: Callable[[Tool, Stack, argparse.Namespace], int] = args.run
    try:
        session = boto3.session.Session(profile_name=args.profile, region_name=args.region)
        tool = Tool(session, args.endpoint_url, out, err)
        return run(tool, tool.stack(args.stack), args)
    except Failure as failure:
        print(f"qfpay-cancellation: {failure}", file=err)
        return failure.code
    except NoCredentialsError:
        print("qfpay-cancellation: no AWS credentials (set a profile or AWS_ACCESS_KEY_ID)", file=err)
        return EXIT_NO_ACCESS
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = (
            EXIT_NO_ACCESS if error.get("Code") in ("AccessDenied", "AccessDeniedException") else EXIT_FAILED
        )
        print(f"qfpay-cancellation: {error.get('Code')}: {error.get('Message')}", file=err)
        return code
    except BotoCoreError as exc:  # endpoint unreachable, bad region, ...
        print(f"qfpay-cancellation: cannot reach AWS: {exc}", file=err)
        return EXIT_NO_ACCESS


__all__ = ["EXIT_CODES", "main"]
