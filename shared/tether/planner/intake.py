"""Accepting TaskEvents: validate, create the run once, plan its first step."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tether import metrics
from tether.agents import get_agent
from tether.errors import UnknownAgentError, UnknownModelPriceError
from tether.evaluation import harness, shadow
from tether.memory import longterm, threads
from tether.messages import RunEvent, TaskEvent
from tether.models.prices import require_prices
from tether.planner.step import plan
from tether.runtime import Runtime
from tether.state import ChatMessage, RunState
from tether.store import run_id_for
from tether.telemetry import log


def start(rt: Runtime, raw_event: Any) -> str | None:
    """Accept an event and run its first step; a bad event is recorded, never raised."""
    size = len(json.dumps(raw_event, default=str))
    if size > rt.settings.max_event_bytes:
        _reject(
            rt,
            f"event payload is {size} bytes, over the {rt.settings.max_event_bytes}-byte cap "
            "(TETHER_MAX_EVENT_BYTES); send a reference to large data instead",
            raw_event,
        )
        return None
    try:
        event = TaskEvent.model_validate(raw_event)
    except ValidationError as exc:
        _reject(rt, f"malformed TaskEvent: {short(exc)}; fix the publisher", raw_event)
        return None
    try:
        agent = get_agent(event.agent)
    except UnknownAgentError as exc:
        _reject(rt, f"event {event.event_id!r}: {exc}", raw_event, event)
        return None
    if harness.is_eval_agent(event.agent):
        # An evaluation run plays its stored harness document; without one it cannot start.
        missing = harness.rejection(rt.store.client, run_id_for(event.event_id))
        if missing is not None:
            _reject(rt, f"event {event.event_id!r}: {missing}", raw_event, event)
            return None
    limits = agent.budget.tightened_by(event.budget)
    try:
        require_prices(agent.model, limits)
    except UnknownModelPriceError as exc:
        _reject(rt, f"event {event.event_id!r} for agent {agent.name!r}: {exc}", raw_event, event)
        return None

    primary_run_id = shadow.primary_run(agent, event)
    # A shadow run reads its primary's thread but takes no place on it (tether.memory.threads).
    thread_id = event.thread_id if primary_run_id is None else None
    place: int | None = None
    if thread_id is not None:
        place = threads.admit(rt, event)
        if place > 0:
            # Another run has the thread: this event waits in Redis, holding no worker;
            # the terminal commit of the run before it hands the thread over.
            log.info("event_queued_on_thread", event_id=event.event_id, thread_id=thread_id)
            return None
        if place == threads.WAITS_FOR_EARLIER:
            log.info(
                "event_waits_for_earlier_on_thread",
                event_id=event.event_id,
                thread_id=thread_id,
                thread_seq=event.thread_seq,
            )
            return None
    history: list[ChatMessage] = []
    described: dict[str, Any] | None = None
    if event.thread_id is not None and not _exists(rt, event, place):
        history, described = threads.context(rt, agent, event.thread_id, limits)
    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent=agent.name,
        agent_version=agent.version,
        primary_run_id=primary_run_id,
        goal=event.input,
        metadata=event.metadata,
        thread_id=thread_id,
        thread_keep=agent.thread_keep() if thread_id is not None else [],
        limits=limits,
        messages=[
            ChatMessage(role="system", content=agent.instructions),
            *history,
            ChatMessage(role="user", content=event.input),
        ],
    )
    started = [
        RunEvent(
            run_id=state.run_id,
            kind="run_started",
            step=0,
            data={
                "agent": agent.name,
                "agent_version": state.agent_version,
                "goal": event.input,
                "limits": state.limits.model_dump(),
                "event_id": event.event_id,
            },
        )
    ]
    if described is not None:
        started.append(RunEvent(run_id=state.run_id, kind="thread_context", step=0, data=described))
    # The run and the entries that describe its start are one commit.
    summary = threads.spent(described)
    state, created = rt.store.create(
        event,
        state,
        log=started,
        spent=summary,
        indexes=longterm.run_index(agent, event.metadata, rt.settings.run_ttl_s),
    )
    if created:
        metrics.run_started(state)  # a redelivered or republished event creates nothing
        if summary is not None and described is not None:
            metrics.model_spent(state, described["summary_model"], summary)
    else:
        rt.store.log(state.run_id, "duplicate_event", state.step, event_id=event.event_id)
    plan(rt, state.run_id, 0)
    # After the primary's own first step; a redelivered event publishes the copies again,
    # which intake takes as duplicates.
    shadow.start_shadows(rt, event, state.run_id)
    return state.run_id


def _exists(rt: Runtime, event: TaskEvent, place: int | None) -> bool:
    """Whether the event's run exists already (a redelivery): then its history is not
    fitted again, nor summarised by a model call that no commit would count."""
    if place is not None:
        return place == threads.ALREADY_STARTED
    return rt.store.status(run_id_for(event.event_id)) is not None


def record_unstarted(rt: Runtime, raw_event: Any, why: str) -> None:
    """Record as rejected an event whose start message will not run again, unless its run exists.

    Every published event ends as a run or a recorded rejection (invariant 1),
    also when its start message fails for good (a dead letter).
    """
    try:
        event = TaskEvent.model_validate(raw_event)
    except ValidationError:
        _reject(rt, f"start of an unreadable event failed: {why}", raw_event)
        return
    if rt.store.status(run_id_for(event.event_id)) is None:
        reason = (
            f"event {event.event_id!r}: its start failed for good ({why}); "
            "the message is in `tether dead list`: fix the cause, then `tether dead replay` it"
        )
        _reject(rt, reason, raw_event, event)


def _reject(rt: Runtime, reason: str, raw_event: Any, event: TaskEvent | None = None) -> None:
    rt.store.reject(reason, raw_event)
    log.warning("event_rejected", reason=reason)
    if event is not None:
        # Events published after it on its thread need not wait for it.
        threads.skip(rt, event)


def short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )
