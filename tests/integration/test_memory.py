"""Threads and long-term memory on real Redis and real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from tests.memory_agents import ledger_path
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.evaluation.runner import run_trial
from tether.evaluation.scenario import Scenario, ScenarioEvent
from tether.memory import forget, longterm, threads
from tether.memory.window import Turn, fit
from tether.planner import reconcile
from tether.planner.lifecycle import finish
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import RunError, RunState, RunStatus
from tether.transport.wire import ErrorCategory, TaskEvent

# How long the workers let an event wait for one published before it.
GAP_S = 6.0


@pytest.fixture(scope="module")
def mstack(ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Its own Redis and workers, loading the memory test agents (the suite's ledger folder)."""
    logs = Path(tmp_path_factory.mktemp("memory-logs"))
    with started_stack(
        DevStack(
            agent_modules=["tests.memory_agents"],
            log_dir=logs,
            env={"LEDGER_DIR": str(ledger_dir), "TETHER_THREAD_GAP_S": str(GAP_S)},
        )
    ) as running:
        yield running


@pytest.fixture(scope="module")
def mrt(mstack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=mstack.redis_url))


def done(rt: Runtime, run_id: str, timeout_s: float = 30.0) -> RunState:
    return client.wait(run_id, timeout_s=timeout_s, runtime=rt)


def answer(state: RunState) -> dict[str, object]:
    return dict(json.loads(state.result or "{}"))


def context_entry(rt: Runtime, run_id: str) -> dict[str, object]:
    return next(e.data for _, e in rt.store.log.read(run_id) if e.kind == "thread_context")


def thread_keys(rt: Runtime, needle: str) -> list[str]:
    return sorted(str(k) for k in rt.store.client.scan_iter(match=f"*{needle}*", count=1000))


def test_second_event_on_a_thread_sees_the_first_answer(mrt: Runtime) -> None:
    thread = f"t-{uuid.uuid4().hex[:8]}"
    first = done(mrt, client.submit("threaded", "hello one", thread_id=thread, runtime=mrt))
    second = done(mrt, client.submit("threaded", "hello two", thread_id=thread, runtime=mrt))
    assert first.status == second.status == RunStatus.succeeded
    assert answer(second)["earlier"] == [first.result]
    assert context_entry(mrt, second.run_id)["included"] == [first.run_id]
    assert [t.run_id for t in threads.turns(mrt, thread)] == [first.run_id, second.run_id]
    # A run on no thread starts empty.
    alone = done(mrt, client.submit("threaded", "hello three", runtime=mrt))
    assert answer(alone)["earlier"] == []


def test_five_events_on_one_thread_run_in_order_while_threads_run_in_parallel(
    mrt: Runtime,
) -> None:
    ledger_path().unlink(missing_ok=True)
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    runs: dict[str, list[str]] = {a: [], b: []}

    def submit(i: int) -> None:
        for thread in (a, b):
            runs[thread].append(
                client.submit("threaded", f"slow {thread} {i}", thread_id=thread, runtime=mrt)
            )

    # All five at once, to idle threads: they run in publish order whichever reaches
    # intake first (two planner processes take them in parallel).
    for i in range(5):
        submit(i)
    states = {t: [done(mrt, r, 60) for r in ids] for t, ids in runs.items()}
    spans: dict[str, list[tuple[float, float]]] = {a: [], b: []}
    for line in ledger_path().read_text().splitlines():
        _, thread, i, start, end = line.split()
        spans[thread].append((float(start), float(end)))
        assert int(i) == len(spans[thread]) - 1  # in publish order
    for thread in (a, b):
        assert [s.status for s in states[thread]] == [RunStatus.succeeded] * 5
        assert len(spans[thread]) == 5  # each tool call once
        for before, after in zip(states[thread], states[thread][1:], strict=False):
            assert before.finished_at is not None and after.created_at >= before.finished_at
        # Run i saw every earlier run of its thread.
        assert len(answer(states[thread][4])["earlier"]) == 4  # type: ignore[arg-type]
    # The two threads overlapped in time.
    assert spans[a][0][0] < spans[b][-1][1] and spans[b][0][0] < spans[a][-1][1]
    assert mrt.store.client.llen(keys.thread_queue(a)) == 0


def test_an_event_ahead_of_an_earlier_one_waits_for_it_its_rejection_or_the_gap(
    mrt: Runtime,
) -> None:
    thread = f"s-{uuid.uuid4().hex[:8]}"
    numbers = [threads.next_seq(mrt, thread) for _ in range(6)]
    assert numbers == [1, 2, 3, 4, 5, 6]

    def publish(seq: int, agent: str = "threaded") -> str:
        event = TaskEvent(
            event_id=f"{thread}-{seq}",
            agent=agent,
            input=f"hello {seq}",
            thread_id=thread,
            thread_seq=seq,
        )
        published = time.time()
        mrt.publish_event(event)
        published_at[seq] = published
        return run_id_for(event.event_id)

    published_at: dict[int, float] = {}
    # The second reaches intake first: it waits for the first, holding no worker.
    second = publish(2)
    # Intake queued it (however long a loaded machine took to get there), and ran nothing.
    wait_for(lambda: threads.queued(mrt, thread) == [f"{thread}-2"], 20, "the second queued")
    assert mrt.store.get(second) is None
    first = publish(1)
    one, two = done(mrt, first), done(mrt, second)
    assert one.status == two.status == RunStatus.succeeded
    assert one.finished_at is not None and two.created_at >= one.finished_at
    assert answer(two)["earlier"] == [one.result]
    # The fourth waits for the third; the third is rejected at intake: no more waiting.
    fourth = publish(4)
    time.sleep(0.5)
    assert mrt.store.get(fourth) is None
    publish(3, agent="nobody-by-this-name")
    four = done(mrt, fourth)
    assert four.created_at.timestamp() < published_at[4] + GAP_S
    assert any(f"{thread}-3" in r["reason"] for r in mrt.store.rejections.recent(10))
    # The fifth never comes (its publisher died after taking its number): the sixth
    # waits out the gap, then the reconciler lets it go ahead.
    sixth = publish(6)
    time.sleep(1.0)
    assert mrt.store.get(sixth) is None
    deadline = time.monotonic() + GAP_S + 20
    while mrt.store.get(sixth) is None and time.monotonic() < deadline:
        reconcile.sweep(mrt, stalled_after_s=300)
        time.sleep(0.5)
    six = done(mrt, sixth)
    assert six.status == RunStatus.succeeded
    assert six.created_at.timestamp() >= published_at[6] + GAP_S
    assert [t.event_id for t in threads.turns(mrt, thread)] == [
        f"{thread}-{i}" for i in (1, 2, 4, 6)
    ]
    assert mrt.store.client.zscore(keys.THREADS_GAPS, thread) is None


def test_cancelled_run_releases_the_thread(mrt: Runtime) -> None:
    thread = f"c-{uuid.uuid4().hex[:8]}"
    first = client.submit("threaded", "slow hold", thread_id=thread, runtime=mrt)
    second = client.submit("threaded", "after cancel", thread_id=thread, runtime=mrt)
    deadline = time.monotonic() + 10
    while mrt.store.get(first) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mrt.store.get(second) is None  # waits in Redis, no run yet
    client.cancel(first, runtime=mrt)
    state = done(mrt, second)
    assert state.status == RunStatus.succeeded
    assert answer(state)["earlier"] == ["(this run ended cancelled)"]


def test_a_lost_hand_over_is_recovered_and_starts_once(mrt: Runtime, mstack: DevStack) -> None:
    thread = f"h-{uuid.uuid4().hex[:8]}"
    event_ids = [f"{thread}-{i}" for i in range(3)]
    # Hold the thread with a run this test ends itself, as a worker would.
    head = TaskEvent(event_id=event_ids[0], agent="threaded", input="slow x", thread_id=thread)
    assert threads.admit(mrt, head) == 0
    for i, event_id in enumerate(event_ids[1:], start=1):
        mrt.publish_event(
            TaskEvent(event_id=event_id, agent="threaded", input=f"next {i}", thread_id=thread)
        )
    deadline = time.monotonic() + 10
    while len(threads.queued(mrt, thread)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads.queued(mrt, thread) == event_ids
    # The head's run, created as intake would, then ended by a "worker" that dies right
    # after the terminal commit: the hand-over's publish never happens.
    state = RunState(
        run_id=run_id_for(head.event_id),
        event_id=head.event_id,
        agent="threaded",
        goal=head.input,
        thread_id=thread,
    )
    mrt.store.create(head, state)
    original = threads.hand_over
    threads.hand_over = lambda rt, thread_id: []  # type: ignore[assignment]
    try:
        finish(
            mrt,
            state.run_id,
            None,
            RunStatus.failed,
            RunError(category=ErrorCategory.internal, message="worker died"),
        )
    finally:
        threads.hand_over = original  # type: ignore[assignment]
    assert threads.queued(mrt, thread) == event_ids[1:]
    time.sleep(0.5)
    assert mrt.store.get(run_id_for(event_ids[1])) is None  # nothing published it
    # The reconciler's sweep finds the thread busy with no run at its head.
    reconcile.sweep(mrt, stalled_after_s=0)
    reconcile.sweep(mrt, stalled_after_s=0)  # twice: still harmless
    finals = [done(mrt, run_id_for(e)) for e in event_ids[1:]]
    assert [s.status for s in finals] == [RunStatus.succeeded] * 2
    turns = threads.turns(mrt, thread)
    assert [t.event_id for t in turns] == event_ids  # each once, in order
    # Killing the planner while the thread hands over between slow runs loses nothing.
    ledger_path().unlink(missing_ok=True)
    slow = [
        client.submit("threaded", f"slow k {i}", thread_id=thread, runtime=mrt) for i in range(3)
    ]
    deadline = time.monotonic() + 10
    while mrt.store.get(slow[0]) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.killpg(mstack.workers["planner"].pid, signal.SIGKILL)
    mstack.workers["planner"].wait()
    mstack.start_worker("planner")
    mstack.wait_ready(["planner"], 60)
    deadline = time.monotonic() + 60
    while any(mrt.store.get(r) is None for r in slow) and time.monotonic() < deadline:
        reconcile.sweep(mrt, stalled_after_s=2)
        time.sleep(0.5)
    slow_states = [done(mrt, r, 60) for r in slow]
    assert [s.status for s in slow_states] == [RunStatus.succeeded] * 3
    notes = [line.split()[2] for line in ledger_path().read_text().splitlines()]
    assert notes == ["0", "1", "2"]  # each ran once, in order
    assert [t.event_id for t in threads.turns(mrt, thread)][3:] == [
        mrt.store.load(r).event_id for r in slow
    ]


def test_a_queued_event_rejected_when_its_turn_comes_gives_way_to_the_next(
    mrt: Runtime,
) -> None:
    thread = f"r-{uuid.uuid4().hex[:8]}"
    # The thread's run, held by this test; behind it an event queued while its agent
    # still existed (a rolling deploy then removed it), and a valid one.
    head = TaskEvent(event_id=f"{thread}-0", agent="threaded", input="hold", thread_id=thread)
    assert threads.admit(mrt, head) == threads.STARTS_NOW
    gone = TaskEvent(event_id=f"{thread}-1", agent="renamed-away", input="x", thread_id=thread)
    assert threads.admit(mrt, gone) == 1
    after = TaskEvent(
        event_id=f"{thread}-2", agent="threaded", input="hello after", thread_id=thread
    )
    mrt.publish_event(after)
    deadline = time.monotonic() + 10
    while len(threads.queued(mrt, thread)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads.queued(mrt, thread) == [head.event_id, gone.event_id, after.event_id]
    state = RunState(
        run_id=run_id_for(head.event_id),
        event_id=head.event_id,
        agent="threaded",
        goal=head.input,
        thread_id=thread,
    )
    mrt.store.create(head, state)
    # Its end hands the thread over to the event whose agent is gone: rejected, it
    # leaves the queue and the next event runs.
    finish(mrt, state.run_id, None, RunStatus.succeeded, None, result="done")
    ran = done(mrt, run_id_for(after.event_id))
    assert ran.status == RunStatus.succeeded
    time.sleep(1.0)  # time for a hand-over loop to show
    reasons = [
        r["reason"] for r in mrt.store.rejections.recent(1000) if gone.event_id in r["reason"]
    ]
    assert len(reasons) == 1 and "renamed-away" in reasons[0]
    assert mrt.store.get(run_id_for(gone.event_id)) is None
    assert threads.queued(mrt, thread) == []
    assert [t.event_id for t in threads.turns(mrt, thread)] == [head.event_id, after.event_id]


def test_the_window_trims_and_summarises_as_configured(mrt: Runtime) -> None:
    for agent in ("narrow", "summarising"):
        thread = f"w-{agent}-{uuid.uuid4().hex[:6]}"
        # One turn after another, as a conversation goes.
        states = [
            done(mrt, client.submit(agent, f"turn {i} " + "x" * 150, thread_id=thread, runtime=mrt))
            for i in range(5)
        ]
        ids = [s.run_id for s in states]
        entry = context_entry(mrt, ids[-1])
        included = list(entry["included"])  # type: ignore[call-overload]
        assert entry["turns"] == 4 and entry["window_tokens"] == 2000
        assert 0 < len(included) < 4 and included == ids[4 - len(included) : 4]
        assert int(entry["included_tokens"]) <= 2000  # type: ignore[call-overload]
        older = ids[: 4 - len(included)]
        if agent == "narrow":
            assert entry["dropped"] == older and entry["summarised"] == []
            assert answer(states[-1])["summary"] == []
        else:
            assert entry["summarised"] == older and entry["dropped"] == []
            assert "SUMMARY" in str(answer(states[-1])["summary"])
            # The summary call is the run's spending too.
            summary_tokens = int(entry["summary_tokens"])  # type: ignore[call-overload]
            assert summary_tokens > 0
            step_tokens = sum(
                int(e.data["input_tokens"]) + int(e.data["output_tokens"])
                for _, e in mrt.store.log.read(ids[-1])
                if e.kind == "model_call"
            )
            usage = mrt.store.budgets.usage(ids[-1])
            assert usage.tokens == step_tokens + summary_tokens
            # A run that could not afford the summary call does not make it.
            poor = client.submit(
                agent, "one more", thread_id=thread, budget={"max_tokens": 60}, runtime=mrt
            )
            done(mrt, poor)
            skipped = context_entry(mrt, poor)
            assert "max_tokens=60" in str(skipped["summary_skipped"])
            assert "summary_tokens" not in skipped and skipped["summarised"] == []


def test_fit_keeps_the_newest_turns_whole() -> None:
    turns = [
        Turn(run_id=f"r{i}", event_id=f"e{i}", input="x" * 100, status="succeeded", answer="ok")
        for i in range(6)
    ]
    fitted = fit(turns, 600)
    assert [t.run_id for _, t in fitted.included] == ["r3", "r4", "r5"] or fitted.included
    kept = [i for i, _ in fitted.included]
    assert kept == list(range(6 - len(kept), 6))
    assert [i for i, _ in fitted.dropped] == list(range(6 - len(kept)))
    assert fit(turns, 10).included == [] and fit([], 10).dropped == []


def test_memory_remembers_per_subject_with_limits_and_logs_writes(mrt: Runtime) -> None:
    who = f"cust-{uuid.uuid4().hex[:8]}"
    meta = {"customer_id": who}
    wrote = done(mrt, client.submit("memo", "remember last_order=1042", metadata=meta, runtime=mrt))
    assert wrote.status == RunStatus.succeeded
    writes = [e.data for _, e in mrt.store.log.read(wrote.run_id) if e.kind == "memory_write"]
    assert writes == [{"agent": "memo", "subject": who, "key": "last_order", "value": "1042"}]
    recalled = done(mrt, client.submit("memo", "recall order", metadata=meta, runtime=mrt))
    assert "1042" in (recalled.result or "")
    other = done(
        mrt, client.submit("memo", "recall order", metadata={"customer_id": "x"}, runtime=mrt)
    )
    assert "1042" not in (other.result or "")
    assert 0 < mrt.store.client.ttl(keys.memory("memo", who)) <= 3600
    for key in ("b", "c"):
        done(mrt, client.submit("memo", f"remember {key}=1", metadata=meta, runtime=mrt))
    full = done(mrt, client.submit("memo", "remember d=1", metadata=meta, runtime=mrt))
    assert "full" in (full.result or "")  # max_items=3: refused, told to the model
    nobody = done(mrt, client.submit("memo", "remember a=1", runtime=mrt))
    assert "customer_id" in (nobody.result or "")


def test_an_evaluation_run_remembers_apart_from_the_production_agent(mrt: Runtime) -> None:
    who = f"cust-{uuid.uuid4().hex[:8]}"
    meta = {"customer_id": who}
    wrote = done(mrt, client.submit("memo", "remember last_order=1042", metadata=meta, runtime=mrt))
    assert wrote.status == RunStatus.succeeded
    production = mrt.store.client.hgetall(keys.memory("memo", who))
    assert [i.value for i in longterm.items(mrt.store.client, "memo", who)] == ["1042"]
    scenario = Scenario(
        name="remembers in evaluation",
        agent="memo",
        event=ScenarioEvent(input="remember last_order=eval-9", metadata=meta),
    )
    trial = run_trial(scenario, 1, runtime=mrt)
    assert trial.status == "succeeded", trial.error
    # The production agent's memory is as it was; the evaluation's is its own.
    assert mrt.store.client.hgetall(keys.memory("memo", who)) == production
    assert [i.value for i in longterm.items(mrt.store.client, "eval:memo", who)] == ["eval-9"]
    writes = [e.data for _, e in mrt.store.log.read(trial.run_id) if e.kind == "memory_write"]
    assert [w["agent"] for w in writes] == ["eval:memo"]
    # A production run recalls nothing the evaluation wrote.
    recalled = done(mrt, client.submit("memo", "recall order", metadata=meta, runtime=mrt))
    assert "1042" in (recalled.result or "") and "eval-9" not in (recalled.result or "")


def test_forget_leaves_no_key_behind(mrt: Runtime, mstack: DevStack) -> None:
    thread = f"f-{uuid.uuid4().hex[:8]}"
    who = f"subj-{uuid.uuid4().hex[:8]}"
    ids = [
        client.submit(
            "memo",
            f"remember k{i}=v{i}",
            thread_id=thread,
            metadata={"customer_id": who},
            runtime=mrt,
        )
        for i in range(2)
    ]
    states = [done(mrt, r) for r in ids]
    # A run on no thread that only reads the memories holds copies of them too.
    reader = done(
        mrt, client.submit("memo", "recall k", metadata={"customer_id": who}, runtime=mrt)
    )
    assert "v1" in str(reader.result)
    assert thread_keys(mrt, thread) and thread_keys(mrt, who)
    env = {**os.environ, "TETHER_REDIS_URL": mstack.redis_url}
    shown = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "threads", "show", thread, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(shown.stdout)
    assert [r["run_id"] for r in doc["runs"]] == ids
    assert [m["content"] for m in doc["messages"] if m["role"] == "user"] == [
        "remember k0=v0",
        "remember k1=v1",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "threads", "forget", thread],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "forgot thread" in out and ids[0] in out
    assert thread_keys(mrt, thread) == []
    for state in states:
        assert thread_keys(mrt, state.run_id) == []
        assert mrt.store.client.zscore(keys.RUN_INDEX, state.run_id) is None
    assert mrt.store.client.zscore(keys.THREADS, thread) is None
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "memory", "forget", who, "--runs"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert keys.memory("memo", who) in out and keys.memory_runs("memo", who) in out
    assert reader.run_id in out
    assert thread_keys(mrt, who) == []
    assert thread_keys(mrt, reader.run_id) == []
    # Nothing holds the subject any more, in any key's name or value.
    for key in mrt.store.client.scan_iter(count=1000):
        if mrt.store.client.type(key) == "string":
            assert who not in str(mrt.store.client.get(key))
    busy = f"busy-{uuid.uuid4().hex[:6]}"
    held = client.submit("threaded", "slow busy", thread_id=busy, runtime=mrt)
    with pytest.raises(forget.ThreadBusyError):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not threads.queued(mrt, busy):
            time.sleep(0.02)
        forget.forget_thread(mrt, busy)
    done(mrt, held)
