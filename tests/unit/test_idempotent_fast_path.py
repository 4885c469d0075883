"""The idempotent fast path on a real Redis, handlers called in this process.

An idempotent tool (as the agent loaded on the worker declares it) runs without
the action's lease: two deliveries racing may both run it, and the first result
stored is the action's, so its observation, metrics, log entry and budget count
once. A non-idempotent tool keeps the lease: a second delivery meanwhile runs
nothing. The Redis commands one action costs are counted here too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis
from prometheus_client import REGISTRY
from redis.connection import Connection

from tests.unit.test_planner_fencing import queued
from tether import planner
from tether.agent import definition as agents
from tether.agent.definition import Agent, register
from tether.agent.tools import ToolContext, tool
from tether.errors import ActionInFlightError
from tether.executor import actions as executor
from tether.models import ModelResponse, ScriptedModel, text, tool_call
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import ChatMessage, RunStatus
from tether.transport.celery_app import OBSERVE, PLAN_QUEUE
from tether.transport.wire import Observation, ToolAction

# A second delivery of the same message, run in the middle of the tool's call.
MEANWHILE: list[Callable[[], object]] = []
ran: list[str] = []
# Whether the action's lease was held while the tool ran, one entry per call.
leased: list[bool] = []
_client: list[redis.Redis] = []


def _call(ctx: ToolContext) -> int:
    ran.append(ctx.action_id)
    call = len(ran)
    leased.append(bool(_client[0].exists(keys.action_lock(ctx.action_id))))
    if MEANWHILE:
        MEANWHILE.pop()()
    return call


@tool
def fast_lookup(ctx: ToolContext, key: str) -> str:
    """Look something up (idempotent); each call's output says which call it was."""
    return f"found {key} by call {_call(ctx)}"


@tool(idempotent=False)
def fast_transfer(ctx: ToolContext, cents: int) -> str:
    """Move money: a side effect that must not happen twice."""
    return f"moved {cents} by call {_call(ctx)}"


def _then_answer(name: str, arguments: dict[str, object]) -> ScriptedModel:
    def script(messages: list[ChatMessage]) -> ModelResponse:
        if any(m.role == "tool" for m in messages):
            return text("done")
        return tool_call(name, arguments)

    return ScriptedModel(script, label="fast")


LOOKER = Agent(
    name="fast_looker",
    instructions="Look it up.",
    model=_then_answer("fast_lookup", {"key": "k"}),
    tools=[fast_lookup],
)
TRANSFERER = Agent(
    name="fast_transferer",
    instructions="Transfer.",
    model=_then_answer("fast_transfer", {"cents": 5}),
    tools=[fast_transfer],
)


@pytest.fixture(autouse=True)
def _agents(runtime: Runtime) -> Iterator[None]:
    register(LOOKER)
    register(TRANSFERER)
    MEANWHILE.clear()
    ran.clear()
    leased.clear()
    _client[:] = [runtime.store.client]
    yield
    MEANWHILE.clear()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def start(rt: Runtime, agent: str, event_id: str) -> tuple[str, ToolAction]:
    run_id = planner.start(rt, {"event_id": event_id, "agent": agent, "input": "go"})
    assert run_id is not None
    (action,) = rt.store.load(run_id).pending_actions
    return run_id, action


def sent_observations(rt: Runtime) -> list[Observation]:
    return [
        Observation.model_validate(kwargs["observation"])
        for task, kwargs in queued(rt, PLAN_QUEUE)
        if task == OBSERVE
    ]


def tool_calls_logged(rt: Runtime, run_id: str) -> int:
    return sum(1 for _, e in rt.store.log.read(run_id) if e.kind == "tool_call")


def test_two_racing_deliveries_of_an_idempotent_action_count_once(runtime: Runtime) -> None:
    """Mutants: the stored result written last-writer-wins (SET without NX); the loser
    sending, counting or logging its own outcome."""
    run_id, action = start(runtime, "fast_looker", "evt-fast-race")
    # The second delivery arrives while the first is mid-call, and finishes first.
    MEANWHILE.append(lambda: executor.execute(runtime, action))
    labels = {"agent": "fast_looker", "tool": "fast_lookup", "outcome": "ok"}
    before = sample("tether_tool_calls_total", **labels)
    latency = sample("tether_tool_latency_seconds_count", agent="fast_looker", tool="fast_lookup")
    executor.execute(runtime, action)

    assert ran == [action.action_id, action.action_id]  # at most twice: it is idempotent
    assert leased == [False, False]  # no lease round trip before either call
    stored = runtime.store.results.get(action.action_id)
    assert stored is not None and stored.output == "found k by call 2"  # the first stored
    # Both deliveries hand the planner the stored result, the first writer's.
    assert sent_observations(runtime) == [stored, stored]
    assert sample("tether_tool_calls_total", **labels) - before == 1
    assert (
        sample("tether_tool_latency_seconds_count", agent="fast_looker", tool="fast_lookup")
        == latency + 1
    )
    assert tool_calls_logged(runtime, run_id) == 1

    for observation in sent_observations(runtime):
        planner.observe(runtime, observation)
    done = runtime.store.load(run_id)
    assert done.status == RunStatus.succeeded
    assert done.completed_actions == [stored]
    assert runtime.store.budgets.usage(run_id).tool_calls == 1


def test_a_redelivery_after_the_result_is_stored_runs_nothing(runtime: Runtime) -> None:
    """The fast path still reads the stored result first: a late copy sends it again."""
    run_id, action = start(runtime, "fast_looker", "evt-fast-late")
    executor.execute(runtime, action)
    executor.execute(runtime, action)
    assert ran == [action.action_id]
    stored = runtime.store.results.get(action.action_id)
    assert sent_observations(runtime) == [stored, stored]
    assert tool_calls_logged(runtime, run_id) == 1


def _run_with_a_second_delivery_meanwhile(
    runtime: Runtime, action: ToolAction
) -> list[BaseException]:
    """Run ``action`` while a second delivery of it arrives mid-call; what refused that one
    (ActionInFlightError: the lease is held)."""
    refused: list[BaseException] = []

    def second_delivery() -> None:
        with pytest.raises(ActionInFlightError) as caught:
            executor.execute(runtime, action)
        refused.append(caught.value)

    MEANWHILE.append(second_delivery)
    executor.execute(runtime, action)
    return refused


def test_a_non_idempotent_action_keeps_its_lease_and_runs_once(runtime: Runtime) -> None:
    """Mutant: the fast path taken for every tool (no lease): the second delivery would
    find no lease and, with the first still mid-call, ask a human about a call that
    completes."""
    run_id, action = start(runtime, "fast_transferer", "evt-fast-transfer")
    refused = _run_with_a_second_delivery_meanwhile(runtime, action)
    assert len(refused) == 1
    assert ran == [action.action_id]
    assert leased == [True]
    stored = runtime.store.results.get(action.action_id)
    assert stored is not None and stored.ok
    assert sent_observations(runtime) == [stored]
    assert tool_calls_logged(runtime, run_id) == 1


def test_the_message_flag_does_not_choose_the_fast_path(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned while the tool was idempotent, run where a deploy made it non-idempotent:
    the worker's agent decides, so the call takes the lease (mutant: trusting
    ``action.idempotent``)."""
    _, action = start(runtime, "fast_looker", "evt-fast-skew")
    assert action.idempotent
    careful = tool(idempotent=False)(fast_lookup.fn)
    redeployed = Agent(
        name=LOOKER.name, instructions=LOOKER.instructions, model=LOOKER.model, tools=[careful]
    )
    monkeypatch.setitem(agents._loaded, LOOKER.name, redeployed)
    assert not executor.declared_idempotent(action)
    refused = _run_with_a_second_delivery_meanwhile(runtime, action)
    assert leased == [True] and len(refused) == 1 and ran == [action.action_id]


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


def test_redis_commands_per_action(runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    """What one action costs in Redis commands inside a task, fast path and leased:
    the fast path saves the lease's SET (its result's SET NX GET replaces SET NX)."""
    counts = {}
    for agent in ("fast_looker", "fast_transferer"):
        _, action = start(runtime, agent, f"evt-fast-count-{agent}")
        runtime.store.batch.begin()
        try:
            client = runtime.store.client
            before = _commands(client)
            executor.execute(runtime, action)
            runtime.store.batch.flush()
            # INFO itself counts as one command.
            counts[agent] = _commands(client) - before - 1
        finally:
            runtime.store.batch.end()
    with capsys.disabled():
        print(f"\nredis commands per tool action: {counts}")
    assert counts["fast_looker"] < counts["fast_transferer"]


def _in_task(rt: Runtime, delivery: Callable[[], object]) -> None:
    """``delivery`` as a worker runs it: its writes and publishes held back until it ends."""
    rt.store.begin_task()
    try:
        delivery()
    finally:
        rt.store.end_task()


def _in_another_task(rt: Runtime, delivery: Callable[[], object]) -> None:
    """A task of another worker thread (its held writes apart), run to its end now."""
    worker = threading.Thread(target=_in_task, args=(rt, delivery))
    worker.start()
    worker.join()


def _lifecycle_tool_calls(rt: Runtime, run_id: str) -> int:
    lines = cast(list[tuple[str, dict[str, str]]], rt.store.client.xrange(keys.LIFECYCLE_STREAM))
    return sum(1 for _, f in lines if f["run_id"] == run_id and f["kind"] == "tool_call")


def test_racing_deliveries_inside_tasks_store_log_and_count_once(runtime: Runtime) -> None:
    """As on a worker: the result goes out with the task's last round trip, so the loser
    learns it lost after publishing its own outcome; the planner takes the stored one.
    Mutants: the script storing without checking for an earlier result; it logging for
    the loser; the loser counting; the reply never handed back (the winner uncounted)."""
    run_id, action = start(runtime, "fast_looker", "evt-fast-race-tasks")
    MEANWHILE.append(lambda: _in_another_task(runtime, lambda: executor.execute(runtime, action)))
    labels = {"agent": "fast_looker", "tool": "fast_lookup", "outcome": "ok"}
    before = sample("tether_tool_calls_total", **labels)
    latency = sample("tether_tool_latency_seconds_count", agent="fast_looker", tool="fast_lookup")
    dead = runtime.store.client.xlen(keys.DEAD_STREAM)
    _in_task(runtime, lambda: executor.execute(runtime, action))

    assert ran == [action.action_id, action.action_id] and leased == [False, False]
    stored = runtime.store.results.get(action.action_id)
    assert stored is not None and stored.output == "found k by call 2"
    winner, loser = sent_observations(runtime)
    assert winner == stored
    assert loser.output == "found k by call 1"  # its own: it could not know it lost
    assert sample("tether_tool_calls_total", **labels) - before == 1
    assert (
        sample("tether_tool_latency_seconds_count", agent="fast_looker", tool="fast_lookup")
        == latency + 1
    )
    assert tool_calls_logged(runtime, run_id) == 1
    assert _lifecycle_tool_calls(runtime, run_id) == 1

    for observation in (winner, loser):
        planner.observe(runtime, observation)
    done = runtime.store.load(run_id)
    assert done.status == RunStatus.succeeded
    assert done.completed_actions == [stored]
    assert runtime.store.budgets.usage(run_id).tool_calls == 1
    # The loser's message is a loser's, not a forgery: nothing refused.
    assert runtime.store.client.xlen(keys.DEAD_STREAM) == dead


def test_a_redelivery_inside_a_task_after_the_result_is_stored_counts_nothing(
    runtime: Runtime,
) -> None:
    """A late copy finds the result in its first round trip and sends it, unrun."""
    run_id, action = start(runtime, "fast_looker", "evt-fast-late-tasks")
    labels = {"agent": "fast_looker", "tool": "fast_lookup", "outcome": "ok"}
    before = sample("tether_tool_calls_total", **labels)
    _in_task(runtime, lambda: executor.execute(runtime, action))
    _in_task(runtime, lambda: executor.execute(runtime, action))
    assert ran == [action.action_id]
    stored = runtime.store.results.get(action.action_id)
    assert sent_observations(runtime) == [stored, stored]
    assert sample("tether_tool_calls_total", **labels) - before == 1
    assert tool_calls_logged(runtime, run_id) == 1
    assert _lifecycle_tool_calls(runtime, run_id) == 1


def test_an_idempotent_action_costs_two_round_trips_inside_a_task(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One to read what the action needs, one to store its result, log it and publish
    its observation (bench.floor's tool hop). Mutant: the result stored at once."""
    _, action = start(runtime, "fast_looker", "evt-fast-trips")
    trips: list[bytes] = []
    send = Connection.send_packed_command

    def counted(self: Connection, command: bytes | list[bytes], check_health: bool = True) -> None:
        sent = b"".join(command) if isinstance(command, list) else command
        # Not the test tool's own look at the lease (_call).
        if not sent.startswith(b"*2\r\n$6\r\nEXISTS\r\n"):
            trips.append(sent)
        send(self, command, check_health)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    _in_task(runtime, lambda: executor.execute(runtime, action))
    monkeypatch.undo()
    assert ran == [action.action_id]
    assert len(trips) == 2
    assert sent_observations(runtime) == [runtime.store.results.get(action.action_id)]
