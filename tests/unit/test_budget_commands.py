"""A step's budget scripts on a real Redis: its model call's settlement rides inside its
tool-call reservation (one script call, not two), markers live in the budget hash, and
neither a redelivery nor a commit that lost charges anything twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tether import planner
from tether.agent.definition import load_agent_modules
from tether.runtime import Runtime
from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.budgets import Budgets, Reservation
from tether.store.runs import RunStore, run_id_for
from tether.store.state import ChatMessage, RunState
from tether.transport.wire import BudgetLimits, TaskEvent


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


@pytest.fixture
def batch(client: redis.Redis) -> Iterator[WriteBatch]:
    """A task's batch: settlements are held back for the next round trip."""
    held = WriteBatch(client)
    held.begin()
    yield held
    held.end()


@pytest.fixture
def budgets(client: redis.Redis, batch: WriteBatch) -> Budgets:
    return Budgets(client, batch)


def _decision(
    budgets: Budgets, batch: WriteBatch, run_id: str, *, tokens: int, tool_calls: int
) -> Reservation:
    """What a step's decision does: settle its model call, then reserve its tool calls
    in the decision commit's round trip, the settlement carried inside."""
    budgets.settle(run_id, "model:0", tokens=tokens, cost_usd=-0.25)
    with budgets.settling_in_reservation(run_id):
        assert batch.pending == 0  # taken back: it goes inside the reservation
        (reply,) = batch.run(
            lambda pipe: budgets.add_reserve(pipe, run_id, "tools:0", tool_calls=tool_calls)
        )
    return Budgets.reservation(reply)


def test_a_redelivered_decision_settles_and_reserves_once(
    budgets: Budgets, batch: WriteBatch, client: redis.Redis
) -> None:
    budgets.open("run_a", BudgetLimits(max_tool_calls=5))
    assert budgets.reserve("run_a", "model:0", steps=1, tokens=100, cost_usd=0.5).granted
    first = _decision(budgets, batch, "run_a", tokens=-60, tool_calls=2)
    assert first == Reservation(granted=True, reason="ok")
    # The step again (its commit lost, or its message came twice): a model call answers
    # again and settles again; neither the settlement nor the tool calls count twice.
    again = _decision(budgets, batch, "run_a", tokens=-90, tool_calls=2)
    assert again == Reservation(granted=True, reason="duplicate")
    # The plain settle (a final answer's path) sees the marker the carried one left.
    budgets.settle("run_a", "model:0", tokens=-10, cost_usd=0.0)
    batch.flush()
    usage = budgets.usage("run_a")
    assert (usage.steps, usage.tool_calls, usage.tokens) == (1, 2, 40)
    assert usage.cost_usd == pytest.approx(0.25)
    assert budgets.applied("run_a") == {"reserve:model:0", "settle:model:0", "reserve:tools:0"}
    # The decision commit requires this member (versioned.lua): it is there.
    assert client.smembers(keys.reservations("run_a")) == {"reserve:tools:0"}


def test_a_refused_tool_call_reservation_still_applies_its_settlement(
    budgets: Budgets, batch: WriteBatch
) -> None:
    # The model call was made and paid for, whatever comes of the tool calls it asked.
    budgets.open("run_b", BudgetLimits(max_tool_calls=1))
    assert budgets.reserve("run_b", "model:0", steps=1, tokens=100, cost_usd=0.5).granted
    refused = _decision(budgets, batch, "run_b", tokens=-70, tool_calls=2)
    assert not refused.granted and refused.limit == "tool_calls"
    assert refused.reason == "tool_calls: 0 used + 2 requested exceeds max_tool_calls=1"
    usage = budgets.usage("run_b")
    assert (usage.tool_calls, usage.tokens) == (0, 30)
    assert usage.cost_usd == pytest.approx(0.25)
    assert budgets.applied("run_b") == {"reserve:model:0", "settle:model:0"}


def test_a_settlement_no_reservation_carried_is_held_back_again(
    budgets: Budgets, batch: WriteBatch
) -> None:
    budgets.open("run_c", BudgetLimits())
    budgets.open("run_other", BudgetLimits(max_tool_calls=5))
    assert budgets.reserve("run_c", "model:0", steps=1, tokens=100).granted
    budgets.settle("run_c", "model:0", tokens=-60, cost_usd=0.0)
    # Declined or failed before its commit: the settlement goes out as any held write.
    with pytest.raises(RuntimeError), budgets.settling_in_reservation("run_c"):
        raise RuntimeError("the commit raised before its round trip")
    assert batch.pending == 1
    with budgets.settling_in_reservation("run_c"):
        # Another run's reservation does not carry it.
        (reply,) = batch.run(
            lambda pipe: budgets.add_reserve(pipe, "run_other", "tools:0", tool_calls=1)
        )
        assert Budgets.reservation(reply).granted
    assert batch.pending == 1
    batch.flush()
    assert budgets.usage("run_c").tokens == 40
    assert budgets.usage("run_other").tokens == 0
    # Nothing left to carry: the next reservation is a plain one.
    with budgets.settling_in_reservation("run_c"):
        assert batch.pending == 0
    assert budgets.usage("run_c").tokens == 40


def test_a_budget_opened_before_markers_moved_keeps_them_in_its_set(
    budgets: Budgets, batch: WriteBatch, client: redis.Redis
) -> None:
    """A run in flight across the upgrade: what it reserved before is still a duplicate."""
    budget, reservations = keys.budget("run_old"), keys.reservations("run_old")
    client.hset(budget, mapping={"started_at": "1", "max_steps": "3", "steps": 1, "tokens": 100})
    client.sadd(reservations, "reserve:model:0")
    assert budgets.reserve("run_old", "model:0", steps=1, tokens=100).reason == "duplicate"
    assert _decision(budgets, batch, "run_old", tokens=-60, tool_calls=1).granted
    assert _decision(budgets, batch, "run_old", tokens=-60, tool_calls=1).reason == "duplicate"
    usage = budgets.usage("run_old")
    assert (usage.steps, usage.tool_calls, usage.tokens) == (1, 1, 40)
    assert client.smembers(reservations) == {
        "reserve:model:0",
        "settle:model:0",
        "reserve:tools:0",
    }
    assert not [f for f in client.hkeys(budget) if str(f).startswith(("reserve:", "settle:"))]


def test_a_decision_commit_that_lost_to_the_same_step_charges_nothing_more(
    client: redis.Redis,
) -> None:
    event = TaskEvent(event_id="evt-lost", agent="calculator", input="add 2 and 3")
    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent=event.agent,
        goal=event.input,
        limits=BudgetLimits(max_tool_calls=5),
        messages=[ChatMessage(role="user", content=event.input)],
    )
    first, late = RunStore(client, run_ttl_s=3600), RunStore(client, run_ttl_s=3600)
    first.create(event, state)
    run_id = state.run_id
    assert first.budgets.reserve(run_id, "model:0", steps=1, tokens=100).granted

    def step_commit(current: RunState) -> RunState | None:
        return None if current.step != 0 else current.model_copy(update={"step": 1})

    def decide(store: RunStore, tokens: int) -> RunState | None:
        store.budgets.settle(run_id, "model:0", tokens=tokens, cost_usd=0.0)
        with store.budgets.settling_in_reservation(run_id):
            return store.update(run_id, step_commit, tool_calls=("tools:0", 2))

    for store in (first, late):
        store.begin_task()
    try:
        late.load(run_id)  # the redelivery read the step before the first one committed
        assert decide(first, -60) is not None
        assert decide(late, -80) is None  # its commit lost, and the step has moved on
    finally:
        for store in (first, late):
            store.end_task()
    usage = first.budgets.usage(run_id)
    assert (usage.steps, usage.tool_calls, usage.tokens) == (1, 2, 40)


def _budget_scripts(client: redis.Redis, run_id: str) -> list[list[str]]:
    """The budgets.lua calls on ``run_id`` that the slow log holds, oldest first: each
    call's ARGV (op, id, steps, tool_calls, tokens, cost_usd, now, ...; empty ones are
    left out, as the slow log's line shows them)."""
    run_keys = [keys.budget(run_id), keys.reservations(run_id)]
    calls: list[list[str]] = []
    for entry in reversed(client.slowlog_get(-1)):
        args = [a.decode() if isinstance(a, bytes) else str(a) for a in entry["command"].split()]
        if args[0].upper() == "EVALSHA" and args[3:5] == run_keys:
            calls.append(args[3 + int(args[2]) :])
    return calls


@pytest.fixture
def slowlog(client: redis.Redis) -> Iterator[None]:
    """Every command in the slow log, deterministically (unlike MONITOR's thread)."""
    config = {str(name): str(value) for name, value in client.config_get("slowlog-*").items()}
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 10_000)
    client.slowlog_reset()
    yield
    for name, value in config.items():
        client.config_set(name, value)
    client.slowlog_reset()


@pytest.mark.usefixtures("slowlog")
def test_a_step_runs_one_budget_script_for_its_settlement_and_tool_calls(
    runtime: Runtime, client: redis.Redis
) -> None:
    """Mutant: the decision commit sent outside settling_in_reservation (tool_calls.py):
    the settlement goes out as a script call of its own."""
    runtime.store.begin_task()
    try:
        run_id = planner.start(
            runtime, {"event_id": "evt-one", "agent": "calculator", "input": "2+3?"}
        )
    finally:
        runtime.store.end_task()
    assert run_id is not None
    calls = _budget_scripts(client, run_id)
    assert [c[:2] for c in calls] == [["reserve", "model:0"], ["reserve", "tools:0"]]
    tools = calls[1]
    # One tool call, and the settlement of model:0 carried (its id, tokens, cost last).
    assert tools[3] == "1" and tools[-3] == "model:0"
    usage = runtime.store.budgets.usage(run_id)
    (model_call,) = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "model_call"]
    # Settled to what the call used: the estimate reserved was taken back exactly.
    assert usage.tokens == model_call["input_tokens"] + model_call["output_tokens"]
    assert (usage.steps, usage.tool_calls) == (1, 1)


def test_a_withdrawn_write_leaves_every_awaited_reply_to_its_own_callback(
    client: redis.Redis, batch: WriteBatch
) -> None:
    """Mutant: WriteBatch.withdraw leaving the places of later awaited writes as they were."""
    replies: list[tuple[str, object]] = []
    assert batch.defer_then(lambda r: replies.append(("before", r)), "set", "k:a", "1", nx=True)
    assert batch.defer("set", "k:taken", "x")
    assert batch.defer_then(lambda r: replies.append(("after", r)), "incr", "k:n")
    assert batch.withdraw(lambda command, args: args[0] == "k:a") is None  # awaited: kept
    assert batch.withdraw(lambda command, args: args[0] == "k:taken") == ("k:taken", "x")
    batch.flush()
    assert replies == [("before", True), ("after", 1)]
    assert client.get("k:taken") is None


def test_a_redelivered_start_leaves_an_open_budget_as_it_is(
    budgets: Budgets, client: redis.Redis
) -> None:
    """Opened once: a second open, as a redelivered start sends, writes nothing, so a
    budget opened before markers moved keeps reading them from its set."""
    budget = keys.budget("run_old")
    client.hset(budget, mapping={"started_at": "1", "max_steps": "3", "steps": 1})
    client.sadd(keys.reservations("run_old"), "reserve:model:0")
    budgets.open("run_old", BudgetLimits(max_steps=99, max_tokens=5))
    assert client.hgetall(budget) == {"started_at": "1", "max_steps": "3", "steps": "1"}
    assert budgets.reserve("run_old", "model:0", steps=1).reason == "duplicate"
    budgets.open("run_new", BudgetLimits(max_steps=2), started_at=10.0)
    opened = client.hgetall(keys.budget("run_new"))
    assert (opened["started_at"], opened["markers"], opened["max_steps"]) == ("10.0", "hash", "2")
    assert opened["max_tokens"] == ""
