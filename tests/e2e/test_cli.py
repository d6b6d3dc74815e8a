"""The operators' CLI end to end: each job run against the local pipeline (moto server over HTTP,
the real handlers, the QFPay stand-in), resolving the resources from the stack's outputs as it
would for a deployed stack."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from cancellation.cli import main

from tests.conftest import PipelineFactory
from tests.local.pipeline import Pipeline
from tests.local.qfpay_standin import Transaction

pytestmark = pytest.mark.e2e

ONE_CHECK = {"RECONCILE_CHECKS_AFTER_SECONDS": "0"}  # one re-check, then needs attention
SCRIPT = Path(sys.executable).with_name("qfpay-cancellation")


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


def cli(pipeline: Pipeline, *args: str) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    argv = ["--stack", pipeline.stack.stack_name, "--endpoint-url", pipeline.aws.endpoint_url, *args]
    code = main(argv, out, err)
    return Ran(code, out.getvalue(), err.getvalue())


def txn(n: int, **script: Any) -> Transaction:
    return Transaction(
        syssn=f"2026120600000100{n:04d}",
        out_trade_no=f"OPS-{n:04d}",
        txamt=2000 + n,
        txdtm="2026-12-06 10:00:00",
        pay_type="800101",
        **script,
    )


def test_reconcile_attention_show_and_resolve(pipeline_factory: PipelineFactory) -> None:
    stuck = txn(1, state="unpaid", cancel_respcd="1294")
    with pipeline_factory([stuck], env_overrides=ONE_CHECK) as pipeline:
        pipeline.send(stuck.order_message())
        (unknown,) = pipeline.stack.read_outcomes(wait_seconds=10, expected=1)
        assert unknown["status"] == "UNKNOWN"

        ran = cli(pipeline, "reconcile")
        assert ran.code == 0, ran.err
        assert ran.json() == {"checked": 1, "resolved": 0, "still_unknown": 1}

        listed = cli(pipeline, "attention", "--json")
        assert listed.code == 0, listed.err
        (row,) = listed.json()
        assert (row["kind"], row["id"], row["order"], row["checks"]) == (
            "UNKNOWN",
            unknown["outcome_id"],
            stuck.out_trade_no,
            1,
        )
        assert "1143" in row["reason"]
        table = cli(pipeline, "attention")
        assert table.out.splitlines()[0].split()[:3] == ["KIND", "ID", "ORDER"]
        assert unknown["outcome_id"] in table.out

        shown = cli(pipeline, "show", "--out-trade-no", stuck.out_trade_no, "--json").json()
        # Named by out_trade_no: the payment's syssn (its identity) is learnt from its outcome.
        assert shown["order"] == f"syssn={stuck.syssn}"
        assert shown["ledger"] is not None
        (reconciliation,) = shown["reconciliation"]
        assert (reconciliation["outcome_id"], reconciliation["stage"]) == (
            unknown["outcome_id"],
            "NEEDS_ATTENTION",
        )
        assert [r["status"] for r in reconciliation["revisions"]] == ["UNKNOWN"]
        assert shown["loop"] is None
        assert shown["dead_letters"] == []

        # One order re-checked now, whatever its due time: still unreadable, still needs attention.
        again_checked = cli(pipeline, "reconcile", "--outcome-id", unknown["outcome_id"])
        assert again_checked.code == 0, again_checked.err
        assert again_checked.json() == {"checked": 1, "resolved": 0, "still_unknown": 1}
        assert [r["checks"] for r in cli(pipeline, "attention", "--json").json()] == [2]

        resolved = cli(
            pipeline,
            "resolve",
            unknown["outcome_id"],
            "--status",
            "CANCELLED",
            "--note",
            "cancelled in the merchant portal",
            "--who",
            "ops@example.com",
        )
        assert resolved.code == 0, resolved.err
        (corrected,) = pipeline.stack.read_outcomes(wait_seconds=10, expected=1)
        assert (corrected["outcome_id"], corrected["status"], corrected["revision"]) == (
            unknown["outcome_id"],
            "CANCELLED",
            2,
        )
        assert corrected["reason"] == "resolved by ops@example.com: cancelled in the merchant portal"
        assert cli(pipeline, "attention").out.strip() == "nothing needs attention"
        after = cli(
            pipeline, "show", "--out-trade-no", stuck.out_trade_no, "--outcome-id", unknown["outcome_id"]
        ).out
        assert "revision 2: CANCELLED (operator" in after
        assert "resolved" not in cli(pipeline, "show", "--syssn", "NOSUCH").out

        # Errors: one line each, with the documented exit codes.
        again = cli(pipeline, "resolve", unknown["outcome_id"], "--status", "CANCELLED", "--note", "x")
        assert (again.code, again.err.count("\n")) == (2, 1)
        assert "already resolved" in again.err
        missing = cli(pipeline, "show", "--out-trade-no", "NO-SUCH-ORDER")
        assert (missing.code, missing.err) == (
            3,
            "qfpay-cancellation: no such order: nothing recorded for |out_trade_no=NO-SUCH-ORDER\n",
        )
        assert cli(pipeline, "reconcile", "--outcome-id", "0" * 32).code == 3


def test_cancel_sends_a_validated_order_and_waits_for_its_outcome(pipeline_factory: PipelineFactory) -> None:
    live = txn(2, state="unpaid")
    with pipeline_factory([live]) as pipeline:
        ran = cli(pipeline, "cancel", json.dumps(live.order_message()), "--wait", "30")
        assert ran.code == 0, ran.err
        outcome = ran.json()
        assert (outcome["status"], outcome["out_trade_no"]) == ("CANCELLED", live.out_trade_no)
        assert pipeline.qfpay.cancellations_applied(live.syssn) == 1
        assert f"sent syssn={live.syssn} as message" in ran.err  # the payment's identity

        bad = cli(pipeline, "cancel", json.dumps({**live.order_message(), "txamt": -5}))
        assert bad.code == 2
        assert bad.err.startswith("qfpay-cancellation: invalid order: ")
        assert bad.err.count("\n") == 1
        depth = boto3.client("sqs").get_queue_attributes(
            QueueUrl=pipeline.stack.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        assert depth == "0"  # the invalid order was never sent


def test_redrive_dry_run_lists_reasons_then_moves_every_message(pipeline_factory: PipelineFactory) -> None:
    live = txn(3, state="unpaid")
    with pipeline_factory([live]) as pipeline:
        sqs = boto3.client("sqs")
        # As if they had failed five times: straight into the dead-letter queue.
        sqs.send_message(QueueUrl=pipeline.stack.dlq_url, MessageBody=json.dumps(live.order_message()))
        sqs.send_message(QueueUrl=pipeline.stack.dlq_url, MessageBody='{"out_trade_no": "BROKEN-1"}')

        listed = cli(pipeline, "attention", "--json").json()
        assert sorted((r["kind"], r["order"]) for r in listed) == [
            ("DLQ", "BROKEN-1"),
            ("DLQ", live.out_trade_no),
        ]

        dry = cli(pipeline, "redrive", "--dry-run")
        assert dry.code == 0, dry.err
        lines = dry.out.splitlines()
        assert lines[-1] == "2 message(s) would be moved to the queue"
        assert any("BROKEN-1" in line and "invalid order" in line for line in lines)
        assert any(
            live.out_trade_no in line and "no attempt got as far as the ledger" in line for line in lines
        )
        assert pipeline.dead_letters_count() == 2  # nothing moved

        moved = cli(pipeline, "redrive", "--rate", "20")
        assert moved.code == 0, moved.err
        assert moved.out.strip() == "moved 2 message(s) to the queue"
        assert "moved 2 of 2" in moved.err
        assert pipeline.dead_letters_count() == 0
        outcomes = pipeline.collect_outcomes(expected=2, timeout=30)
        assert sorted(o["status"] for o in outcomes) == ["CANCELLED", "REJECTED"]


def test_the_installed_script_explains_itself_and_fails_in_one_line(
    pipeline_factory: PipelineFactory,
) -> None:
    assert SCRIPT.is_file(), "make install installs the console script (pyproject.toml [project.scripts])"
    helped = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)  # noqa: S603
    assert helped.returncode == 0
    for command in ("show", "cancel", "attention", "redrive", "resolve", "reconcile", "exit codes:"):
        assert command in helped.stdout
    with pipeline_factory() as pipeline:
        endpoint = pipeline.aws.endpoint_url
        absent = subprocess.run(  # noqa: S603
            [str(SCRIPT), "--stack", "no-such-stack", "--endpoint-url", endpoint, "attention"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (absent.returncode, absent.stderr) == (
            3,
            "qfpay-cancellation: stack 'no-such-stack' not found\n",
        )
        bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        bare.update(
            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_DEFAULT_REGION="ap-east-1"
        )
        anonymous = subprocess.run(  # noqa: S603
            [str(SCRIPT), "--stack", pipeline.stack.stack_name, "--endpoint-url", endpoint, "attention"],
            capture_output=True,
            text=True,
            check=False,
            env=bare,
        )
        assert anonymous.returncode == 4
        assert anonymous.stderr.startswith("qfpay-cancellation: no AWS credentials")
        assert anonymous.stderr.count("\n") == 1
