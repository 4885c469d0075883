"""`tether stats` figures, computed from runs written to a real Redis with known facts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from tests.processes import tether_at_once
from tests.unit.run_records import make_run
from tether import client
from tether.escalation import records
from tether.insights.stats import StatsError, compute, parse_duration, percentile
from tether.runtime import Runtime
from tether.store.state import RunStatus
from tether.transport.wire import ErrorCategory, Escalation, EscalationKind

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def current_window(runtime: Runtime) -> dict[str, str]:
    """Five runs of calc v1 in the last hour, and runs the filters must leave out."""
    store = runtime.store
    at = NOW - timedelta(minutes=50)
    runs = {
        "r1": make_run(store, "r1", created=at, steps=2, tool_calls=1, cost_usd=0.01, latency_s=2),
        "r2": make_run(store, "r2", created=at, steps=2, tool_calls=1, cost_usd=0.01, latency_s=4),
        "r3": make_run(
            store, "r3", created=at, steps=4, tool_calls=3, cost_usd=0.03, latency_s=6, waited_s=30
        ),
        "r4": make_run(
            store,
            "r4",
            created=at,
            status=RunStatus.failed,
            steps=6,
            tool_calls=2,
            cost_usd=0.05,
            latency_s=10,
            error=ErrorCategory.tool_permanent,
        ),
        "r5": make_run(
            store,
            "r5",
            created=NOW - timedelta(minutes=1),
            status=RunStatus.waiting_human,
            steps=1,
            cost_usd=0.002,
            waiting=True,
        ),
    }
    # Left out: another agent, and a run created before the window.
    make_run(store, "other", created=at, agent="other", steps=9, cost_usd=1.0, latency_s=1)
    make_run(store, "old", created=NOW - 2 * HOUR, steps=9, cost_usd=1.0, latency_s=1)
    # r3 escalated earlier in its life; a human decided and it went on to succeed.
    records.open_escalation(
        runtime,
        Escalation(
            escalation_id="esc_r3",
            run_id=runs["r3"],
            agent="calc",
            kind=EscalationKind.approval_required,
            reason="approve the payment",
            created_at=at + timedelta(seconds=1),
        ),
    )
    client.feedback(runs["r1"], 1, by="alice", runtime=runtime)
    client.feedback(runs["r1"], 0, by="bob", comment="slow", runtime=runtime)
    client.feedback(runs["r4"], -1, by="carol", runtime=runtime)
    return runs


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([2.0, 2.0, 4.0, 6.0], 95) == pytest.approx(5.7)
    assert percentile([2.0, 4.0, 6.0, 10.0], 50) == pytest.approx(5.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_parse_duration() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1h") == HOUR
    assert parse_duration("7d") == 7 * DAY
    assert parse_duration("2w") == 14 * DAY
    for bad in ("", "1", "h", "-1h", "0h", "1y"):
        with pytest.raises(StatsError, match="unit"):
            parse_duration(bad)


def test_figures_of_one_window(runtime: Runtime, current_window: dict[str, str]) -> None:
    stats = compute(runtime.store, since=HOUR, agent="calc", now=NOW)

    assert stats.runs.model_dump() == {
        "total": 5,
        "finished": 4,
        "in_flight": 1,
        "by_status": {"failed": 1, "succeeded": 3, "waiting_human": 1},
    }
    assert (stats.success_rate.value, stats.success_rate.succeeded) == (0.75, 3)
    assert stats.success_rate.finished == 4
    assert "succeeded / finished" in stats.success_rate.definition
    # steps of the finished runs: 2, 2, 4, 6
    assert stats.steps.mean == pytest.approx(3.5)
    assert stats.steps.p95 == pytest.approx(5.7)
    # tool calls: 1, 1, 3, 2
    assert stats.steps.tool_calls.mean == pytest.approx(1.75)
    assert stats.steps.tool_calls.p95 == pytest.approx(2.85)
    # cost: 0.01, 0.01, 0.03, 0.05 finished; the run in flight spent 0.002 so far
    assert stats.cost_usd.mean == pytest.approx(0.025)
    # Cost and latency percentiles come from histograms of 16 buckets a doubling.
    assert stats.cost_usd.p95 == pytest.approx(0.047, rel=0.04)
    assert stats.cost_usd.total == pytest.approx(0.102)
    assert stats.cost_usd.tokens_total == 500
    # latency: 2, 4, 6, 10 s
    assert stats.latency_s.p50 == pytest.approx(5.0, rel=0.04)
    assert stats.latency_s.p95 == pytest.approx(9.4, rel=0.04)
    assert stats.latency_s.p99 == pytest.approx(9.88, rel=0.04)
    assert {k: v.model_dump() for k, v in stats.errors.items()} == {
        "tool_permanent": {"count": 1, "rate": 0.25}
    }
    # r3 waited for a human earlier (decided since), r5 waits for one now.
    assert (stats.escalation_rate.escalated, stats.escalation_rate.runs) == (2, 5)
    assert stats.escalation_rate.value == pytest.approx(0.4)
    assert stats.feedback.model_dump() == {
        "count": 3,
        "runs_with_feedback": 2,
        "mean_score": 0.0,
        "by_score": {"-1": 1, "0": 1, "1": 1},
    }
    assert stats.compare is None and stats.drift is None


def test_filters_by_agent_version_and_window(
    runtime: Runtime, current_window: dict[str, str]
) -> None:
    store = runtime.store
    everyone = compute(store, since=HOUR, now=NOW)
    assert everyone.runs.total == 6  # calc's five and other's one; "old" is outside
    assert compute(store, since=HOUR, agent="other", now=NOW).steps.mean == 9
    assert compute(store, since=3 * HOUR, agent="calc", now=NOW).runs.total == 6
    assert compute(store, since=timedelta(minutes=30), agent="calc", now=NOW).runs.total == 1
    assert compute(store, since=HOUR, version="v1", now=NOW).runs.total == 6
    assert compute(store, since=HOUR, version="v2", now=NOW).runs.total == 0
    empty = compute(store, since=HOUR, agent="nobody", now=NOW)
    assert empty.success_rate.value is None and empty.steps.mean is None
    assert empty.escalation_rate.value is None and empty.errors == {}


def test_compare_flags_drift_when_a_new_version_takes_more_steps(runtime: Runtime) -> None:
    store = runtime.store
    before = NOW - DAY - timedelta(minutes=30)
    for i in range(3):
        make_run(store, f"b{i}", created=before, steps=2, cost_usd=0.01, latency_s=3)
    # Today's v2 takes 3 steps instead of 2 (+50%) and 10% more money (under the threshold).
    for i in range(3):
        make_run(
            store,
            f"c{i}",
            created=NOW - timedelta(minutes=30),
            steps=3,
            cost_usd=0.011,
            latency_s=4,
            version="v2",
        )

    stats = compute(store, since=HOUR, agent="calc", compare_to=DAY, now=NOW)

    assert stats.compare is not None and stats.drift is not None
    assert stats.filters.compare_window is not None
    assert stats.filters.compare_window.end == NOW - DAY
    assert (stats.runs.total, stats.compare.runs.total) == (3, 3)
    assert (stats.steps.mean, stats.compare.steps.mean) == (3.0, 2.0)
    assert stats.drift.steps.change == pytest.approx(0.5)
    assert stats.drift.steps.flagged
    assert stats.drift.cost_usd.change == pytest.approx(0.1)
    assert not stats.drift.cost_usd.flagged
    assert stats.drift.success_rate.change == 0.0
    assert not stats.drift.success_rate.flagged
    assert stats.drift.flagged == ["steps"]
    # Split by version, each version stands alone in its window.
    assert compute(store, since=HOUR, version="v2", now=NOW).runs.total == 3
    assert compute(store, since=HOUR, version="v1", now=NOW).runs.total == 0


def test_compare_flags_a_success_rate_drop_and_a_cost_rise(runtime: Runtime) -> None:
    store = runtime.store
    before = NOW - DAY - timedelta(minutes=30)
    for i in range(4):
        make_run(store, f"b{i}", created=before, steps=2, cost_usd=0.01, latency_s=3)
    now_at = NOW - timedelta(minutes=30)
    for i in range(3):
        make_run(store, f"c{i}", created=now_at, steps=2, cost_usd=0.02, latency_s=3)
    make_run(
        store,
        "c3",
        created=now_at,
        status=RunStatus.budget_exhausted,
        steps=2,
        cost_usd=0.02,
        latency_s=3,
        error=ErrorCategory.budget,
    )

    drift = compute(store, since=HOUR, compare_to=DAY, now=NOW).drift

    assert drift is not None
    assert drift.success_rate.change == pytest.approx(-25.0)
    assert drift.cost_usd.change == pytest.approx(1.0)
    assert drift.flagged == ["cost_usd", "success_rate"]


def _env(redis_url: str) -> dict[str, str]:
    return dict(os.environ, TETHER_REDIS_URL=redis_url, COLUMNS="200", PYTHONPATH=os.getcwd())


def test_cli_json_and_table(runtime: Runtime, redis_url: str) -> None:
    store = runtime.store
    recent = datetime.now(UTC) - timedelta(minutes=10)
    ok = make_run(
        store, "cli-ok", created=recent, steps=2, tool_calls=1, cost_usd=0.01, latency_s=2
    )
    make_run(
        store,
        "cli-bad",
        created=recent,
        status=RunStatus.failed,
        steps=4,
        latency_s=6,
        error=ErrorCategory.model_permanent,
    )
    # A day earlier: as dear per run, fewer steps, no failure.
    make_run(store, "cli-then", created=recent - DAY, steps=2, cost_usd=0.005, latency_s=2)
    client.feedback(ok, 1, by="alice", runtime=runtime)

    # Four reads of the same runs, each its own `tether stats` process, started together.
    done, compared_done, table, bad = tether_at_once(
        [
            ("stats", "--agent", "calc", "--since", "1h", "--json"),
            ("stats", "--since", "1h", "--compare-to", "1d", "--json"),
            ("stats", "--since", "1h", "--compare-to", "1d"),
            ("stats", "--since", "yesterday"),
        ],
        env=_env(redis_url),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {
        "runs",
        "success_rate",
        "steps",
        "cost_usd",
        "latency_s",
        "errors",
        "escalation_rate",
        "feedback",
        "filters",
        "rate_limited_s",
        "guardrails",
    }
    assert doc["guardrails"] == {}  # these runs have no guardrails
    assert doc["runs"]["total"] == 2
    assert doc["success_rate"]["value"] == 0.5
    assert doc["steps"]["mean"] == 3.0
    assert doc["cost_usd"]["total"] == pytest.approx(0.01)
    assert doc["errors"] == {"model_permanent": {"count": 1, "rate": 0.5}}
    assert doc["feedback"]["by_score"] == {"-1": 0, "0": 0, "1": 1}
    assert doc["filters"]["agent"] == "calc" and doc["filters"]["since_s"] == 3600

    compared = json.loads(compared_done.stdout)
    assert set(compared) >= {"compare", "drift"}
    assert compared["compare"]["runs"]["total"] == 1
    assert compared["drift"]["flagged"] == ["steps", "success_rate"]

    assert table.returncode == 0, table.stderr
    assert "success rate" in table.stdout and "50.0% (1/2)" in table.stdout
    assert "succeeded / finished runs" in table.stdout
    assert "drift flagged: steps, success_rate" in table.stdout

    assert bad.returncode == 2
    assert "cannot read the duration 'yesterday'" in bad.stdout
