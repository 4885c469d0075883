"""`tether top` on a real Redis with no workers: queues, runs in flight, rates, records."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.unit.run_records import make_run
from tether.cli import render
from tether.cli.main import app
from tether.escalation import records
from tether.insights import top
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import RunStatus
from tether.transport.celery_app import ESCALATIONS_QUEUE, PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import Escalation, EscalationKind, EventKind, TaskEvent

NOW = datetime.now(UTC)


def _finished(runtime: Runtime, run_id: str, status: RunStatus) -> None:
    # What the planner's terminal commit writes to the lifecycle stream.
    runtime.store.log.append(run_id, EventKind.run_finished, 2, status=status)


def _scene(runtime: Runtime) -> tuple[float, float, float]:
    """Runs in every state, three messages waiting to be planned, two pending records.

    Returns when the messages were published (before, after) and the oldest escalation opened.
    """
    store = runtime.store
    # Finished ten minutes ago, outside a 5m window: in the stream, but not in the rates.
    old = make_run(store, "top-old", created=NOW - timedelta(minutes=20), latency_s=1)
    old_ms = int((time.time() - 600) * 1000)
    store.client.xadd(
        keys.LIFECYCLE_STREAM, {"run_id": old, "kind": "run_finished", "step": 2}, id=f"{old_ms}-0"
    )
    for name, status in [
        ("top-q", RunStatus.queued),
        ("top-r1", RunStatus.running),
        ("top-r2", RunStatus.running),
        ("top-t", RunStatus.waiting_tools),
        ("top-h", RunStatus.waiting_human),
    ]:
        make_run(store, name, created=NOW, status=status, steps=1)
    for name, status in [
        ("top-s1", RunStatus.succeeded),
        ("top-s2", RunStatus.succeeded),
        ("top-s3", RunStatus.succeeded),
        ("top-f", RunStatus.failed),
        ("top-b", RunStatus.budget_exhausted),
    ]:
        # Still in the index of unfinished runs, as until the reconciler's next look.
        _finished(runtime, make_run(store, name, created=NOW, status=status, latency_s=3), status)
    assert store.client.zcard(keys.ACTIVE_RUNS) == 11

    before = time.time()
    for i in range(3):
        runtime.publish_event(TaskEvent(event_id=f"top-evt-{i}", agent="calc", input="go"))
    after = time.time()

    opened = time.time() - 900
    for escalation_id, run, kind, at in [
        ("esc_top_old", "top-h", EscalationKind.approval_required, opened),
        ("esc_top_new", "top-r1", EscalationKind.model_uncertain, opened + 840),
    ]:
        records.open_escalation(
            runtime,
            Escalation(
                escalation_id=escalation_id,
                run_id=run_id_for(run),
                agent="calc",
                kind=kind,
                reason="a human decides",
                created_at=datetime.fromtimestamp(at, UTC),
            ),
        )
    return before, after, opened


def test_snapshot_reads_queues_runs_rates_and_escalations(runtime: Runtime) -> None:
    before, after, opened = _scene(runtime)
    now = time.time()
    snap = top.snapshot(runtime, window_s=300, escalation_rows=5, now=now)

    assert [(q.queue, q.depth) for q in snap.queues] == [
        (PLAN_QUEUE, 3),
        (TOOLS_QUEUE, 0),
        (ESCALATIONS_QUEUE, 0),
    ]
    plan_age = snap.queues[0].oldest_age_s
    assert now - after <= plan_age <= now - before
    assert snap.queues[1].oldest_age_s == 0 and snap.queues[2].oldest_age_s == 0

    assert snap.in_flight == {"queued": 1, "running": 2, "waiting_human": 1, "waiting_tools": 1}
    assert snap.in_flight_total == 5

    assert snap.finished.window_s == 300
    assert snap.finished.by_status == {"budget_exhausted": 1, "failed": 1, "succeeded": 3}
    assert snap.finished.total == 5
    assert snap.finished.per_minute == {
        "budget_exhausted": pytest.approx(0.2),
        "failed": pytest.approx(0.2),
        "succeeded": pytest.approx(0.6),
    }

    assert snap.escalations_pending == 2
    assert snap.oldest_escalation_age_s == pytest.approx(now - opened, abs=1e-3)
    assert [(e.escalation_id, e.run_id, e.kind) for e in snap.escalations] == [
        ("esc_top_old", run_id_for("top-h"), "approval_required"),
        ("esc_top_new", run_id_for("top-r1"), "model_uncertain"),
    ]
    assert snap.escalations[0].age_s == pytest.approx(now - opened, abs=1e-3)
    assert snap.escalations[1].age_s == pytest.approx(now - opened - 840, abs=1e-3)

    # A longer window takes in the run that finished ten minutes ago.
    wider = top.snapshot(runtime, window_s=3600, escalation_rows=1, now=now)
    assert wider.finished.by_status == {"budget_exhausted": 1, "failed": 1, "succeeded": 4}
    assert wider.finished.per_minute["succeeded"] == pytest.approx(4 / 60)
    assert [e.escalation_id for e in wider.escalations] == ["esc_top_old"]


def test_an_empty_runtime_shows_zeros(runtime: Runtime) -> None:
    snap = top.snapshot(runtime, window_s=60)
    assert [q.depth for q in snap.queues] == [0, 0, 0]
    assert snap.in_flight == {} and snap.in_flight_total == 0
    assert snap.finished.by_status == {} and snap.finished.total == 0
    assert snap.escalations_pending == 0 and snap.oldest_escalation_age_s == 0
    assert snap.escalations == []


def test_tether_top_once_prints_the_figures(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scene(runtime)
    monkeypatch.setattr("tether.cli.top.runtime", lambda: runtime)
    # Wide enough that no cell is cut; it writes to whatever sys.stdout is, CliRunner's here.
    monkeypatch.setattr(render, "console", Console(width=160, color_system=None))

    done = CliRunner().invoke(app, ["top", "--once", "--window", "5m", "--rows", "1"])

    assert done.exit_code == 0, done.output
    lines = [" ".join(line.replace("│", " ").split()) for line in done.output.splitlines()]
    assert "tether top" in lines[0]
    assert any(line.startswith(f"{PLAN_QUEUE} 3 ") for line in lines), done.output
    assert f"{TOOLS_QUEUE} 0 -" in lines
    assert f"{ESCALATIONS_QUEUE} 0 -" in lines
    assert "runs in flight: 5" in lines
    for row in ("queued 1", "running 2", "waiting_tools 1", "waiting_human 1"):
        assert row in lines, row
    assert "finished in the last 5.0m: 5" in lines
    for row in ("succeeded 3 0.60", "failed 1 0.20", "budget_exhausted 1 0.20"):
        assert row in lines, row
    assert "pending escalations: 2, oldest 15.0m" in lines
    assert f"esc_top_old {run_id_for('top-h')} calc approval_required 15.0m" in lines
    assert not any("esc_top_new" in line for line in lines)


def test_tether_top_refuses_a_bad_interval(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.cli.top.runtime", lambda: runtime)
    done = CliRunner().invoke(app, ["top", "--once", "--interval", "0"])
    assert done.exit_code == 2
