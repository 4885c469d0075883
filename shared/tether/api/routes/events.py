"""POST /v1/events: upstream publishers in any language hand Tether a task."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tether.agent.definition import declared_name, get_agent
from tether.api.auth import Caller, publisher_or_approver, runtime_of
from tether.errors import UnknownAgentError
from tether.memory import threads
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.transport.wire import BudgetLimits, Priority, TaskEvent

router = APIRouter(prefix="/v1", tags=["events"])

RESERVED_METADATA_PREFIX = "tether_"


class EventIn(BaseModel):
    """A task for an agent. Posting the same ``event_id`` again names the same run."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    agent: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1)
    budget: BudgetLimits | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # As TaskEvent takes it: no glob characters, since thread ids end up in key patterns.
    thread_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[^\s*?\[\]]+$"
    )
    # interactive or batch: which runs start first while runs wait for capacity.
    priority: Priority = Priority.interactive

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        # Tether's own links live there (a shadow run's primary, an evaluation's
        # scenario): a publisher's event must not claim to be one.
        reserved = sorted(k for k in metadata if k.startswith(RESERVED_METADATA_PREFIX))
        if reserved:
            raise ValueError(
                f"metadata keys {reserved} are reserved: keys starting with "
                f"{RESERVED_METADATA_PREFIX!r} are what Tether itself records; rename them"
            )
        return metadata


class EventAccepted(BaseModel):
    event_id: str
    run_id: str
    # False: a run for this event id existed already, and nothing was published again.
    published: bool
    status: str


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventAccepted,
    responses={
        200: {"description": "the event's run exists already", "model": EventAccepted},
        413: {"description": "the event is over TETHER_MAX_EVENT_BYTES"},
        422: {"description": "a malformed event or an agent no worker knows"},
    },
)
def publish(
    event: EventIn,
    response: Response,
    rt: Runtime = Depends(runtime_of),
    _: Caller = Depends(publisher_or_approver),
) -> EventAccepted:
    """Publish a task event; idempotent by ``event_id``."""
    size = len(event.model_dump_json())
    if size > rt.settings.max_event_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"event {event.event_id!r} is {size} bytes, over the "
            f"{rt.settings.max_event_bytes}-byte cap (TETHER_MAX_EVENT_BYTES); "
            "send a reference to large data instead",
        )
    check_agent(event.agent)
    run_id = run_id_for(event.event_id)
    existing = rt.store.status(run_id)
    if existing is not None:
        response.status_code = status.HTTP_200_OK
        return EventAccepted(
            event_id=event.event_id, run_id=run_id, published=False, status=str(existing)
        )
    task = TaskEvent(
        event_id=event.event_id,
        agent=event.agent,
        input=event.input,
        budget=event.budget,
        metadata=event.metadata,
        thread_id=event.thread_id,
        priority=event.priority,
    )
    # The thread's number only for an event that is valid: a number taken and never
    # published would hold the thread's next events for TETHER_THREAD_GAP_S.
    if task.thread_id is not None:
        task = task.model_copy(update={"thread_seq": threads.next_seq(rt, task.thread_id)})
    rt.publish_event(task)
    return EventAccepted(event_id=event.event_id, run_id=run_id, published=True, status="queued")


def check_agent(name: str) -> None:
    """422 unless the planner knows the agent (TETHER_AGENT_MODULES, as it loads them)."""
    # declared_name reads only the entry points' names: resolving the variant would
    # import the package behind it (evaluation) into this process.
    if declared_name(name) != name:
        raise HTTPException(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"agent {name!r} is a variant of a declared agent (such as an evaluation's "
            "eval: agent), whose runs start through their own tool (`tether eval`), not the API",
        )
    try:
        get_agent(name)
    except UnknownAgentError as exc:
        raise HTTPException(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"{exc}; set TETHER_AGENT_MODULES for the API as for the planner",
        ) from exc
