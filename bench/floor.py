"""The floor: two bare Celery hops plus the least Redis work DESIGN.md asks of a step.

A chain like bench.bare's (2N+1 hops for N steps, alternating between two
queues, one worker each), whose hops do what any Celery-based implementation of
the design's step must, and nothing more. The planning hop commits what came
back (a fenced compare-and-set of the run's document, its log entry in the run's
stream and in the lifecycle stream, the message appended, the next model call's
reservation: one script, one round trip), then commits its decision the same way
and publishes the action in that commit's round trip (tether.transport.held_publish). The
tool hop's tool is idempotent, so it takes the design's fast path: no lease, it reads
the action's stored result in one round trip, then stores the result (first writer
wins) and its log entry and publishes the observation in one more. The queues are
Tether's kind (``tether.`` names: the landing move that invariant 1 needs,
tether.transport.reliable), and the messages, documents and log entries carry
payloads of the sizes Tether's have, built once.

Left out, so that this is a lower bound and not an implementation: the model
and its validation, pydantic, tool schemas, metrics, logs of its own, and the
check a real step makes that its commit won before it publishes. A ratio to
bare Celery below this floor's is out of reach for any implementation of the
design on these cores; the gap between the floor and Tether is what Tether's
own code adds.

Run a worker with ``celery -A bench.floor worker -Q tether.floor.plan`` (the harness does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from kombu.entity import Exchange, Queue

from tether.config import get_settings
from tether.store.batch import WriteBatch
from tether.store.scripts import Script
from tether.store.state import ChatMessage, RunState
from tether.transport import held_publish
from tether.transport.celery_app import create_app, direct_route
from tether.transport.wire import EventKind, Observation, RunEvent, ToolAction

QUEUES = ("tether.floor.plan", "tether.floor.tools")
HOP = "bench.floor.hop"
DONE = "bench:floor:done"
LIFECYCLE = "bench:floor:events"
COMMIT = Script("bench/floor.lua", Path(__file__).with_name("floor.lua").read_text())

settings = get_settings()
app = create_app(settings, name="bench-floor")
app.conf.task_queues = [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES]
app.conf.task_default_queue = QUEUES[0]
_writes: WriteBatch | None = None


def _payloads() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """A step's messages, and its document and log entries as stored, as big as a
    bench_stepper step's."""
    run_id = "run_0123456789abcdef0123"
    action = ToolAction(
        action_id=f"{run_id}:7:0",
        run_id=run_id,
        agent="bench_stepper",
        step=7,
        tool="noop",
        tool_call_id="call_0123456789abcdef",
        arguments={"i": 7},
    )
    observation = Observation(
        action_id=action.action_id,
        run_id=run_id,
        step=7,
        tool="noop",
        tool_call_id=action.tool_call_id,
        ok=True,
        output=7,
        latency_ms=0.05,
    )
    state = RunState(
        run_id=run_id,
        event_id="0123456789abcdef0123456789abcdef",
        agent="bench_stepper",
        agent_version="44a294d492dd",
        goal="steps=20",
        step=7,
        pending_actions=[action],
    )
    assistant = ChatMessage(role="assistant", content=None)
    tool_message = ChatMessage(
        role="tool", tool_call_id=action.tool_call_id, content='{"result": 7}'
    )

    def entry(kind: EventKind, data: dict[str, Any]) -> str:
        return RunEvent(run_id=run_id, kind=kind, step=7, data=data).model_dump_json()

    messages = [tool_message.to_openai(), assistant.to_openai()]
    messages_sent = {
        "action": action.model_dump(mode="json"),
        "observation": observation.model_dump(mode="json"),
    }
    return messages_sent, {
        "doc": state.model_dump_json(),
        "assistant": assistant.model_dump_json(),
        "tool_message": tool_message.model_dump_json(),
        "observed": entry(EventKind.observation, {"action_id": action.action_id, "ok": True}),
        "model_call": entry(EventKind.model_call, {"model": "scripted", "messages": messages}),
        "decision": entry(EventKind.decision, {"actions": [action.model_dump(mode="json")]}),
        "tool_call": entry(EventKind.tool_call, {"action_id": action.action_id, "output": 7}),
        "result": observation.model_dump_json(),
    }


MESSAGES, PAYLOADS = _payloads()


def writes() -> WriteBatch:
    global _writes
    if _writes is None:
        _writes = WriteBatch(redis.Redis.from_url(settings.redis_url))
    return _writes


def send_hop(
    celery_app: Any, chain: str, remaining: int, side: int, version: int = 0, **options: Any
) -> None:
    kind = "action" if side == 1 else "observation"
    celery_app.send_task(
        HOP,
        kwargs={
            "chain": chain,
            "remaining": remaining,
            "side": side,
            "version": version,
            kind: MESSAGES[kind],
        },
        **direct_route(QUEUES[side]),
        **options,
    )


def _commit(chain: str, version: int, message: str, marker: str, *entries: str) -> tuple[Any, ...]:
    """EVALSHA's arguments for floor.lua."""
    run = f"bench:floor:{{{chain}}}"
    keys = (run, f"{run}:log", LIFECYCLE, f"{run}:messages", f"{run}:budget", f"{run}:reservations")
    return (
        COMMIT.sha,
        len(keys),
        *keys,
        version,
        PAYLOADS["doc"],
        message,
        marker,
        version,  # the step the lifecycle lines name: any number of the same size will do
        *entries,
    )


def _publish(chain: str, remaining: int, side: int, version: int) -> None:
    """The next hop, held to leave with this task's writes, as Tether's Runtime._send does."""
    with (
        app.producer_or_acquire() as producer,
        held_publish.publishing_into(writes()),
        producer.batch(),
    ):
        send_hop(app, chain, remaining, side, version, producer=producer)


@app.task(name=HOP)
def hop(chain: str, remaining: int, side: int, version: int, **_payload: Any) -> None:
    batch = writes()
    batch.begin()
    try:
        if side == 1:
            _tool(batch, chain, remaining, version)
            return
        # What came back, committed with the next model call's reservation.
        observed = _commit(
            chain, version, PAYLOADS["tool_message"], f"model:{remaining}", PAYLOADS["observed"]
        )
        (version,) = batch.run(lambda pipe: pipe.execute_command("EVALSHA", *observed))
        if remaining <= 1:
            batch.client.lpush(DONE, f"{chain} {time.time():.6f}")
            return
        # The decision, committed in the round trip that carries the action.
        decided = _commit(
            chain,
            version,
            PAYLOADS["assistant"],
            f"tools:{remaining}",
            PAYLOADS["model_call"],
            PAYLOADS["decision"],
        )
        batch.defer("evalsha", *decided)
        _publish(chain, remaining - 1, 1, version + 1)
    finally:
        batch.end()


def _tool(batch: WriteBatch, chain: str, remaining: int, version: int) -> None:
    """The action's stored result in one round trip (an idempotent tool takes no lease);
    its result (first writer wins), log entry and observation in the next."""
    action = f"bench:floor:action:{{{chain}}}:{remaining}"
    batch.run(lambda pipe: pipe.get(action))
    batch.defer("set", action, PAYLOADS["result"], nx=True)
    batch.defer("xadd", f"bench:floor:{{{chain}}}:log", {"event": PAYLOADS["tool_call"]})
    batch.defer(
        "xadd", LIFECYCLE, {"run_id": chain, "kind": "tool_call", "step": remaining}, maxlen=100_000
    )
    _publish(chain, remaining - 1, 0, version)
