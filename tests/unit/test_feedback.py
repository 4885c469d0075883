"""User feedback on runs: validated, attributed, one commit with its log entry, counted by stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tests.processes import tether_at_once
from tests.unit.run_records import make_run
from tether import client
from tether.errors import UnknownRunError
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunStatus


def _env(redis_url: str) -> dict[str, str]:
    return dict(os.environ, TETHER_REDIS_URL=redis_url, COLUMNS="200", PYTHONPATH=os.getcwd())


def _tether(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _recent() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def test_feedback_is_recorded_on_the_run_with_its_log_entry(runtime: Runtime) -> None:
    run_id = make_run(runtime.store, "fb-1", created=_recent())
    ttl_before = runtime.store.client.ttl(keys.run(run_id))

    given = client.feedback(run_id, 1, by="alice", comment="spot on", runtime=runtime)
    client.feedback(run_id, -1, by="bob", runtime=runtime)

    state = runtime.store.load(run_id)
    assert state.status == RunStatus.succeeded  # feedback changes nothing else
    assert [(f.score, f.by, f.comment) for f in state.feedback] == [
        (1, "alice", "spot on"),
        (-1, "bob", None),
    ]
    assert state.feedback[0] == given
    logged = [e for _, e in runtime.store.log.read(run_id) if e.kind == "feedback"]
    assert [(e.data["score"], e.data["by"], e.data["feedback_id"]) for e in logged] == [
        (1, "alice", given.feedback_id),
        (-1, "bob", state.feedback[1].feedback_id),
    ]
    # A finished run keeps expiring: the feedback commit sets its expiry again.
    assert 0 < runtime.store.client.ttl(keys.run(run_id)) <= runtime.store.run_ttl_s
    assert ttl_before > 0


def test_a_retried_feedback_counts_once(runtime: Runtime) -> None:
    run_id = make_run(runtime.store, "fb-retry", created=_recent())
    for _ in range(2):
        client.feedback(run_id, 0, by="alice", feedback_id="fb-abc", runtime=runtime)
    assert len(runtime.store.load(run_id).feedback) == 1
    assert [e.kind for _, e in runtime.store.log.read(run_id)].count("feedback") == 1


def test_feedback_on_a_run_in_flight(runtime: Runtime) -> None:
    run_id = make_run(
        runtime.store, "fb-running", created=_recent(), status=RunStatus.running, steps=1
    )
    client.feedback(run_id, -1, by="alice", comment="it is taking ages", runtime=runtime)
    state = runtime.store.load(run_id)
    assert (state.status, state.step, len(state.feedback)) == (RunStatus.running, 1, 1)


def test_invalid_feedback_is_refused(runtime: Runtime) -> None:
    run_id = make_run(runtime.store, "fb-bad", created=_recent())
    with pytest.raises(ValidationError, match="score"):
        client.feedback(run_id, 2, by="alice", runtime=runtime)
    with pytest.raises(ValidationError, match="by"):
        client.feedback(run_id, 1, by="  ", runtime=runtime)
    with pytest.raises(UnknownRunError, match="run_missing"):
        client.feedback("run_missing", 1, by="alice", runtime=runtime)
    assert runtime.store.load(run_id).feedback == []


def test_cli_feedback_runs_show_and_stats(runtime: Runtime, redis_url: str) -> None:
    run_id = make_run(runtime.store, "fb-cli", created=_recent(), steps=3)

    done = _tether(
        redis_url, "feedback", run_id, "--score", "-1", "--by", "dana", "--comment", "wrong order"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"recorded feedback -1 by dana on {run_id}" in done.stdout
    assert _tether(redis_url, "feedback", run_id, "--score", "1", "--by", "eve").returncode == 0
    state = runtime.store.load(run_id)
    assert [(f.score, f.by, f.comment) for f in state.feedback] == [
        (-1, "dana", "wrong order"),
        (1, "eve", None),
    ]

    shown, stats_done = tether_at_once(
        [("runs", "show", run_id), ("stats", "--since", "1h", "--json")], env=_env(redis_url)
    )
    assert "feedback   -1 by dana" in shown.stdout and "wrong order" in shown.stdout
    assert "feedback   +1 by eve" in shown.stdout
    assert "version v1" in shown.stdout

    stats = json.loads(stats_done.stdout)
    assert stats["feedback"] == {
        "count": 2,
        "runs_with_feedback": 1,
        "mean_score": 0.0,
        "by_score": {"-1": 1, "0": 0, "1": 1},
    }


def test_cli_refuses_unknown_runs_and_bad_scores(redis_url: str) -> None:
    # Three refusals, each its own process, started together: none changes anything.
    unknown, bad, empty = tether_at_once(
        [
            ("feedback", "run_nope", "--score", "1", "--by", "eve"),
            ("feedback", "run_nope", "--score", "5", "--by", "eve"),
            ("feedback", "run_nope", "--score", "1", "--by", ""),
        ],
        env=_env(redis_url),
    )
    assert unknown.returncode == 2
    assert "run 'run_nope' does not exist" in unknown.stdout
    assert bad.returncode == 2
    assert "--score" in bad.stderr
    assert empty.returncode == 2
