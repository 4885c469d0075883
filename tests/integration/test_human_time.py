"""Human time is not agent time (invariant 8, issue 22 item 13), on real Redis and real
workers: a late approval still runs its tool, an escalation ends by its own expiry, and
deciding one whose run has ended says so and exits non-zero."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from tests.agents import read_ledger
from tests.integration.helpers import pending_escalation, wait_status
from tests.processes import tether_cli
from tether import client
from tether.dev.stack import DevStack
from tether.escalation import records
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunState
from tether.transport.wire import Verdict

ROOT = Path(__file__).resolve().parents[2]


def _cli_env(stack: DevStack) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TETHER_REDIS_URL=stack.redis_url)
    env.pop("TETHER_OPERATOR_TOKEN", None)
    return env


def _age(rt: Runtime, run_id: str, seconds: float) -> None:
    """Move every clock the run recorded ``seconds`` into the past, as if it had started
    that much earlier and waited for its human that much longer: ten minutes pass
    without a ten-minute test. Today's budget hash holds started_at (and, with the fix,
    paused_at, when the wait began); the state holds created_at (and waiting_since)."""
    budget = keys.budget(run_id)
    for field in ("started_at", "paused_at"):
        if rt.store.client.hexists(budget, field):
            rt.store.client.hincrbyfloat(budget, field, -seconds)
    back = timedelta(seconds=seconds)

    def aged(state: RunState) -> RunState:
        update = {"created_at": state.created_at - back}
        since = getattr(state, "waiting_since", None)
        if since is not None:
            update["waiting_since"] = since - back
        return state.model_copy(update=update)

    rt.store.update(run_id, aged)


def test_an_approval_ten_minutes_late_on_a_300s_budget_runs_the_tool(
    stack_runtime: Runtime,
) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "pay acme", budget={"max_wall_s": 300}, runtime=rt)
    record = pending_escalation(rt, run_id)
    wait_status(rt, run_id, "waiting_human")
    _age(rt, run_id, 600)

    client.decide(record.escalation.escalation_id, Verdict.approve, by="ops", runtime=rt)
    state = wait_status(rt, run_id, "succeeded", timeout_s=30)

    assert f"{run_id} acme 500" in read_ledger()
    assert state.human_wait_s >= 600 and state.waiting_since is None
    # What the run itself spent is seconds, not the ten minutes its human took.
    assert rt.store.budgets.usage(run_id).wall_s < 60


def test_an_expired_escalation_ends_its_run_rejected_and_a_late_decision_exits_non_zero(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    rt = stack_runtime
    run_id = client.submit("impatient", "pay acme", runtime=rt)
    record = pending_escalation(rt, run_id)
    escalation_id = record.escalation.escalation_id

    # Nobody decides: the planner's reconciler (every 15 s) finds it expired.
    state = wait_status(rt, run_id, "rejected", timeout_s=60)

    assert state.error is not None and state.error.category == "escalation_expired"
    assert escalation_id in state.error.message and "expired after 2s" in state.error.message
    assert state.partial_result
    expired, _ = records.load(rt, escalation_id)
    assert expired.status == "expired" and expired.decision is None
    assert expired.expires_at is not None
    assert (expired.expires_at - expired.escalation.created_at).total_seconds() == 2.0
    assert escalation_id not in {r.escalation.escalation_id for r in records.list_escalations(rt)}
    kinds = [event.kind for _, event in rt.store.log.read(run_id)]
    assert kinds.index("escalation_expired") < kinds.index("run_finished")
    assert not [line for line in read_ledger() if line.startswith(run_id)]

    late = tether_cli("escalations", "approve", escalation_id, "--by", "ops", env=_cli_env(stack))
    assert late.returncode == 2, late.stdout + late.stderr
    said = " ".join(late.stdout.split())
    assert "already expired" in said and "escalation_expired" in said, said
    assert "approved" not in said
    assert rt.store.load(run_id).status == "rejected"


def test_deciding_the_escalation_of_a_cancelled_run_exits_non_zero_with_why(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "pay acme", runtime=rt)
    escalation_id = pending_escalation(rt, run_id).escalation.escalation_id
    client.cancel(run_id, by="ops", runtime=rt)

    late = tether_cli("escalations", "approve", escalation_id, "--by", "ops", env=_cli_env(stack))

    assert late.returncode == 2, late.stdout + late.stderr
    said = " ".join(late.stdout.split())
    assert "already closed" in said and f"run {run_id} ended cancelled" in said, said
    assert "approved" not in said
    assert not [line for line in read_ledger() if line.startswith(run_id)]
