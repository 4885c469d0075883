"""Accepting TaskEvents: validate, create the run once, plan its first step."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tether import metrics
from tether.agents import get_agent
from tether.errors import UnknownAgentError, UnknownModelPriceError
from tether.evaluation import shadow
from tether.messages import TaskEvent
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
        _reject(rt, f"event {event.event_id!r}: {exc}", raw_event)
        return None
    limits = agent.budget.tightened_by(event.budget)
    try:
        require_prices(agent.model, limits)
    except UnknownModelPriceError as exc:
        _reject(rt, f"event {event.event_id!r} for agent {agent.name!r}: {exc}", raw_event)
        return None

    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent=agent.name,
        agent_version=agent.version,
        primary_run_id=shadow.primary_run(agent, event),
        goal=event.input,
        metadata=event.metadata,
        limits=limits,
        messages=[
            ChatMessage(role="system", content=agent.instructions),
            ChatMessage(role="user", content=event.input),
        ],
    )
    state, created = rt.store.create(event, state)
    if created:
        metrics.run_started(state)  # a redelivered or republished event creates nothing
        rt.store.log(
            state.run_id,
            "run_started",
            0,
            agent=agent.name,
            agent_version=state.agent_version,
            goal=event.input,
            limits=state.limits.model_dump(),
            event_id=event.event_id,
        )
    else:
        rt.store.log(state.run_id, "duplicate_event", state.step, event_id=event.event_id)
    plan(rt, state.run_id, 0)
    # After the primary's own first step; a redelivered event publishes the copies again,
    # which intake takes as duplicates.
    shadow.start_shadows(rt, event, state.run_id)
    return state.run_id


def _reject(rt: Runtime, reason: str, raw_event: Any) -> None:
    rt.store.reject(reason, raw_event)
    log.warning("event_rejected", reason=reason)


def short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )
