"""Escalations with the context a person needs to decide them.

Each comes with its run's request (the task event's input), the conversation so
far and the tool results so far, read from the run's committed state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel

from tether.errors import UnknownEscalationError
from tether.escalation import records
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import EscalationRecord, RunStatus
from tether.transport.wire import Observation, utcnow


class ConversationTurn(BaseModel):
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class EscalationContext(BaseModel):
    """What the run had seen and done when it asked."""

    request: str
    conversation: list[ConversationTurn]
    tool_results: list[Observation]
    run_status: RunStatus | None


class EscalationView(BaseModel):
    """An escalation record, its age, and (for one escalation) its run's context."""

    record: EscalationRecord
    escalation_id: str
    run_id: str
    agent: str
    kind: str
    status: str
    age_s: float
    context: EscalationContext | None = None


def _view(record: EscalationRecord, now: datetime) -> EscalationView:
    escalation = record.escalation
    return EscalationView(
        record=record,
        escalation_id=escalation.escalation_id,
        run_id=escalation.run_id,
        agent=escalation.agent,
        kind=str(escalation.kind),
        status=record.status,
        age_s=max(0.0, (now - escalation.created_at).total_seconds()),
    )


def context_of(rt: Runtime, run_id: str) -> EscalationContext | None:
    state = rt.store.get(run_id)
    if state is None:
        return None
    return EscalationContext(
        request=state.goal,
        conversation=[
            ConversationTurn(
                role=m.role,
                content=m.content,
                tool_calls=[c.model_dump() for c in m.tool_calls] if m.tool_calls else None,
            )
            for m in state.messages
            if m.role != "system"
        ],
        tool_results=state.completed_actions,
        run_status=state.status,
    )


def list_escalations(
    rt: Runtime,
    *,
    pending_only: bool = True,
    agent: str | None = None,
    tool: str | None = None,
    limit: int = 100,
) -> list[EscalationView]:
    """Escalations oldest first (the one waiting longest comes first), from their index."""
    rt.store.flush()
    index = keys.PENDING_ESCALATIONS if pending_only else keys.ALL_ESCALATIONS
    # Filters read further than ``limit`` entries, bounded, rather than the whole index.
    ids = cast(list[str], rt.store.client.zrange(index, 0, limit * 10 - 1))
    now = utcnow()
    views: list[EscalationView] = []
    for escalation_id in ids:
        try:
            record, _ = records.load(rt, escalation_id)
        except UnknownEscalationError:
            # Decided escalations expire with their runs; the index forgets them here.
            rt.store.client.zrem(index, escalation_id)
            continue
        escalation = record.escalation
        if agent is not None and escalation.agent != agent:
            continue
        if tool is not None and (escalation.action is None or escalation.action.tool != tool):
            continue
        views.append(_view(record, now))
        if len(views) == limit:
            break
    return views


def get_escalation(rt: Runtime, escalation_id: str) -> EscalationView | None:
    """One escalation with its run's context; None if there is none by that id."""
    rt.store.flush()
    try:
        record, _ = records.load(rt, escalation_id)
    except UnknownEscalationError:
        return None
    view = _view(record, utcnow())
    view.context = context_of(rt, record.escalation.run_id)
    return view
