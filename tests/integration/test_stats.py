"""`tether stats --json` and feedback against runs that real workers ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.helpers import wait_status
from tether import client
from tether.runtime import Runtime
from tether.store.rollups import bucket_value, log_bucket


def _tether(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TETHER_REDIS_URL=redis_url, COLUMNS="200", PYTHONPATH=os.getcwd())
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stats_match_the_runs_workers_ran(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    url = rt.settings.redis_url
    succeeded = [client.submit("stats_probe", "What is 2 + 3?", runtime=rt) for _ in range(2)]
    # One step allowed, two needed: the run ends budget_exhausted after its tool call.
    exhausted = client.submit("stats_probe", "What is 2 + 3?", budget={"max_steps": 1}, runtime=rt)
    states = [wait_status(rt, run_id, "succeeded") for run_id in succeeded]
    states.append(wait_status(rt, exhausted, "budget_exhausted"))
    assert {s.agent_version for s in states} == {"probe-v1"}
    started = [e for _, e in rt.store.log.read(exhausted) if e.kind == "run_started"]
    assert started[0].data["agent_version"] == "probe-v1"

    client.feedback(succeeded[0], 1, by="alice", comment="right answer", runtime=rt)
    given = _tether(url, "feedback", exhausted, "--score", "-1", "--by", "bob")
    assert given.returncode == 0, given.stdout + given.stderr

    done = _tether(url, "stats", "--agent", "stats_probe", "--since", "1h", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)

    assert stats["filters"]["agent"] == "stats_probe"
    assert stats["runs"] == {
        "total": 3,
        "finished": 3,
        "in_flight": 0,
        "by_status": {"budget_exhausted": 1, "succeeded": 2},
    }
    assert stats["success_rate"]["value"] == pytest.approx(2 / 3)
    steps = [s.step for s in states]
    tool_calls = [len(s.completed_actions) for s in states]
    assert steps[:2] == [2, 2]  # model, tool, model: two planning steps each
    assert stats["steps"]["mean"] == pytest.approx(sum(steps) / 3)
    assert stats["steps"]["tool_calls"]["mean"] == pytest.approx(sum(tool_calls) / 3)
    usages = [rt.store.budgets.usage(s.run_id) for s in states]
    assert stats["cost_usd"]["total"] == pytest.approx(sum(u.cost_usd for u in usages))
    assert stats["cost_usd"]["tokens_total"] == sum(u.tokens for u in usages)
    assert stats["cost_usd"]["tokens_total"] > 0
    latencies = sorted(
        (s.finished_at - s.created_at).total_seconds() for s in states if s.finished_at
    )
    # Latency is rolled up in log buckets: the p50 is its bucket's value, within about 2%.
    assert stats["latency_s"]["p50"] == pytest.approx(bucket_value(log_bucket(latencies[1])))
    assert stats["errors"] == {"budget": {"count": 1, "rate": pytest.approx(1 / 3)}}
    assert stats["escalation_rate"]["value"] == 0.0
    assert stats["feedback"] == {
        "count": 2,
        "runs_with_feedback": 2,
        "mean_score": 0.0,
        "by_score": {"-1": 1, "0": 0, "1": 1},
    }
    by_version = json.loads(_tether(url, "stats", "--version", "probe-v1", "--json").stdout)
    assert by_version["runs"]["total"] == 3
    shown = _tether(url, "runs", "show", exhausted)
    assert "feedback   -1 by bob" in shown.stdout and "version probe-v1" in shown.stdout
