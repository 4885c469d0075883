"""threads.lua on real Redis: an event never goes ahead of the thread's running run."""

from __future__ import annotations

import pytest

from tether.memory import threads
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import TaskEvent


def _event(thread: str, name: str, seq: int | None = None) -> TaskEvent:
    return TaskEvent(
        event_id=f"{thread}-{name}", agent="threaded", input=name, thread_id=thread, thread_seq=seq
    )


def _admit_published_at(
    monkeypatch: pytest.MonkeyPatch, rt: Runtime, event: TaskEvent, at: float
) -> int:
    monkeypatch.setattr(threads, "_published_at", lambda: at)
    return threads.admit(rt, event)


def test_an_event_published_before_the_running_run_queues_behind_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither event has a sequence number: the order is by publish time, except that the
    # running run is never passed, however late its own event was published (a message
    # delayed in a queue, a republished event).
    thread = "t-admit"
    running = _event(thread, "running")
    assert _admit_published_at(monkeypatch, runtime, running, 2000.0) == threads.STARTS_NOW
    earlier = _event(thread, "earlier")
    assert _admit_published_at(monkeypatch, runtime, earlier, 1000.0) == 1
    assert threads.queued(runtime, thread) == [running.event_id, earlier.event_id]
    # Behind the running run, publish order still holds among those waiting.
    between = _event(thread, "between")
    assert _admit_published_at(monkeypatch, runtime, between, 500.0) == 1
    assert threads.queued(runtime, thread) == [
        running.event_id,
        between.event_id,
        earlier.event_id,
    ]
    client = runtime.store.client
    assert client.hget(keys.thread_seq(thread), "running") == running.event_id


def test_an_event_numbered_before_the_running_run_queues_behind_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running run went ahead of number 1 after the gap; number 1 arrives late.
    thread = "t-admit-seq"
    runtime.store.client.zadd(keys.thread_skipped(thread), {"1": 1})
    running = _event(thread, "two", seq=2)
    assert _admit_published_at(monkeypatch, runtime, running, 2000.0) == threads.STARTS_NOW
    late = _event(thread, "one", seq=1)
    assert _admit_published_at(monkeypatch, runtime, late, 1000.0) == 1
    assert threads.queued(runtime, thread) == [running.event_id, late.event_id]
