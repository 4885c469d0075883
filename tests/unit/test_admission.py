"""Admission under the caps on real Redis: checked and counted in one script, fair
between tenants, interactive before batch without starving batch, idempotent per event."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tether import client, planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.errors import ConfigError
from tether.memory import threads
from tether.planner import admission
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.transport.wire import Priority, TaskEvent


class Published:
    """The events a runtime published again, in order (the real publish still happens)."""

    def __init__(self, rt: Runtime) -> None:
        self.events: list[TaskEvent] = []
        real = rt.publish_event

        def publish(event: TaskEvent) -> None:
            self.events.append(event)
            real(event)

        rt.publish_event = publish  # type: ignore[method-assign]

    def ids(self) -> list[str]:
        taken = [e.event_id for e in self.events]
        self.events.clear()
        return taken


@pytest.fixture
def capped(redis_url: str) -> Iterator[Any]:
    """A runtime with the caps given, and what it publishes."""

    def make(**caps: Any) -> tuple[Runtime, Published]:
        rt = Runtime(Settings(redis_url=redis_url, **caps))
        return rt, Published(rt)

    yield make


def event(tenant: str | None, priority: Priority = Priority.interactive) -> TaskEvent:
    return TaskEvent(
        event_id=f"e-{tenant}-{uuid.uuid4().hex[:8]}",
        agent="calculator",
        input="2 + 3?",
        metadata={} if tenant is None else {"tenant": tenant},
        priority=priority,
    )


def end(rt: Runtime, e: TaskEvent) -> list[str]:
    """What a run's end does: its status is terminal, then its slot is given back."""
    rt.store.client.hset(keys.run(run_id_for(e.event_id)), "status", "succeeded")
    return admission.release(rt, e.event_id)


def test_without_a_cap_nothing_waits_and_nothing_is_written(capped: Any) -> None:
    rt, _ = capped()
    assert all(admission.admit(rt, event("a")).starts for _ in range(20))
    assert rt.store.client.keys("tether:admission:*") == []


def test_a_tenant_over_its_cap_waits_while_others_start(capped: Any) -> None:
    rt, published = capped(tenant_default_max_runs=2, tenant_max_runs={"big": 3})
    a = [event("a") for _ in range(3)]
    assert [admission.admit(rt, e).starts for e in a] == [True, True, False]
    big = [event("big") for _ in range(4)]
    assert [admission.admit(rt, e).starts for e in big] == [True, True, True, False]
    assert admission.admit(rt, event(None)).starts  # tenant "default", its own cap
    assert admission.in_flight(rt) == {"a": 2, "big": 3, "default": 1}
    assert admission.waiting(rt) == {"interactive": 2, "batch": 0}
    assert published.ids() == []  # nothing started for anyone else

    assert end(rt, a[0]) == [f"event {a[2].event_id}"]
    assert published.ids() == [a[2].event_id]
    assert admission.in_flight(rt)["a"] == 2


def test_the_global_cap_bounds_all_tenants_together(capped: Any) -> None:
    rt, _ = capped(max_runs_in_flight=3)
    verdicts = [admission.admit(rt, event(t)).starts for t in ("a", "b", "c", "d", "a")]
    assert verdicts == [True, True, True, False, False]
    assert sum(admission.in_flight(rt).values()) == 3


def test_a_redelivered_start_waits_once_and_counts_once(capped: Any) -> None:
    rt, _ = capped(tenant_default_max_runs=1)
    first, second = event("a"), event("a")
    assert admission.admit(rt, first).starts
    assert admission.admit(rt, first).starts  # its start delivered again: same slot
    assert not admission.admit(rt, second).starts
    assert not admission.admit(rt, second).starts  # waits once
    assert admission.in_flight(rt) == {"a": 1}
    assert admission.waiting(rt)["interactive"] == 1


def test_a_slot_is_given_back_once_and_a_late_start_takes_none(capped: Any) -> None:
    rt, published = capped(tenant_default_max_runs=1)
    first, second, third = event("a"), event("a"), event("a")
    admission.admit(rt, first)
    admission.admit(rt, second)
    admission.admit(rt, third)
    assert end(rt, first) == [f"event {second.event_id}"]
    assert admission.release(rt, first.event_id) == []  # again: nothing more given back
    assert admission.in_flight(rt) == {"a": 1}
    # A copy of the first start message, delivered after its run ended and its run
    # gone: it takes no slot it would never give back.
    rt.store.client.delete(keys.run(run_id_for(first.event_id)))
    assert admission.admit(rt, first).starts
    assert admission.in_flight(rt) == {"a": 1}
    assert published.ids() == [second.event_id]


def test_tenants_take_turns_when_capacity_is_scarce(capped: Any) -> None:
    rt, published = capped(max_runs_in_flight=1)
    blocker = event("x")
    admission.admit(rt, blocker)
    a = [event("a") for _ in range(5)]
    b = [event("b") for _ in range(2)]
    for e in [*a, *b]:
        assert not admission.admit(rt, e).starts
    order: list[str] = []
    running = blocker
    for _ in range(7):
        end(rt, running)
        (started,) = published.ids()
        order.append(started)
        running = next(e for e in [*a, *b] if e.event_id == started)
    tenants = [e.split("-")[1] for e in order]
    assert tenants == ["a", "b", "a", "b", "a", "a", "a"]
    assert order[0::2][:2] == [a[0].event_id, a[1].event_id]  # each tenant's oldest first


def test_interactive_goes_first_and_every_nth_start_goes_to_batch(capped: Any) -> None:
    rt, published = capped(max_runs_in_flight=1, batch_every=3)
    blocker = event("x")
    admission.admit(rt, blocker)
    low = [event("t", Priority.batch) for _ in range(4)]
    high = [event("t") for _ in range(6)]
    for e in [*low, *high]:
        assert not admission.admit(rt, e).starts
    everyone = {e.event_id: e for e in [blocker, *low, *high]}
    rt.store.client.hset(keys.ADMISSION_COUNTERS, "releases", 0)  # count from here
    order: list[str] = []
    started: list[TaskEvent] = []
    running = blocker
    for _ in range(10):
        end(rt, running)
        (next_id,) = published.ids()
        running = everyone[next_id]
        started.append(running)
        order.append("low" if running.priority == Priority.batch else "high")
    assert order == ["high", "high", "low", "high", "high", "low", "high", "high", "low", "low"]
    # Within a class, publish order.
    assert [e for e in started if e.priority == Priority.batch] == low
    assert [e for e in started if e.priority == Priority.interactive] == high


def test_the_sweep_gives_back_a_dead_workers_slot_and_restarts_a_lost_start(
    capped: Any,
) -> None:
    rt, published = capped(tenant_default_max_runs=2)
    ended, lost, waiting_one = event("a"), event("a"), event("a")
    for e in (ended, lost, waiting_one):
        admission.admit(rt, e)
    # The run ended, but its worker died before giving its slot back.
    rt.store.client.hset(keys.run(run_id_for(ended.event_id)), "status", "succeeded")
    later = 10.0**10
    assert admission.sweep(rt, checked_before=later, lost_before=0) == [
        f"event {waiting_one.event_id}"
    ]
    assert published.ids() == [waiting_one.event_id]
    assert admission.in_flight(rt) == {"a": 2}
    # Admitted, with no run long enough: their start messages were lost; sent again.
    admission.sweep(rt, checked_before=later, lost_before=later)
    assert sorted(published.ids()) == sorted([lost.event_id, waiting_one.event_id])
    # A run that exists and goes on keeps its slot, and is looked at again later only.
    rt.store.client.hset(keys.run(run_id_for(lost.event_id)), "status", "running")
    assert admission.sweep(rt, checked_before=later, lost_before=later) == [
        f"event {waiting_one.event_id}"
    ]
    assert admission.in_flight(rt) == {"a": 2}


def test_lifting_the_caps_lets_the_sweep_start_what_waits(capped: Any, redis_url: str) -> None:
    rt, _ = capped(max_runs_in_flight=1)
    waiting = [event("a") for _ in range(3)]
    for e in waiting:
        admission.admit(rt, e)
    lifted, published = capped()
    admission.sweep(lifted, checked_before=0, lost_before=0)
    assert sorted(published.ids()) == sorted(e.event_id for e in waiting[1:])
    assert admission.waiting(lifted)["interactive"] == 0


def test_tenants_come_from_the_configured_field_and_metrics_bound_them() -> None:
    settings = Settings(tenant_key="org", tenant_max_runs={"acme": 5}, metric_tenants=["beta"])
    assert admission.tenant_of(settings, event(None)) == "default"
    named = event(None).model_copy(update={"metadata": {"org": "acme\n"}})
    assert admission.tenant_of(settings, named) == "acme"
    odd = event(None).model_copy(update={"metadata": {"org": "a\x00b"}})
    assert admission.tenant_of(settings, odd) == "a?b"
    assert [admission.metric_tenant(settings, t) for t in ("acme", "beta", "default", "zed")] == [
        "acme",
        "beta",
        "default",
        "other",
    ]


def test_a_tenant_cap_below_one_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match="TETHER_TENANT_MAX_RUNS gives tenant 'acme' the cap 0"):
        Settings(tenant_max_runs={"acme": 0, "beta": 2})


def test_a_run_counts_its_queue_wait_once_and_its_end_admits_the_next(capped: Any) -> None:
    load_agent_modules(["tests.observability_agents"])
    rt, published = capped(tenant_default_max_runs=1)
    labels = {"tenant": "other", "priority": "interactive"}  # "m" is named nowhere

    def waits() -> float:
        return REGISTRY.get_sample_value("tether_run_queue_wait_seconds_count", labels) or 0.0

    before = waits()
    first: dict[str, Any] = {
        "event_id": f"m-{uuid.uuid4().hex[:8]}",
        "agent": "obs_ok",
        "input": "go",
        "metadata": {"tenant": "m"},
    }
    second = {**first, "event_id": f"m-{uuid.uuid4().hex[:8]}"}
    assert planner.start(rt, first) == run_id_for(first["event_id"])
    assert planner.start(rt, first) == run_id_for(first["event_id"])  # delivered again
    assert planner.start(rt, second) is None  # over the cap: waits, no run
    assert waits() - before == 1
    assert rt.store.status(run_id_for(second["event_id"])) is None

    client.cancel(run_id_for(first["event_id"]), runtime=rt)  # its end gives the slot
    assert published.ids() == [second["event_id"]]
    assert planner.start(rt, second) == run_id_for(second["event_id"])
    assert waits() - before == 2
    assert admission.in_flight(rt) == {"m": 1}


def test_a_threads_next_event_waits_for_capacity_and_the_thread_keeps_its_order(
    capped: Any,
) -> None:
    load_agent_modules(["tests.observability_agents", "tests.memory_agents"])
    rt, published = capped(tenant_default_max_runs=1)
    thread = f"t-{uuid.uuid4().hex[:8]}"

    def raw(agent: str, event_id: str, on_thread: bool) -> dict[str, Any]:
        extra = {"thread_id": thread} if on_thread else {}
        return {"event_id": event_id, "agent": agent, "input": "hello", **extra,
                "metadata": {"tenant": "t"}}  # fmt: skip

    blocker = raw("obs_ok", f"b-{thread}", on_thread=False)
    first, second = raw("threaded", f"1-{thread}", True), raw("threaded", f"2-{thread}", True)
    assert planner.start(rt, blocker) is not None  # the tenant's one slot
    assert planner.start(rt, first) is None  # the thread's head, waiting for capacity
    assert planner.start(rt, second) is None  # behind it on the thread
    assert admission.waiting(rt)["interactive"] == 1  # the thread holds the second

    client.cancel(run_id_for(blocker["event_id"]), runtime=rt)
    assert published.ids() == [first["event_id"]]
    planner.start(rt, first)  # answers at once: its end hands the thread over
    assert published.ids() == [second["event_id"]]
    planner.start(rt, second)
    states = [rt.store.get(run_id_for(e["event_id"])) for e in (first, second)]
    assert [s.status if s else None for s in states] == ["succeeded", "succeeded"]
    assert [t.event_id for t in threads.turns(rt, thread)] == [
        first["event_id"],
        second["event_id"],
    ]
    assert admission.in_flight(rt) == {}
