"""A fork: a new run that starts from another run's state as its step N was about to be planned.

The original's event log is the source: its ``model_call`` entry of step N holds the whole
input the model saw then (EventLog.read makes it whole), which is every message up to that
step, tool results included. The fork plans step N again on that input, as its own step 0:
the results of the steps before N come along as recorded, in those messages, and no tool
call of those steps runs again, idempotent or not (invariant 2). Its ``run_started`` entry
names the actions carried so (``carried_actions``).

They are not the fork's completed actions: those count what the fork itself did, so a
run's tool calls (metrics, stats) are counted once, on the run that made them, and
forgetting a fork deletes none of its original's action results.

What a fork does not carry: the original's budget use (the fork has its own budget with the
original's limits, so each spend is counted once, on the run that spent it: invariant 6),
and its place on a thread (a fork sees the thread's history the original saw, and neither
waits for the thread nor adds a turn to it).
"""

from __future__ import annotations

from typing import Any

from tether.errors import ForkError
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import RunStore
from tether.store.state import ChatMessage, RunState, ToolCall
from tether.transport.wire import EventKind, ForkPoint, Observation, RunEvent


def starting_state(
    rt: Runtime, point: ForkPoint, agent: str
) -> tuple[list[ChatMessage], list[Observation]]:
    """The messages a fork from ``point`` starts with, and the original's completed
    actions whose results those messages carry."""
    original = rt.store.get(point.run_id)
    if original is None:
        raise ForkError(
            f"run {point.run_id!r} cannot be forked: it does not exist (it expired after "
            "run_ttl_s, or its event was refused); `tether runs list` shows what exists"
        )
    if original.agent != agent:
        raise ForkError(
            f"a fork of run {point.run_id!r} runs its agent {original.agent!r}, not {agent!r}"
        )
    events = [e for _, e in rt.store.log.read(point.run_id)]
    planned = next(
        (e for e in events if e.kind == EventKind.model_call and e.step == point.step), None
    )
    if planned is None:
        raise ForkError(
            f"run {point.run_id!r} cannot be forked from step {point.step}: its event log has "
            f"no model call at that step (steps it planned: {planned_steps(events) or 'none'})"
        )
    messages = [_message(m) for m in planned.data.get("messages") or []]
    completed = [o for o in original.completed_actions if o.step < point.step]
    return messages, completed


def planned_steps(events: list[RunEvent]) -> list[int]:
    """The steps of a run that a fork can start from: those whose model call is logged."""
    return sorted({e.step for e in events if e.kind == EventKind.model_call})


def forks_of(store: RunStore, run_id: str) -> list[str]:
    """The runs forked from ``run_id``, oldest first."""
    return [str(m) for m in store.client.zrange(keys.run_forks(run_id), 0, -1)]


def fork_index(state: RunState, ttl_s: int) -> list[tuple[str, int]]:
    """The index a fork joins when it is created (RunStore.create's ``indexes``): its
    original's list of forks, written by the commit that creates the fork."""
    if state.forked_from is None:
        return []
    return [(keys.run_forks(state.forked_from.run_id), ttl_s)]


def _message(logged: dict[str, Any]) -> ChatMessage:
    """A message as the model call's log entry holds it (ChatMessage.to_openai) made whole."""
    calls = logged.get("tool_calls")
    return ChatMessage(
        role=logged["role"],
        content=logged.get("content"),
        tool_calls=[
            ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in calls
        ]
        if calls
        else None,
        tool_call_id=logged.get("tool_call_id"),
    )
