"""Escalations: the inbox with each one's context, and decisions as the signed-in operator."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from tether import client
from tether.api.auth import Caller, approver, runtime_of, viewer
from tether.errors import DecisionRefusedError, EscalationClosedError, UnknownEscalationError
from tether.query import escalations as escalation_query
from tether.query.escalations import EscalationView
from tether.runtime import Runtime
from tether.transport.wire import Decision, Verdict

router = APIRouter(prefix="/v1/escalations", tags=["escalations"])


class DecisionIn(BaseModel):
    """A person's decision. ``extend`` raises ``limit`` (default: the one the escalation
    names) by ``extend_by``; ``arguments``, with ``approve``, replaces the held tool
    call's arguments (checked against the tool's schema and the agent's policies: 409
    naming what they refuse)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    reason: str | None = None
    answer: str | None = None
    limit: str | None = None
    extend_by: float | None = Field(default=None, gt=0)
    arguments: dict[str, Any] | None = None


@router.get("", response_model=list[EscalationView])
def list_escalations(
    rt: Runtime = Depends(runtime_of),
    _: Caller = viewer,
    pending: bool = True,
    agent: str | None = None,
    tool: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[EscalationView]:
    """Escalations, the one waiting longest first."""
    return escalation_query.list_escalations(
        rt, pending_only=pending, agent=agent, tool=tool, limit=limit
    )


@router.get("/{escalation_id}", response_model=EscalationView)
def get_escalation(
    escalation_id: str, rt: Runtime = Depends(runtime_of), _: Caller = viewer
) -> EscalationView:
    """One escalation with the request, the conversation and the tool results so far."""
    found = escalation_query.get_escalation(rt, escalation_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no escalation {escalation_id}")
    return found


@router.post(
    "/{escalation_id}/decision",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Decision,
    responses={
        403: {"description": "the caller's role may not decide"},
        404: {"description": "no such escalation"},
        409: {"description": "the escalation is closed, or the decision cannot apply"},
    },
)
def decide(
    escalation_id: str,
    decision: DecisionIn,
    rt: Runtime = Depends(runtime_of),
    who: Caller = approver,
) -> Decision:
    """Send the decision to the escalation service, signed as the calling operator."""
    try:
        return client.decide(
            escalation_id,
            decision.verdict,
            by=who.name,
            reason=decision.reason,
            answer=decision.answer,
            limit=decision.limit,
            extend_by=decision.extend_by,
            arguments=decision.arguments,
            # An anonymous caller (local development) signs nothing.
            token=who.token,
            runtime=rt,
        )
    except UnknownEscalationError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (EscalationClosedError, DecisionRefusedError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
