"""Conversation threads: history for a thread's runs, and one run at a time, in order.

An event naming a ``thread_id`` is admitted at intake by one script (threads.lua):
its id joins the thread's queue unless it is there already, and only the event at
the head of the queue gets a run. The others wait in Redis, holding no worker and no
greenlet. The order is that of arrival at intake, corrected by publish time: the
first event to arrive at an idle thread takes it; an event arriving while the thread
is taken goes behind its run and before every waiting event published after it
(Runtime._send stamps the publish time; an event without the stamp counts as
published when it arrived). So of events published at once, only the first to arrive
can run ahead of one published before it.

When the head's run ends, whatever its status, the terminal commit itself
(``lifecycle.finish`` side writes) appends the run's turn to the thread's history
and takes its event off the queue. What that committed state waits for, the next
event's run, is published by the outbox (``hand_over``) after the commit; a worker
killed in between leaves the thread in the busy index with a head that has no run,
and the reconciler (``sweep``) publishes it again. Publishing it twice is harmless:
intake creates a run once per event id.
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any, cast

from tether import keys
from tether.errors import ModelError
from tether.memory.window import KeptCall, Turn, fit
from tether.messages import TaskEvent
from tether.metrics import PUBLISHED_AT_HEADER
from tether.state import ChatMessage, RunState
from tether.store import run_id_for
from tether.versioned import SideWrite

if TYPE_CHECKING:
    from tether.agents import Agent
    from tether.runtime import Runtime

ADMIT_SCRIPT = files("tether.memory").joinpath("threads.lua").read_text()
# Turns kept per thread; older ones leave the history for good.
MAX_TURNS = 200
STARTS_NOW = 0
ALREADY_STARTED = -1


def admit(rt: Runtime, event: TaskEvent) -> int:
    """Queue ``event`` on its thread; returns its place (0: start it now, -1: run exists)."""
    assert event.thread_id is not None
    thread_id = event.thread_id
    place = rt.store.client.eval(
        ADMIT_SCRIPT,
        6,
        keys.thread_queue(thread_id),
        keys.thread_events(thread_id),
        keys.run(run_id_for(event.event_id)),
        keys.THREADS,
        keys.THREADS_BUSY,
        keys.thread_order(thread_id),
        event.event_id,
        event.model_dump_json(),
        time.time(),
        thread_id,
        _published_at(),
    )
    return int(cast(int, place))


def _published_at() -> float:
    """When the event being taken in was published (Runtime._send stamps it); else now."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    headers = getattr(request, "__dict__", {}) if request is not None else {}
    try:
        return float(headers.get(PUBLISHED_AT_HEADER) or time.time())
    except (TypeError, ValueError):
        return time.time()


def turns(rt: Runtime, thread_id: str) -> list[Turn]:
    raw = cast(list[str], rt.store.client.lrange(keys.thread_turns(thread_id), 0, -1))
    return [Turn.model_validate_json(t) for t in raw]


def turn_of(state: RunState) -> Turn:
    """The run's turn: its input, its answer, and the calls of tools it keeps."""
    arguments = {
        call.id: call.arguments
        for message in state.messages
        if message.tool_calls
        for call in message.tool_calls
    }
    calls = [
        KeptCall(
            tool=obs.tool,
            arguments=arguments.get(obs.tool_call_id, "{}"),
            ok=obs.ok,
            output=obs.output,
            error=obs.error,
        )
        for obs in state.completed_actions
        if obs.tool in state.thread_keep
    ]
    return Turn(
        run_id=state.run_id,
        event_id=state.event_id,
        input=state.goal,
        status=str(state.status),
        answer=state.result,
        calls=calls,
    )


def ending_writes(state: RunState) -> list[SideWrite]:
    """What a thread run's terminal commit writes with it: its turn, and the hand-over.

    The commit wins once, so the turn is appended once and the event leaves the
    queue once; the next event's start is the outbox's (``hand_over``).
    """
    if state.thread_id is None:
        return []
    thread_id, now = state.thread_id, time.time()
    return [
        SideWrite("RPUSH", keys.thread_turns(thread_id), (turn_of(state).model_dump_json(),)),
        SideWrite("LTRIM", keys.thread_turns(thread_id), (-MAX_TURNS, -1)),
        SideWrite("ZADD", keys.thread_runs(thread_id), (now, state.run_id)),
        SideWrite("LREM", keys.thread_queue(thread_id), (1, state.event_id)),
        SideWrite("HDEL", keys.thread_events(thread_id), (state.event_id,)),
        SideWrite("ZREM", keys.thread_order(thread_id), (state.event_id,)),
        SideWrite("ZADD", keys.THREADS, (now, thread_id)),
        # Its score is when the hand-over became due: the reconciler's clock for it.
        SideWrite("ZADD", keys.THREADS_BUSY, (now, thread_id)),
    ]


def head(rt: Runtime, thread_id: str) -> TaskEvent | None:
    """The event whose run is the thread's now, or is next to start."""
    pipe = rt.store.client.pipeline(transaction=True)
    pipe.lindex(keys.thread_queue(thread_id), 0)
    pipe.hgetall(keys.thread_events(thread_id))
    event_id, events = pipe.execute()
    if event_id is None or event_id not in events:
        return None
    return TaskEvent.model_validate_json(events[event_id])


def hand_over(rt: Runtime, thread_id: str) -> list[str]:
    """Start the thread's next event if it has no run yet (outbox); returns what was sent."""
    event = head(rt, thread_id)
    if event is None or rt.store.status(run_id_for(event.event_id)) is not None:
        return []
    rt.publish_event(event)
    return [f"thread {thread_id}: event {event.event_id}"]


_RELEASE = """
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def sweep(rt: Runtime, idle_since: float, limit: int = 1000) -> list[str]:
    """Re-publish the hand-overs of busy threads idle since ``idle_since`` (reconciler)."""
    client = rt.store.client
    sent: list[str] = []
    busy = cast(
        list[str], client.zrangebyscore(keys.THREADS_BUSY, "-inf", idle_since, start=0, num=limit)
    )
    for thread_id in busy:
        if client.eval(_RELEASE, 2, keys.thread_queue(thread_id), keys.THREADS_BUSY, thread_id):
            continue  # nothing queued: the thread is idle, not stalled
        client.zadd(keys.THREADS_BUSY, {thread_id: time.time()}, xx=True)
        sent += hand_over(rt, thread_id)
    return sent


def runs_of(rt: Runtime, thread_id: str) -> list[str]:
    """The thread's ended runs (oldest first), then its running and queued ones."""
    ended = cast(list[str], rt.store.client.zrange(keys.thread_runs(thread_id), 0, -1))
    queued = cast(list[str], rt.store.client.lrange(keys.thread_queue(thread_id), 0, -1))
    return [*ended, *(run_id_for(e) for e in queued)]


def queued(rt: Runtime, thread_id: str) -> list[str]:
    """Event ids on the thread's queue: its running run's first, then those waiting."""
    return cast(list[str], rt.store.client.lrange(keys.thread_queue(thread_id), 0, -1))


def recent(rt: Runtime, limit: int = 50) -> list[tuple[str, float]]:
    return cast(
        list[tuple[str, float]],
        rt.store.client.zrevrange(keys.THREADS, 0, limit - 1, withscores=True),
    )


HISTORY_BEGINS = "Earlier turns of this conversation thread follow."
HISTORY_ENDS = "End of the earlier turns; the new request follows."
SUMMARY_INSTRUCTIONS = (
    "Summarise the earlier part of this conversation for the assistant who continues it: "
    "keep names, ids, amounts, decisions and open questions; at most 120 words."
)


def context(rt: Runtime, agent: Agent, thread_id: str) -> tuple[list[ChatMessage], dict[str, Any]]:
    """The thread's history as chat messages, fitted into the agent's window, and what was
    done to fit it (the run's ``thread_context`` log entry)."""
    history = turns(rt, thread_id)
    fitted = fit(history, agent.thread_window_tokens)
    messages: list[ChatMessage] = []
    described: dict[str, Any] = {
        "thread_id": thread_id,
        "window_tokens": agent.thread_window_tokens,
        "turns": len(history),
        "included": [t.run_id for _, t in fitted.included],
        "included_tokens": fitted.tokens,
        "dropped": [t.run_id for _, t in fitted.dropped],
        "summarised": [],
    }
    if fitted.dropped and agent.thread_summary:
        request = [
            ChatMessage(role="system", content=SUMMARY_INSTRUCTIONS),
            ChatMessage(role="user", content="\n\n".join(t.text() for _, t in fitted.dropped)),
        ]
        try:
            response = agent.model.complete(request, [])
        except ModelError as exc:
            described["summary_error"] = str(exc)
        else:
            if response.content:
                messages.append(
                    ChatMessage(
                        role="system",
                        content=f"Summary of earlier turns in this thread: {response.content}",
                    )
                )
                described["summarised"] = described["dropped"]
                described["dropped"] = []
                described["summary_tokens"] = response.total_tokens
    for index, turn in fitted.included:
        messages += turn.messages(index)
    if messages:
        messages = [
            ChatMessage(role="system", content=HISTORY_BEGINS),
            *messages,
            ChatMessage(role="system", content=HISTORY_ENDS),
        ]
    return messages, described
