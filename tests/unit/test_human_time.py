"""Human time is not agent time (invariant 8), and an extension goes in with its decision
(invariant 3): issue 22, items 13 and 9, on real Redis without workers.

Time is moved, not slept: a budget hash's clock fields and a record's expiry are set
in the past, or the sweep is handed a ``now`` in the future.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.errors import EscalationClosedError, StaleStateError
from tether.escalation import records, webhooks
from tether.planner import lifecycle, reconcile
from tether.planner.reconcile import expire_escalations
from tether.runtime import Runtime
from tether.store import keys
from tether.store.budgets import Budgets
from tether.store.state import EscalationRecord, RunStatus
from tether.transport.wire import (
    BudgetLimits,
    BudgetRequest,
    Decision,
    Escalation,
    EscalationKind,
    Verdict,
    utcnow,
)


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.observability_agents", "tests.escalation_agents"])


def test_the_wall_clock_stands_still_while_a_human_is_waited_for(runtime: Runtime) -> None:
    budgets = runtime.store.budgets
    now = time.time()
    # Started 900 s ago, waiting for a human for the last 700: 200 s of its own.
    budgets.open("run_paused", BudgetLimits(max_wall_s=300), started_at=now - 900)
    runtime.store.client.hset(keys.budget("run_paused"), "paused_at", repr(now - 700))
    assert budgets.reserve("run_paused", "model:1", steps=1).granted
    (checked,) = budgets._batch.run(lambda pipe: budgets.add_check(pipe, "run_paused"))
    assert Budgets.reservation(checked).granted
    assert 199 < budgets.usage("run_paused").wall_s < 202

    # The wait ended after 700 s: that span is credited, and the clock runs again.
    budgets.open("run_resumed", BudgetLimits(max_wall_s=300), started_at=now - 900)
    runtime.store.client.hset(keys.budget("run_resumed"), "waited_ms", 700_000)
    assert budgets.reserve("run_resumed", "model:1", steps=1).granted
    runtime.store.client.hset(keys.budget("run_resumed"), "waited_ms", 500_000)
    refused = budgets.reserve("run_resumed", "model:2", steps=1)
    assert not refused.granted and refused.limit == "wall_s"


def test_the_commits_that_start_and_end_a_wait_stop_and_credit_the_clock(
    runtime: Runtime,
) -> None:
    run_id = planner.start(runtime, {"event_id": "evt-h1", "agent": "obs_approver", "input": "go"})
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_human and state.waiting_since is not None
    budget = keys.budget(run_id)
    paused = float(runtime.store.client.hget(budget, "paused_at"))
    assert abs(paused - state.waiting_since.timestamp()) < 0.01
    # The wait began ten minutes ago (moved back, not slept).
    runtime.store.client.hset(budget, "paused_at", repr(paused - 600))
    runtime.store.update(
        run_id,
        lambda s: s.model_copy(update={"waiting_since": s.waiting_since - timedelta(seconds=600)}),
    )

    (wait,) = state.awaiting_human
    escalation = wait.escalation(run_id, state.agent)
    records.open_escalation(runtime, escalation)
    decision = Decision(escalation_id=wait.escalation_id, verdict=Verdict.approve, by="ops")
    assert records.decide(runtime, decision) is not None
    planner.resume(runtime, escalation, decision)

    resumed = runtime.store.load(run_id)
    assert resumed.status == RunStatus.waiting_tools and resumed.waiting_since is None
    assert 600 <= resumed.human_wait_s < 610
    assert not runtime.store.client.hexists(budget, "paused_at")
    assert 600_000 <= int(runtime.store.client.hget(budget, "waited_ms")) < 610_000
    assert runtime.store.budgets.usage(run_id).wall_s < 10


def _budget_escalation(runtime: Runtime, run_id: str) -> Escalation:
    runtime.store.budgets.open(run_id, BudgetLimits(max_steps=2))
    escalation = Escalation(
        escalation_id=f"esc_{run_id}_budget_steps",
        run_id=run_id,
        agent="budgeted",
        kind=EscalationKind.budget_exhausted,
        reason="steps ran out",
        budget=BudgetRequest(limit="steps", used=2, max=2, ceiling=5),
    )
    records.open_escalation(runtime, escalation)
    return escalation


def test_an_extension_whose_decision_loses_its_commit_raises_no_limit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = "run_h9lost000000000000"
    escalation = _budget_escalation(runtime, run_id)
    decision = Decision(
        escalation_id=escalation.escalation_id,
        verdict=Verdict.extend,
        by="carol",
        limit="steps",
        extend_by=2,
    )
    write = runtime.store.docs.write

    def another_commit_first(key: str, doc: str, expected_version: int, **kw: Any) -> int:
        # Between the decision's read of the record and its compare-and-set, another
        # writer commits (say, the run ending closes it): this decision must lose whole.
        runtime.store.client.hincrby(key, "version", 1)
        return write(key, doc, expected_version, **kw)

    monkeypatch.setattr(runtime.store.docs, "write", another_commit_first)
    assert records.decide(runtime, decision) is None
    monkeypatch.undo()

    assert runtime.store.budgets.limit(run_id, "steps") == 2
    assert not runtime.store.client.hexists(
        keys.budget(run_id), f"extended:{escalation.escalation_id}"
    )
    assert records.load(runtime, escalation.escalation_id)[0].status == "pending"
    assert not [e for _, e in runtime.store.log.read(run_id) if e.kind == "escalation_decided"]


def test_an_extension_is_written_with_its_decision_once(runtime: Runtime) -> None:
    run_id = "run_h9won0000000000000"
    escalation = _budget_escalation(runtime, run_id)
    decision = Decision(
        escalation_id=escalation.escalation_id,
        verdict=Verdict.extend,
        by="carol",
        limit="steps",
        extend_by=2,
    )
    assert records.decide(runtime, decision) is not None
    assert records.decide(runtime, decision) is not None  # redelivered: the same record
    assert runtime.store.budgets.limit(run_id, "steps") == 4
    assert runtime.store.budgets.reserve(run_id, "model:3", steps=4).granted
    (decided,) = [e for _, e in runtime.store.log.read(run_id) if e.kind == "escalation_decided"]
    assert (decided.data["limit"], decided.data["extend_by"]) == ("steps", 2)
    # A second extender for the same escalation is refused: it was decided.
    other = decision.model_copy(update={"by": "dan"})
    assert records.decide(runtime, other) is None
    assert runtime.store.budgets.limit(run_id, "steps") == 4


def _waiting_run(runtime: Runtime, event_id: str) -> tuple[str, Escalation]:
    run_id = planner.start(runtime, {"event_id": event_id, "agent": "impatient", "input": "go"})
    assert run_id is not None
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "impatient")
    records.open_escalation(runtime, escalation)
    return run_id, escalation


def test_an_escalation_expires_by_its_agents_expiry_and_ends_its_run(runtime: Runtime) -> None:
    run_id, escalation = _waiting_run(runtime, "evt-h2")
    record, _ = records.load(runtime, escalation.escalation_id)
    assert record.expires_at == escalation.created_at + timedelta(seconds=2)

    assert expire_escalations(runtime, now=time.time() - 60) == []  # not due yet
    assert expire_escalations(runtime, now=time.time() + 3) == [escalation.escalation_id]
    assert expire_escalations(runtime, now=time.time() + 3) == []  # once

    state = runtime.store.load(run_id)
    assert state.status == RunStatus.rejected
    assert state.error is not None and state.error.category == "escalation_expired"
    assert f"escalation {escalation.escalation_id}" in state.error.message
    expired, _ = records.load(runtime, escalation.escalation_id)
    assert expired.status == "expired"
    assert not runtime.store.client.zscore(keys.EXPIRING_ESCALATIONS, escalation.escalation_id)
    assert not runtime.store.client.zscore(keys.PENDING_ESCALATIONS, escalation.escalation_id)

    # A decision that comes now is refused, with why, and the run's log says it came.
    late = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    # True whether or not the sweep's second commit has ended the run yet.
    with pytest.raises(EscalationClosedError, match=r"ends rejected \(escalation_expired\)"):
        records.check_decision(expired, late)
    assert records.decide(runtime, late) is None
    refused = [e for _, e in runtime.store.log.read(run_id) if e.kind == "decision_refused"]
    assert refused and "expired" in refused[0].data["reason"]


def test_a_decision_recorded_before_the_expiry_wins(runtime: Runtime) -> None:
    run_id, escalation = _waiting_run(runtime, "evt-h3")
    decision = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    assert records.decide(runtime, decision) is not None

    assert expire_escalations(runtime, now=time.time() + 3) == []
    assert records.load(runtime, escalation.escalation_id)[0].status == "decided"
    assert runtime.store.load(run_id).status == RunStatus.waiting_human  # its resume is due


def test_a_sweep_that_died_after_the_record_expired_ends_the_run_next_time(
    runtime: Runtime,
) -> None:
    run_id, escalation = _waiting_run(runtime, "evt-h4")
    # The record's expiry committed; its sweeper died before ending the run.
    assert records.expire(runtime, escalation.escalation_id, utcnow() + timedelta(seconds=3))
    assert runtime.store.load(run_id).status == RunStatus.waiting_human

    assert expire_escalations(runtime, now=time.time() + 3) == [escalation.escalation_id]
    assert runtime.store.load(run_id).status == RunStatus.rejected


def test_reminders_fall_due_within_the_expiry_window() -> None:
    settings = Settings()
    opened = utcnow()
    record = EscalationRecord(
        escalation=Escalation(
            escalation_id="esc_r",
            run_id="run_r",
            agent="a",
            kind=EscalationKind.approval_required,
            reason="r",
            created_at=opened,
        ),
        expires_at=opened + timedelta(seconds=1000),
    )
    at = opened.timestamp()
    assert webhooks.reminders_due(settings, record, at + 499) == []
    assert webhooks.reminders_due(settings, record, at + 500) == [webhooks.WAITING]
    assert webhooks.reminders_due(settings, record, at + 900) == [
        webhooks.WAITING,
        webhooks.EXPIRING,
    ]
    fixed = Settings(escalation_waiting_after_s=60)
    assert webhooks.reminders_due(fixed, record, at + 60) == [webhooks.WAITING]


def test_a_decision_whose_run_ends_before_it_is_recorded_is_reported_not_approved(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record was pending when the command checked it; the run ended (here: was
    cancelled) before the escalation service recorded the decision. No escalation
    worker runs here, so the decision is never recorded: the command must not say
    `approved`."""
    from typer.testing import CliRunner

    from tether import client
    from tether import runtime as runtime_module
    from tether.cli.main import app

    monkeypatch.setattr(runtime_module, "_runtime", runtime)
    run_id, escalation = _waiting_run(runtime, "evt-h5")
    cancel = threading.Timer(0.5, lambda: client.cancel(run_id, by="ops", runtime=runtime))
    cancel.start()
    try:
        result = CliRunner().invoke(
            app, ["escalations", "approve", escalation.escalation_id, "--by", "ops"]
        )
    finally:
        cancel.join()
    assert "approved" not in result.output
    assert isinstance(result.exception, EscalationClosedError)  # main() exits 2 on it
    assert f"run {run_id} ended cancelled" in str(result.exception)

    # Not recorded and not closed within --wait: said so, exit 3.
    waiting, other = _waiting_run(runtime, "evt-h6")
    result = CliRunner().invoke(
        app, ["escalations", "approve", other.escalation_id, "--by", "ops", "--wait", "0.3"]
    )
    assert result.exit_code == 3 and "not recorded" in result.output
    assert runtime.store.load(waiting).status == RunStatus.waiting_human


def test_one_expiry_that_fails_holds_back_no_other(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 8: an entry whose run is gone, or whose run's commit keeps failing, is
    logged and passed over; the escalations behind it expire in the same sweep."""
    gone_run, gone = _waiting_run(runtime, "evt-h7")
    failing_run, failing = _waiting_run(runtime, "evt-h8")
    run_id, escalation = _waiting_run(runtime, "evt-h9")
    # Due first, in this order: the sweep meets both failures before the healthy one.
    for i, e in enumerate((gone, failing, escalation)):
        runtime.store.client.zadd(keys.EXPIRING_ESCALATIONS, {e.escalation_id: i})
    # Forgotten, or its data expired; a sweeper in another process never saw it.
    runtime.store.client.delete(
        keys.run(gone_run), keys.run_messages(gone_run), keys.run_completed(gone_run)
    )
    runtime.store.known.forget(gone_run)
    finish = lifecycle.finish

    def finish_failing_for_one(rt: Runtime, run: str, *args: Any, **kw: Any) -> Any:
        if run == failing_run:
            raise StaleStateError(f"run {run} kept changing under 20 update attempts")
        return finish(rt, run, *args, **kw)

    monkeypatch.setattr(reconcile, "finish", finish_failing_for_one)
    assert expire_escalations(runtime, now=time.time() + 3) == [escalation.escalation_id]
    assert runtime.store.load(run_id).status == RunStatus.rejected
    # The run that is gone leaves the index; the failing one is tried again later.
    assert runtime.store.client.zscore(keys.EXPIRING_ESCALATIONS, gone.escalation_id) is None
    retry_at = runtime.store.client.zscore(keys.EXPIRING_ESCALATIONS, failing.escalation_id)
    assert retry_at is not None and retry_at > time.time() + 3
    assert runtime.store.load(failing_run).status == RunStatus.waiting_human

    monkeypatch.undo()
    assert expire_escalations(runtime, now=retry_at) == [failing.escalation_id]
    assert runtime.store.load(failing_run).status == RunStatus.rejected


def test_forgetting_a_run_removes_its_escalations_from_the_expiring_index(
    runtime: Runtime,
) -> None:
    from tether.memory.forget import Forgotten, purge_runs

    run_id, escalation = _waiting_run(runtime, "evt-h10")
    report = Forgotten()
    purge_runs(runtime, [run_id], report)
    assert f"{keys.ALL_ESCALATIONS} {escalation.escalation_id}" in report.index_entries
    assert runtime.store.client.zscore(keys.EXPIRING_ESCALATIONS, escalation.escalation_id) is None
