"""Forking a run from step N: a new run from the original's state at that step, through
intake, with no tool of the steps before N run again. Real planner, executor and
escalation workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

from tests.agents import read_ledger
from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tether import client
from tether.memory import forget
from tether.planner.fork import forks_of, planned_steps
from tether.query.timeline import timeline
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import EventKind, Verdict


def _paid(rt: Runtime) -> str:
    """A payer run that called its non-idempotent tool once (approved) and succeeded."""
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    record = pending_escalation(rt, run_id)
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_status(rt, run_id, "succeeded")
    return run_id


def test_a_fork_after_a_non_idempotent_call_does_not_run_it_again(
    stack_runtime: Runtime,
) -> None:
    rt = stack_runtime
    original = _paid(rt)
    steps = planned_steps([e for _, e in rt.store.log.read(original)])
    assert len(steps) == 2  # the step that called the tool, and the one that answered

    fork_run, _ = client.fork(original, steps[-1], runtime=rt)
    forked = wait_status(rt, fork_run, "succeeded")

    assert forked.result == "paid acme 500 cents"
    assert forked.forked_from is not None
    assert (forked.forked_from.run_id, forked.forked_from.step) == (original, steps[-1])
    # The payment came along as the original recorded it, not as a new call: in the
    # messages the fork started with, named in its start entry, not counted as its own.
    assert forked.completed_actions == []
    assert any(m.role == "tool" and "paid 500" in (m.content or "") for m in forked.messages)
    (started,) = [e for _, e in rt.store.log.read(fork_run) if e.kind == EventKind.run_started]
    paid = [o.action_id for o in rt.store.load(original).completed_actions]
    assert started.data["carried_actions"] == paid
    assert [line for line in read_ledger() if line.startswith(fork_run)] == []
    assert [line for line in read_ledger() if line.startswith(original)] == [f"{original} acme 500"]
    fork_kinds = [e.kind for _, e in rt.store.log.read(fork_run)]
    assert EventKind.tool_call not in fork_kinds and EventKind.escalation_opened not in fork_kinds
    # Linked both ways: the original's timeline lists its fork, the fork's names its original.
    assert forks_of(rt.store, original) == [fork_run]
    original_timeline, fork_timeline = timeline(rt.store, original), timeline(rt.store, fork_run)
    assert original_timeline is not None and original_timeline.forks == [fork_run]
    assert fork_timeline is not None and fork_timeline.forked_from == forked.forked_from


def test_a_fork_from_the_first_step_plans_the_tool_call_again(stack_runtime: Runtime) -> None:
    """Step 0 has no completed action before it: the fork asks for the payment again,
    and waits for a person to approve it, as the original did."""
    rt = stack_runtime
    original = _paid(rt)

    fork_run, _ = client.fork(original, 0, runtime=rt)
    forked = wait_status(rt, fork_run, "waiting_human")

    assert forked.completed_actions == []
    assert forked.awaiting_human[0].action is not None
    assert forked.awaiting_human[0].action.tool == "record_payment"
    client.cancel(fork_run, runtime=rt)


def test_the_same_fork_posted_twice_makes_one_run(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    original = _paid(rt)
    event_id = uuid.uuid4().hex

    last = planned_steps([e for _, e in rt.store.log.read(original)])[-1]

    first, _ = client.fork(original, last, event_id=event_id, runtime=rt)
    second, _ = client.fork(original, last, event_id=event_id, runtime=rt)
    assert first == second
    wait_status(rt, first, "succeeded")
    wait_for(
        lambda: EventKind.duplicate_event in [e.kind for _, e in rt.store.log.read(first)],
        what="the second fork event taken as a duplicate",
    )
    assert forks_of(rt.store, original) == [first]
    assert [line for line in read_ledger() if line.startswith(first)] == []


def test_retry_starts_a_new_run_naming_the_original(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    original = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    wait_status(rt, original, "succeeded")

    retried, _ = client.retry(original, runtime=rt)
    state = wait_status(rt, retried, "succeeded")

    assert retried != original
    assert state.metadata["retry_of"] == original


def test_forgetting_a_thread_forgets_the_forks_of_its_runs(stack_runtime: Runtime) -> None:
    """A fork holds a copy of its original's conversation: it goes with the thread."""
    rt = stack_runtime
    thread = f"fork-{uuid.uuid4().hex[:8]}"
    original = client.submit("calculator", "What is 2 + 3?", thread_id=thread, runtime=rt)
    wait_status(rt, original, "succeeded")
    fork_run, _ = client.fork(original, 1, runtime=rt)
    forked = wait_status(rt, fork_run, "succeeded")
    assert forked.thread_id is None  # it took no place on the thread
    refork, _ = client.fork(fork_run, 0, runtime=rt)
    wait_status(rt, refork, "succeeded")

    report = forget.forget_thread(rt, thread)

    assert report.runs == [original, fork_run, refork]
    assert [rt.store.get(r) for r in report.runs] == [None, None, None]
    assert rt.store.client.exists(keys.run_forks(original), keys.run_forks(fork_run)) == 0


def _tether(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETHER_REDIS_URL": rt.settings.redis_url}
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tether_runs_fork_from_the_cli(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    original = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    wait_status(rt, original, "succeeded")

    refused = _tether(rt, "runs", "fork", original, "--from-step", "7")
    assert refused.returncode == 2
    assert "no model call at that step (steps it planned: [0, 1])" in refused.stdout

    forked = _tether(rt, "runs", "fork", original, "--from-step", "1", "--wait")
    assert forked.returncode == 0, forked.stdout + forked.stderr
    fork_run = re.search(r"as run (run_[0-9a-f]+)", forked.stdout)
    assert fork_run is not None
    shown = _tether(rt, "runs", "show", original, "--json")
    assert json.loads(shown.stdout)["forks"] == [fork_run.group(1)]
    shown = _tether(rt, "runs", "show", fork_run.group(1))
    assert f"from {original} at step 1" in shown.stdout
