"""Shadow runs and earned autonomy on real workers, with a stack that loads their agents."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import read_ledger
from tests.integration.helpers import kinds, pending_escalation, wait_for, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.escalation import records
from tether.rollout.autonomy import PolicyView
from tether.rollout.shadow import ShadowReport, report, shadow_event_id
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.transport.wire import TaskEvent, Verdict

MODULES = ["tests.evaluation_agents", "tests.shadow_approval_agents"]


@pytest.fixture(scope="module")
def eval_stack(ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Its own Redis: the session stack's workers do not know these agents.
    with started_stack(
        DevStack(
            agent_modules=MODULES,
            log_dir=Path(tmp_path_factory.mktemp("eval-worker-logs")),
            env={"LEDGER_DIR": str(ledger_dir)},
        )
    ) as running:
        yield running


@pytest.fixture(scope="module")
def rt(eval_stack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=eval_stack.redis_url))


def cli(stack: DevStack, *args: str) -> str:
    env = {**stack.env(), "TETHER_AGENT_MODULES": json.dumps(MODULES)}
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_shadow_runs_without_side_effects_budget_or_humans(
    rt: Runtime, eval_stack: DevStack
) -> None:
    event_id = f"shadow-{uuid.uuid4().hex[:8]}"
    primary_id = client.submit(
        "shadow_primary", "Where is order 1001?", event_id=event_id, runtime=rt
    )
    shadow_id = run_id_for(shadow_event_id("shadow_candidate", event_id))
    primary = wait_status(rt, primary_id, "succeeded")
    shadowed = wait_status(rt, shadow_id, "succeeded")

    assert shadowed.primary_run_id == primary_id and primary.primary_run_id is None
    # The candidate refunded and emailed, in shadow: neither left a line in the ledger.
    assert [line for line in read_ledger() if line.startswith(shadow_id)] == []
    outcomes = {o.tool: (o.ok, o.output, o.error) for o in shadowed.completed_actions}
    assert outcomes["lookup_order"] == (True, "order 1001: shipped", None)
    assert outcomes["issue_refund"] == (True, "would refund 500 on 1001", None)
    ok, _, error = outcomes["send_email"]
    assert not ok and error is not None and "was not run: this is a shadow run" in error
    trace = [e for _, e in rt.store.log.read(shadow_id)]
    assert [(e.data["tool"], e.data["mode"]) for e in trace if e.kind == "shadow_tool"] == [
        ("issue_refund", "dry_run"),
        ("send_email", "not_run"),
    ]
    assert [e.data["tool"] for e in trace if e.kind == "auto_approved"] == ["issue_refund"]
    # No human was asked, and the primary's budget counts only its own work.
    assert "escalation_opened" not in kinds(rt, shadow_id)
    assert [r for r in records.list_escalations(rt) if r.escalation.run_id == shadow_id] == []
    primary_usage, shadow_usage = (
        rt.store.budgets.usage(primary_id),
        rt.store.budgets.usage(shadow_id),
    )
    assert (primary_usage.steps, primary_usage.tool_calls) == (2, 1)
    assert (shadow_usage.steps, shadow_usage.tool_calls) == (4, 3)

    # A redelivered event starts no second shadow.
    rt.publish_event(
        TaskEvent(event_id=event_id, agent="shadow_primary", input="Where is order 1001?")
    )
    wait_status(rt, primary_id, "succeeded")
    wait_for(lambda: "duplicate_event" in kinds(rt, shadow_id), what="the shadow's duplicate")
    assert rt.store.load(shadow_id).step == shadowed.step

    found = report(rt, agent="shadow_primary")
    (compared,) = [c for c in found.comparisons if c.event_id == event_id]
    assert compared.finished and not compared.actions_agree and not compared.outcome_agree
    assert compared.differences == [
        'actions: primary [\'lookup_order({"order_id": "1001"})\'], shadow '
        '[\'lookup_order({"order_id": "1001"})\', '
        '\'issue_refund({"cents": 500, "order_id": "1001"})\', '
        '\'send_email({"to": "customer@example.com"})\']',
        "result: primary 'order 1001 has shipped', shadow 'order 1001 refunded'",
        "steps: primary 2, shadow 4",
    ]
    assert compared.shadow is not None and compared.primary is not None
    assert [a.handled for a in compared.shadow.actions] == ["live", "dry_run", "not_run"]
    assert (compared.primary.cost_usd, compared.shadow.cost_usd) == (0.0, 0.0)
    assert compared.primary.latency_s > 0 and compared.shadow.latency_s > 0

    shown = ShadowReport.model_validate_json(
        cli(eval_stack, "shadow", "report", "--agent", "shadow_candidate", "--json")
    )
    assert [c.differences for c in shown.comparisons if c.event_id == event_id] == [
        compared.differences
    ]
    assert shown.summary.fully_agree == 0 and shown.summary.agreement == 0.0
    table = cli(eval_stack, "shadow", "report", "--agent", "shadow_primary")
    # Rich wraps the table to the terminal; the summary line is what a reader checks.
    assert "actions agree 0, outcome agrees 0, fully agree 0" in table


def test_a_shadow_never_runs_a_safe_read_that_needs_approval(
    rt: Runtime, eval_stack: DevStack
) -> None:
    # export_customers is idempotent and safe_in_shadow, but approval-required: the
    # approval outranks the safe mark, so the shadow's call is held back, not run.
    event_id = f"shadow-approval-{uuid.uuid4().hex[:8]}"
    primary_id = client.submit(
        "approval_primary", "Anything to export?", event_id=event_id, runtime=rt
    )
    shadow_id = run_id_for(shadow_event_id("approval_candidate", event_id))
    wait_status(rt, primary_id, "succeeded")
    shadowed = wait_status(rt, shadow_id, "succeeded")

    assert [line for line in read_ledger() if line.startswith(shadow_id)] == []
    (outcome,) = shadowed.completed_actions
    assert outcome.tool == "export_customers" and not outcome.ok
    assert outcome.error is not None and "was not run: this is a shadow run" in outcome.error
    trace = [e for _, e in rt.store.log.read(shadow_id)]
    assert [(e.data["tool"], e.data["mode"]) for e in trace if e.kind == "shadow_tool"] == [
        ("export_customers", "not_run")
    ]


def _pay(rt: Runtime, cents: int) -> str:
    return client.submit("earning_payer", str(cents), runtime=rt)


def _approve_next(rt: Runtime, run_id: str, verdict: Verdict = Verdict.approve) -> None:
    record = pending_escalation(rt, run_id)
    client.decide(
        record.escalation.escalation_id, verdict, by="alice", reason="checked", runtime=rt
    )


def test_earned_autonomy_end_to_end(rt: Runtime, eval_stack: DevStack) -> None:
    # earning_payer: EarnedAutonomy(after=2, sample=0.0).
    for _ in range(2):
        run_id = _pay(rt, 100)
        _approve_next(rt, run_id)
        wait_status(rt, run_id, "succeeded")

    earned = _pay(rt, 300)
    wait_status(rt, earned, "succeeded")
    (auto,) = [e for _, e in rt.store.log.read(earned) if e.kind == "auto_approved"]
    assert (auto.data["tool"], auto.data["mode"], auto.data["streak"]) == ("pay", "earned", 2)
    assert "2 approvals in a row (needs 2)" in auto.data["reason"]
    assert "escalation_opened" not in kinds(rt, earned)
    assert f"{earned} pay acme 300" in read_ledger()

    # Automatically approved, the tool fails: that tightens the policy.
    failing = _pay(rt, -5)
    wait_status(rt, failing, "succeeded")
    assert "auto_approved" in kinds(rt, failing)
    (view,) = [
        PolicyView.model_validate(v)
        for v in json.loads(cli(eval_stack, "escalations", "policy", "--json"))
        if v["agent"] == "earning_payer"
    ]
    assert (view.mode, view.record.streak, view.record.failures) == ("supervised", 0, 1)
    assert view.record.last_failure is not None
    assert "cannot pay -5 cents" in view.record.last_failure.reason

    # Back to asking; a rejection keeps it tight.
    asked = _pay(rt, 400)
    record = pending_escalation(rt, asked)
    assert "earned autonomy: 0 of 2 approvals in a row" in record.escalation.reason
    _approve_next(rt, asked, Verdict.reject)
    wait_status(rt, asked, "rejected")
    assert not any(line.startswith(asked) for line in read_ledger())
    (view,) = [
        PolicyView.model_validate(v)
        for v in json.loads(
            cli(eval_stack, "escalations", "policy", "--agent", "earning_payer", "--json")
        )
    ]
    assert (view.mode, view.record.streak, view.record.rejections) == ("supervised", 0, 1)
    assert "tightened at" in view.why and "alice: checked" in view.why
