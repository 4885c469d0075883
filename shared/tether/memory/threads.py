"""Conversation threads: history for a thread's runs, and one run at a time, in order.

An event naming a ``thread_id`` is admitted at intake by one script (threads.lua):
its id joins the thread's queue unless it is there already, and only the event at
the head of the queue gets a run. The others wait in Redis, holding no worker and no
greenlet.

The order is publish order. A publisher takes each event's place from the thread's
counter (``next_seq``, one HINCRBY; ``client.submit`` does it), so events published at
the same instant from anywhere still have one order, whichever reaches intake first.
An event whose predecessor has not reached intake yet waits for it, as the head too:
for ``TETHER_THREAD_GAP_S`` after its publish, then (the reconciler's ``sweep``) it goes
ahead, because its predecessor may never come (a publisher that died between taking
its number and publishing). A predecessor rejected at intake is skipped at once
(``skip``). Events without a number (publishers of their own that do not take one)
go in the order of their publish times (Runtime._send stamps it).

When the head's run ends, whatever its status, the terminal commit itself
(``lifecycle.finish`` side writes) appends the run's turn to the thread's history
and takes its event off the queue. What that committed state waits for, the next
event's run, is published by the outbox (``hand_over``) after the commit; a worker
killed in between leaves the thread in the busy index with a head that has no run,
and the reconciler (``sweep``) publishes it again. Publishing it twice is harmless:
intake creates a run once per event id.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

import redis

from tether.errors import ModelError
from tether.memory.window import KeptCall, Turn, fit
from tether.models.prices import reserved_cost_usd
from tether.observability.logs import log
from tether.observability.metrics import PUBLISHED_AT_HEADER
from tether.store import keys
from tether.store.budgets import BudgetUsage
from tether.store.runs import run_id_for
from tether.store.scripts import Script
from tether.store.state import ChatMessage, RunState
from tether.store.versioned import SideWrite
from tether.transport.wire import BudgetLimits, TaskEvent

if TYPE_CHECKING:
    from tether.agent.definition import Agent
    from tether.runtime import Runtime

THREADS = Script.load("tether.memory", "threads.lua")
THREAD_SKIP = Script.load("tether.memory", "thread_skip.lua")
THREAD_SCREEN = Script.load("tether.memory", "thread_screen.lua")
# Turns kept per thread; older ones leave the history for good.
MAX_TURNS = 200
# What admit says of an event besides its place in the queue.
STARTS_NOW = 0
ALREADY_STARTED = -1
WAITS_FOR_EARLIER = -2


def queue_keys(thread_id: str) -> list[str]:
    """The keys of the thread's queue, in the order threads.lua and thread_skip.lua take them."""
    return [
        keys.thread_queue(thread_id),
        keys.thread_events(thread_id),
        keys.thread_order(thread_id),
        keys.thread_seq(thread_id),
        keys.thread_skipped(thread_id),
    ]


def admit(rt: Runtime, event: TaskEvent) -> int:
    """Queue ``event`` on its thread; returns its place in the queue, STARTS_NOW,
    ALREADY_STARTED, or WAITS_FOR_EARLIER (it is next but one published before it is
    still on its way)."""
    assert event.thread_id is not None
    thread_id = event.thread_id
    # Read before the script, since the run lives in another slot of a Redis Cluster:
    # a run, once created, stays, and one created meanwhile is this very event's, which
    # the script finds running (its creation and steps are fenced).
    exists = rt.store.status(run_id_for(event.event_id)) is not None
    now = time.time()
    place, due = cast(
        list[Any],
        THREADS.run(
            rt.store.client,
            keys=queue_keys(thread_id),
            args=[
                event.event_id,
                event.model_dump_json(),
                now,
                int(exists),
                _published_at(),
                event.thread_seq or "",
                rt.settings.thread_gap_s,
            ],
        ),
    )
    place = int(place)
    if place == ALREADY_STARTED:
        return place
    # The indexes across threads, after the script: a worker that dies first leaves the
    # event unacknowledged, and its redelivery is admitted again and writes them again.
    pipe = rt.store.client.pipeline(transaction=False)
    pipe.zadd(keys.THREADS, {thread_id: now})
    pipe.zadd(keys.THREADS_BUSY, {thread_id: now})
    if place == WAITS_FOR_EARLIER:
        pipe.zadd(keys.THREADS_GAPS, {thread_id: float(due)})
    elif place == STARTS_NOW:
        pipe.zrem(keys.THREADS_GAPS, thread_id)
    pipe.execute()
    return place


def keep_screened(rt: Runtime, event: TaskEvent, goal: str) -> None:
    """Put ``goal``, the input as its guardrails left it, in the thread's copy of
    ``event``, which stays queued for as long as its run lives: a redacted value is
    kept nowhere in Redis as it was published (thread_screen.lua)."""
    if event.thread_id is None or goal == event.input:
        return
    queued = keys.thread_events(event.thread_id)
    for _ in range(3):
        raw = cast(str | None, rt.store.client.hget(queued, event.event_id))
        if raw is None:
            return
        copy = json.loads(raw)
        copy["input"] = goal
        replaced = THREAD_SCREEN.run(
            rt.store.client, keys=[queued], args=[event.event_id, raw, json.dumps(copy)]
        )
        if replaced:
            return


def next_seq(rt: Runtime, thread_id: str) -> int:
    """The thread's next place in publish order, for the event about to be published."""
    return int(rt.store.client.hincrby(keys.thread_seq(thread_id), "published", 1))


def skip(rt: Runtime, event: TaskEvent) -> list[str]:
    """An event intake rejected: the thread no longer waits for its number, and the event
    leaves the queue, so that the next one starts (thread_skip.lua).

    A queued event is rejected when its turn comes if its agent went away meanwhile (a
    rolling deploy): left at the head, the hand-over would publish it again and again.
    """
    if event.thread_id is None:
        return []
    thread_id = event.thread_id
    dropped = THREAD_SKIP.run(
        rt.store.client,
        keys=queue_keys(thread_id),
        args=[event.event_id, event.thread_seq or ""],
    )
    if int(cast(int, dropped)):
        log.warning("thread_event_dropped", event_id=event.event_id, thread_id=thread_id)
    elif event.thread_seq is None:
        return []  # never queued and no number to stop waiting for: nothing changed
    return hand_over(rt, thread_id)


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


def sweep(rt: Runtime, idle_since: float, limit: int = 1000) -> list[str]:
    """Re-publish the hand-overs of busy threads idle since ``idle_since``, and of heads
    whose wait for an earlier event is over (reconciler)."""
    client = rt.store.client
    sent: list[str] = []
    busy = cast(
        list[str], client.zrangebyscore(keys.THREADS_BUSY, "-inf", idle_since, start=0, num=limit)
    )
    for thread_id in busy:
        if _released(client, thread_id):
            continue  # nothing queued: the thread is idle, not stalled
        client.zadd(keys.THREADS_BUSY, {thread_id: time.time()}, xx=True)
        sent += hand_over(rt, thread_id)
    waited = cast(
        list[str], client.zrangebyscore(keys.THREADS_GAPS, "-inf", time.time(), start=0, num=limit)
    )
    for thread_id in waited:
        if client.zrem(keys.THREADS_GAPS, thread_id):
            sent += hand_over(rt, thread_id)
    return sent


def _released(client: redis.Redis, thread_id: str) -> bool:
    """A busy thread with nothing queued is idle: it leaves the busy index (True).

    Queue and index lie in different slots of a Redis Cluster, so the queue is
    looked at again after the removal: an event admitted in between (whose own
    index write may have come first) puts the thread back.
    """
    queue = keys.thread_queue(thread_id)
    if client.llen(queue):
        return False
    client.zrem(keys.THREADS_BUSY, thread_id)
    if client.llen(queue):
        client.zadd(keys.THREADS_BUSY, {thread_id: time.time()})
        return False
    return True


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


def context(
    rt: Runtime, agent: Agent, thread_id: str, limits: BudgetLimits
) -> tuple[list[ChatMessage], dict[str, Any]]:
    """The thread's history as chat messages, fitted into the agent's window, and what was
    done to fit it (the run's ``thread_context`` log entry; a summary's tokens and cost,
    which the run's budget opens with already spent)."""
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
        over = _over_budget(agent, request, limits)
        if over is not None:
            described["summary_skipped"] = over
        else:
            try:
                response = agent.model.complete(request, [])
            except ModelError as exc:
                described["summary_error"] = str(exc)
            else:
                described["summary_model"] = response.model
                described["summary_tokens"] = response.total_tokens
                described["summary_cost_usd"] = response.cost_usd
                if response.content:
                    messages.append(
                        ChatMessage(
                            role="system",
                            content=f"Summary of earlier turns in this thread: {response.content}",
                        )
                    )
                    described["summarised"] = described["dropped"]
                    described["dropped"] = []
    for index, turn in fitted.included:
        messages += turn.messages(index)
    if messages:
        messages = [
            ChatMessage(role="system", content=HISTORY_BEGINS),
            *messages,
            ChatMessage(role="system", content=HISTORY_ENDS),
        ]
    return messages, described


def _over_budget(agent: Agent, request: list[ChatMessage], limits: BudgetLimits) -> str | None:
    """Why the summary call could not be afforded by a run with ``limits``, if it could not:
    the same bounds a step reserves before its call."""
    tokens = agent.model.estimate_tokens(request, [])
    if limits.max_tokens is not None and tokens > limits.max_tokens:
        return f"the summary call may use {tokens} tokens, over max_tokens={limits.max_tokens}"
    cost = reserved_cost_usd(agent.model, tokens, limits)
    if limits.max_cost_usd is not None and cost > limits.max_cost_usd:
        return f"the summary call may cost ${cost:.6f}, over max_cost_usd={limits.max_cost_usd}"
    return None


def spent(described: dict[str, Any] | None) -> BudgetUsage | None:
    """What fitting the history spent (a summary), for the run's budget to open with."""
    if not described or "summary_tokens" not in described:
        return None
    return BudgetUsage(
        tokens=int(described["summary_tokens"]), cost_usd=float(described["summary_cost_usd"])
    )
