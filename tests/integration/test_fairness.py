"""Fairness and priority through real workers: one tenant's backlog does not hold back
another's runs, interactive events start before waiting batch ones, the caps hold at
every moment, and an event waiting for capacity survives a dead worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from tests.stacks import started_stack
from tests.unit.test_admission import Published, event
from tether import client
from tether.config import Settings
from tether.dev.redis_server import LocalCluster
from tether.dev.stack import DevStack
from tether.planner import admission
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import RunState, RunStatus

MAX_IN_FLIGHT = 4
TENANT_CAP = 3
# Seconds within which a run of a tenant with nothing in flight must start behind
# another tenant's backlog of 500. Its start message reaches intake after theirs (the
# planner's queue is FIFO), each of which waits in one script: 1.1-1.3 s measured on a
# two-core machine, 11 s when it was busy with several other test runs.
PROMPT_S = 20.0


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = Path(tmp_path_factory.mktemp("fairness-logs"))
    with started_stack(
        DevStack(
            agent_modules=["tests.fairness_agents"],
            log_dir=logs,
            env={
                "TETHER_MAX_RUNS_IN_FLIGHT": str(MAX_IN_FLIGHT),
                "TETHER_TENANT_DEFAULT_MAX_RUNS": str(TENANT_CAP),
                "TETHER_TENANT_MAX_RUNS": '{"solo": 1}',
                "TETHER_BATCH_EVERY": "4",
                "TETHER_RECONCILE_INTERVAL_S": "1",
            },
        )
    ) as running:
        yield running


@pytest.fixture(scope="module")
def frt(fstack: DevStack) -> Runtime:
    return Runtime(
        Settings(
            redis_url=fstack.redis_url,
            max_runs_in_flight=MAX_IN_FLIGHT,
            tenant_default_max_runs=TENANT_CAP,
            tenant_max_runs={"solo": 1},
        )
    )


def submit(rt: Runtime, tenant: str, seconds: float, priority: str = "interactive") -> str:
    return client.submit(
        "paced",
        f"pause {seconds}",
        metadata={"tenant": tenant},
        priority=priority,
        runtime=rt,
    )


def finished(rt: Runtime, run_ids: list[str], timeout_s: float) -> list[RunState]:
    deadline = time.monotonic() + timeout_s
    states = [
        client.wait(r, timeout_s=max(0.1, deadline - time.monotonic()), runtime=rt) for r in run_ids
    ]
    assert [s.status for s in states] == [RunStatus.succeeded] * len(states)
    return states


def most_at_once(states: list[RunState]) -> int:
    """The most runs in flight at one moment, from their created and finished times."""
    edges: list[tuple[datetime, int]] = []
    for s in states:
        assert s.finished_at is not None
        edges += [(s.created_at, 1), (s.finished_at, -1)]
    # An end and a start at the same instant: the end first (its slot came back).
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(300)
def test_a_small_tenant_starts_while_a_big_backlog_drains_and_caps_hold(frt: Runtime) -> None:
    big = [submit(frt, "a", 0.02) for _ in range(500)]
    published = time.time()
    small = [submit(frt, "b", 0.02) for _ in range(5)]

    small_states = finished(frt, small, timeout_s=60)
    waits = [s.created_at.timestamp() - published for s in small_states]
    assert max(waits) < PROMPT_S, f"tenant b's runs waited {waits}s behind tenant a's backlog"
    big_states = finished(frt, big, timeout_s=200)
    last_small = max(s.created_at for s in small_states)
    # b's runs went in while a's backlog drained, not after it.
    assert sum(s.created_at > last_small for s in big_states) > 250
    big_waits = sorted(s.created_at.timestamp() - published for s in big_states)
    assert max(waits) < big_waits[len(big_waits) // 2]

    assert most_at_once(big_states) == TENANT_CAP  # the cap was reached, never passed
    assert most_at_once(small_states) <= TENANT_CAP
    assert most_at_once(big_states + small_states) <= MAX_IN_FLIGHT
    assert admission.in_flight(frt) == {}  # every slot given back
    assert admission.waiting(frt) == {"interactive": 0, "batch": 0}


def test_an_interactive_event_starts_before_waiting_batch_ones(frt: Runtime) -> None:
    # Every slot taken by slow runs of two tenants.
    blockers = [submit(frt, "x", 2.0) for _ in range(TENANT_CAP)] + [submit(frt, "y", 2.0)]
    wait_for(lambda: sum(admission.in_flight(frt).values()) == MAX_IN_FLIGHT, 20, "slots taken")
    batch = [submit(frt, "lo", 0.01, "batch") for _ in range(5)]
    urgent = submit(frt, "hi", 0.01)
    wait_for(lambda: admission.waiting(frt) == {"interactive": 1, "batch": 5}, 20, "six waiting")

    finished(frt, blockers, timeout_s=30)
    batch_states = finished(frt, batch, timeout_s=30)
    (urgent_state,) = finished(frt, [urgent], timeout_s=30)
    before = [s for s in batch_states if s.created_at < urgent_state.created_at]
    # At most one of every TETHER_BATCH_EVERY starts goes to batch while interactive waits.
    assert len(before) <= 1, f"{len(before)} batch runs started before the interactive one"
    assert most_at_once([*batch_states, urgent_state]) <= MAX_IN_FLIGHT


def test_the_reconciler_gives_back_a_slot_its_worker_died_holding(
    frt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = submit(frt, "solo", 30.0)
    wait_for(lambda: admission.in_flight(frt).get("solo") == 1, 20, "the slow run admitted")
    queued = submit(frt, "solo", 0.01)
    wait_for(lambda: admission.waiting(frt)["interactive"] == 1, 20, "the event waiting")
    # This process ends the run and dies, as it were, before giving its slot back.
    monkeypatch.setattr(admission, "release", lambda rt, event_id: [])
    ended = client.cancel(slow, runtime=frt)
    assert ended is not None and ended.finished_at is not None
    assert admission.in_flight(frt) == {"solo": 1}

    (queued_state,) = finished(frt, [queued], timeout_s=45)
    # The planner's reconciler (every second here) gave the slot back and started it.
    assert (queued_state.created_at - ended.finished_at).total_seconds() < 10
    assert admission.in_flight(frt) == {}


def test_a_waiting_event_survives_a_killed_planner(fstack: DevStack, frt: Runtime) -> None:
    slow = submit(frt, "solo", 3.0)
    wait_for(lambda: admission.in_flight(frt).get("solo") == 1, 20, "the slow run admitted")
    queued = submit(frt, "solo", 0.01)
    wait_for(lambda: admission.waiting(frt)["interactive"] == 1, 20, "the event waiting")
    os.killpg(fstack.workers["planner"].pid, signal.SIGKILL)
    fstack.workers["planner"].wait()
    fstack.start_worker("planner")
    fstack.wait_ready(["planner"], 60)

    slow_state, queued_state = finished(frt, [slow, queued], timeout_s=60)
    assert slow_state.finished_at is not None
    assert queued_state.created_at >= slow_state.finished_at  # solo's cap is 1


def test_admission_runs_on_a_redis_cluster(redis_url: str) -> None:
    """Every admission key shares one slot: the script runs there, the sweep beside it."""
    with LocalCluster(nodes=3) as cluster:
        rt = Runtime(
            Settings(
                redis_url=cluster.url,
                redis_cluster=True,
                broker_url=redis_url,
                tenant_default_max_runs=1,
            )
        )
        published = Published(rt)
        first, second = event("a"), event("a")
        assert admission.admit(rt, first).starts
        assert not admission.admit(rt, second).starts
        rt.store.client.hset(keys.run(run_id_for(first.event_id)), "status", "succeeded")
        assert admission.sweep(rt, checked_before=10.0**10, lost_before=0) == [
            f"event {second.event_id}"
        ]
        assert published.ids() == [second.event_id]
        assert admission.in_flight(rt) == {"a": 1}
