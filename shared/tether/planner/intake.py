"""Accepting TaskEvents: validate, create the run once, plan its first step."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tether.agent.definition import get_agent, variant_of
from tether.errors import (
    ForkError,
    UnknownAgentError,
    UnknownModelPriceError,
    validation_problems,
)
from tether.guardrails import tally
from tether.guardrails.runner import log_entries
from tether.memory import longterm, threads
from tether.models.prices import require_prices
from tether.observability import metrics
from tether.observability.logs import log
from tether.planner import admission, fork, guarding
from tether.planner.step import plan
from tether.rollout import shadow
from tether.runtime import Runtime
from tether.store import indexes
from tether.store.runs import run_id_for
from tether.store.state import ChatMessage, RunState
from tether.transport.wire import EventKind, Observation, RunEvent, TaskEvent


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
        _reject(
            rt, f"malformed TaskEvent: {validation_problems(exc)}; fix the publisher", raw_event
        )
        return None
    try:
        agent = get_agent(event.agent)
    except UnknownAgentError as exc:
        _reject(rt, f"event {event.event_id!r}: {exc}", raw_event, event)
        return None
    variant = variant_of(event.agent)
    if variant is not None:
        # A variant's run may need what was stored before its event (an evaluation run
        # plays its stored scenario); without it the run cannot start.
        refusal = variant.refusal(rt.store.client, run_id_for(event.event_id))
        if refusal is not None:
            _reject(rt, f"event {event.event_id!r}: {refusal}", raw_event, event)
            return None
    limits = agent.budget.tightened_by(event.budget)
    try:
        require_prices(agent.model, limits)
    except UnknownModelPriceError as exc:
        _reject(rt, f"event {event.event_id!r} for agent {agent.name!r}: {exc}", raw_event, event)
        return None
    forked: tuple[list[ChatMessage], list[Observation]] | None = None
    if event.forked_from is not None:
        try:
            forked = fork.starting_state(rt, event.forked_from, agent.name)
        except ForkError as exc:
            _reject(rt, f"event {event.event_id!r}: {exc}", raw_event, event)
            return None

    primary_run_id = shadow.primary_run(agent, event)
    # A shadow run reads its primary's thread but takes no place on it (tether.memory.threads).
    # A fork holds the history its original saw, and takes no place on the thread either.
    thread_id = event.thread_id if primary_run_id is None and forked is None else None
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
    # Under the caps (tenant, all runs): over one, the event waits in Redis holding no
    # worker, and a run's end admits it. A shadow run rides on its primary's admission.
    verdict = admission.admit(rt, event) if primary_run_id is None else None
    if verdict is not None and not verdict.starts:
        return None
    history: list[ChatMessage] = []
    described: dict[str, Any] | None = None
    if forked is None and event.thread_id is not None and not _exists(rt, event, place):
        history, described = threads.context(rt, agent, event.thread_id, limits)
    # Guarded before anything stores it: a rewrite (a redaction) is all Redis ever holds.
    goal, screened, guard_spent = guarding.screen_input(
        agent, event.input, run_id_for(event.event_id), skip=forked is not None
    )
    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent=agent.name,
        agent_version=agent.version,
        primary_run_id=primary_run_id,
        forked_from=event.forked_from,
        goal=goal,
        input_guardrails=screened.notable,
        metadata=event.metadata,
        thread_id=thread_id,
        thread_keep=agent.thread_keep() if thread_id is not None else [],
        limits=limits,
        messages=forked[0]
        if forked is not None
        else [
            ChatMessage(role="system", content=agent.instructions),
            *history,
            ChatMessage(role="user", content=goal),
        ],
    )
    started = [
        RunEvent(
            run_id=state.run_id,
            kind=EventKind.run_started,
            step=0,
            data={
                "agent": agent.name,
                "agent_version": state.agent_version,
                "goal": goal,
                "limits": state.limits.model_dump(),
                "event_id": event.event_id,
                **(
                    {
                        "forked_from": event.forked_from.model_dump(),
                        "carried_actions": [o.action_id for o in forked[1]],
                    }
                    if event.forked_from is not None and forked is not None
                    else {}
                ),
            },
        )
    ]
    started += log_entries(state.run_id, 0, screened.findings)
    if described is not None:
        started.append(
            RunEvent(run_id=state.run_id, kind=EventKind.thread_context, step=0, data=described)
        )
    # The run and the entries that describe its start are one commit.
    summary = threads.spent(described)
    state, created = rt.store.create(
        event,
        state,
        log=started,
        spent=guarding.opening_spent(summary, guard_spent),
        indexes=[
            *longterm.run_index(agent, event.metadata, rt.settings.run_ttl_s),
            *indexes.created(agent.name, primary_run_id, rt.settings.run_ttl_s),
            *fork.fork_index(state, rt.settings.run_ttl_s),
        ],
    )
    if thread_id is not None:
        # The thread's queued copy of the event outlives this message: it is screened too.
        threads.keep_screened(rt, event, goal)
    if created:
        metrics.run_started(state)  # a redelivered or republished event creates nothing
        metrics.guardrail_outcomes(screened.findings)
        tally.count(rt.store.batch, state, screened.findings)
        if verdict is not None:
            admission.started(rt, event, verdict)
        if summary is not None and described is not None:
            metrics.model_spent(state, described["summary_model"], summary)
    else:
        rt.store.log.append(
            state.run_id, EventKind.duplicate_event, state.step, event_id=event.event_id
        )
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
    rt.store.rejections.record(reason, raw_event)
    log.warning("event_rejected", reason=reason)
    if event is not None:
        # Events published after it on its thread need not wait for it.
        threads.skip(rt, event)
        # Nor, under the caps, those admitted after it: a slot it took is given back.
        admission.release(rt, event.event_id)
