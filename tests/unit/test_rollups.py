"""Stats from the rollups equal stats from every run's record, and a run's ending counts once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.run_records import make_run
from tether import client, planner
from tether.insights import rollups as rollup_reads
from tether.insights.figures import Window, WindowStats
from tether.insights.stats import compute, read_runs, summarize
from tether.runtime import Runtime
from tether.store import keys, rollups
from tether.store.state import RunStatus
from tether.transport.wire import ErrorCategory

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ENDED = [s for s in RunStatus if s.terminal]
RUNNING = [RunStatus.running, RunStatus.waiting_tools, RunStatus.waiting_human]


def _random_runs(runtime: Runtime, seed: int) -> set[str]:
    """Runs of three agents and two versions over three hours; returns those that waited."""
    rng = random.Random(seed)
    waited: set[str] = set()
    for i in range(rng.randint(20, 45)):
        status = rng.choice(ENDED + RUNNING) if rng.random() < 0.85 else RunStatus.running
        waits = rng.random() < 0.2
        run_id = make_run(
            runtime.store,
            f"s{seed}-{i}",
            created=NOW - timedelta(seconds=rng.uniform(0, 3 * 3600)),
            status=status,
            steps=rng.randint(0, 9),
            tool_calls=rng.randint(0, 5),
            cost_usd=rng.choice([0.0, rng.uniform(0.0001, 0.5)]),
            latency_s=rng.uniform(0.05, 900),
            error=rng.choice([None, *ErrorCategory]) if status != RunStatus.succeeded else None,
            waiting=status == RunStatus.waiting_human,
            agent=rng.choice(["calc", "support", "eval:calc"]),
            version=rng.choice(["v1", "v2"]),
            waited_s=rng.uniform(1, 60) if waits else 0.0,
        )
        if waits or status == RunStatus.waiting_human:
            waited.add(run_id)
        for n in range(rng.choice([0, 0, 1, 2])):
            client.feedback(run_id, rng.choice([-1, 0, 1]), by=f"p{n}", runtime=runtime)
    return waited


def _assert_same(rolled: WindowStats, exact: WindowStats) -> None:
    """Counts, sums and step percentiles exactly; cost and latency percentiles within
    their histogram buckets (2**(1/16), about 4.4%), floats up to rounding."""
    assert rolled.runs == exact.runs
    assert rolled.success_rate == exact.success_rate
    assert rolled.steps == exact.steps
    assert rolled.errors == exact.errors
    assert rolled.escalation_rate == exact.escalation_rate
    assert rolled.feedback == exact.feedback
    assert rolled.cost_usd.tokens_total == exact.cost_usd.tokens_total
    assert rolled.cost_usd.total == pytest.approx(exact.cost_usd.total, rel=1e-6, abs=1e-8)
    if exact.cost_usd.mean is None:
        assert rolled.cost_usd.mean is None
    else:
        assert rolled.cost_usd.mean == pytest.approx(exact.cost_usd.mean, rel=1e-6, abs=1e-8)
    for got, want in [
        (rolled.cost_usd.p95, exact.cost_usd.p95),
        (rolled.latency_s.p50, exact.latency_s.p50),
        (rolled.latency_s.p95, exact.latency_s.p95),
        (rolled.latency_s.p99, exact.latency_s.p99),
    ]:
        assert (got is None) == (want is None)
        if want is not None and got is not None:
            # Between two runs' values, each read back within its own bucket.
            assert got == pytest.approx(want, rel=0.045, abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_what_every_run_computes(runtime: Runtime, seed: int) -> None:
    waited = _random_runs(runtime, seed)
    store = runtime.store
    for since, agent, version, include_eval in [
        (3 * HOUR, None, None, True),
        (HOUR, None, None, False),
        (timedelta(minutes=97), "calc", None, True),
        (2 * HOUR, "support", "v2", True),
    ]:
        rolled = compute(
            store,
            since=since,
            agent=agent,
            version=version,
            include_eval=include_eval,
            now=NOW,
        )
        exact = summarize(
            read_runs(
                store,
                rolled.filters.window,
                agent=agent,
                version=version,
                escalated=waited,
                include_eval=include_eval,
            )
        )
        assert exact.runs.total > 0
        _assert_same(rolled, exact)


def test_a_redelivered_ending_counts_once(runtime: Runtime) -> None:
    """The end commit writes the rollups; ending the run again (a redelivered message,
    another worker racing it) loses the fenced commit and counts nothing."""
    started = datetime.now(UTC) - timedelta(seconds=30)
    run_id = make_run(
        runtime.store, "once", created=started, status=RunStatus.running, steps=3, cost_usd=0.02
    )
    for _ in range(3):
        planner.finish(runtime, run_id, 3, RunStatus.succeeded, None, result="42")

    stats = compute(runtime.store, since=HOUR)

    assert stats.runs.model_dump() == {
        "total": 1,
        "finished": 1,
        "in_flight": 0,
        "by_status": {"succeeded": 1},
    }
    assert stats.steps.mean == 3
    assert stats.cost_usd.total == pytest.approx(0.02)
    assert stats.latency_s.p50 == pytest.approx(30, rel=0.05)
    hour = rollups.bucket_start(started, rollups.HOUR_S)
    (counts,) = rollups.read_buckets(runtime.store.client, [("h", hour)])
    assert counts[rollups.field("calc", "v1", "ended")] == "1"


def test_feedback_on_a_run_in_flight_counts_once_when_it_ends(runtime: Runtime) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    run_id = make_run(runtime.store, "fb", created=started, status=RunStatus.running)
    client.feedback(run_id, 1, by="ana", feedback_id="f1", runtime=runtime)
    client.feedback(run_id, 1, by="ana", feedback_id="f1", runtime=runtime)  # a retry
    assert compute(runtime.store, since=HOUR).feedback.count == 1

    planner.finish(runtime, run_id, None, RunStatus.succeeded, None, result="ok")

    stats = compute(runtime.store, since=HOUR)
    assert (stats.runs.finished, stats.runs.in_flight) == (1, 0)
    assert (stats.feedback.count, stats.feedback.runs_with_feedback) == (1, 1)


def test_cover_takes_whole_hours_and_minutes_at_the_edges() -> None:
    start = int(NOW.timestamp()) - 2 * 3600 - 120
    buckets = rollups.cover(start, int(NOW.timestamp()) + 60)
    assert [g for g, _ in buckets] == ["m", "m", "h", "h", "m"]
    assert buckets[2][1] == start + 120
    window = rollup_reads.aligned(NOW - timedelta(seconds=30), NOW + timedelta(seconds=1))
    assert window == Window(start=NOW - timedelta(minutes=1), end=NOW + timedelta(minutes=1))


def test_an_ended_run_left_in_the_unfinished_index_counts_once_and_leaves_it(
    runtime: Runtime,
) -> None:
    ended = make_run(runtime.store, "ended", created=NOW - timedelta(minutes=5), latency_s=3)
    running = make_run(
        runtime.store, "running", created=NOW - timedelta(minutes=5), status=RunStatus.running
    )
    client_ = runtime.store.client
    assert client_.zscore(keys.ACTIVE_RUNS, ended) is not None  # the sweep has not met it

    stats = compute(runtime.store, since=HOUR, now=NOW)

    assert (stats.runs.total, stats.runs.finished, stats.runs.in_flight) == (2, 1, 1)
    assert client_.zscore(keys.ACTIVE_RUNS, ended) is None
    assert client_.zscore(keys.ACTIVE_RUNS, running) is not None
