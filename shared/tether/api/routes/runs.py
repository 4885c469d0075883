"""Runs: pages with filters, one run's state, its timeline, its events live (SSE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from tether import client
from tether.api import streams
from tether.api.auth import Caller, approver, runtime_of, viewer
from tether.errors import ForkError, RunNotEndedError, UnknownRunError
from tether.query import runs as run_query
from tether.query.runs import RunFilter, RunPage
from tether.query.timeline import Timeline, timeline
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunState, RunStatus
from tether.transport.wire import EventKind, RunEvent

router = APIRouter(prefix="/v1/runs", tags=["runs"])

# The log entry that ends a run: its stream of events ends with it.
TERMINAL_KIND = EventKind.run_finished
# How long one XREAD waits before the stream checks its client is still there.
BLOCK_MS = 1_000
# How long a stream waits for a run that does not exist yet (its event is still queued).
APPEAR_WAIT_S = 10.0


@router.get("", response_model=RunPage)
def list_runs(
    rt: Runtime = Depends(runtime_of),
    _: Caller = viewer,
    agent: str | None = None,
    version: str | None = None,
    run_status: list[RunStatus] = Query(default_factory=list, alias="status"),
    thread_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    include_eval: bool = False,
    include_shadow: bool = False,
    limit: int = Query(default=50, ge=1, le=500),
    before: float | None = None,
    before_run: str | None = None,
) -> RunPage:
    """Runs newest first; evaluation and shadow runs only when asked for."""
    return run_query.list_runs(
        rt.store,
        RunFilter(
            agent=agent,
            version=version,
            status=run_status,
            thread_id=thread_id,
            since=since,
            until=until,
            include_eval=include_eval,
            include_shadow=include_shadow,
            limit=limit,
            before=before,
            before_run=before_run,
        ),
    )


def _missing(run_id: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"no run {run_id}: it expired, or its event was refused or is still queued "
        "(GET /v1/runs?... lists what exists)",
    )


@router.get("/{run_id}", response_model=RunState)
def get_run(run_id: str, rt: Runtime = Depends(runtime_of), _: Caller = viewer) -> RunState:
    """The run's whole committed state."""
    state = run_query.get_run(rt.store, run_id)
    if state is None:
        raise _missing(run_id)
    return state


@router.get("/{run_id}/timeline", response_model=Timeline)
def get_timeline(run_id: str, rt: Runtime = Depends(runtime_of), _: Caller = viewer) -> Timeline:
    """Every entry of the run's event log, with budget use against its limits."""
    found = timeline(rt.store, run_id)
    if found is None:
        raise _missing(run_id)
    return found


@router.get("/{run_id}/events", response_class=EventSourceResponse)
async def stream_events(
    run_id: str,
    request: Request,
    _: Caller = viewer,
    # A stream entry id, as the events carry it: anything else would fail the XREAD
    # after the stream has begun, with no status left to say why.
    last_event_id: str | None = Header(default=None, pattern=r"^\d{1,20}-\d{1,20}$"),
) -> EventSourceResponse:
    """The run's event log as server-sent events, from its start (or after Last-Event-ID),
    live, ending with its ``run_finished`` entry. Each event's name is the entry's kind,
    its id the log entry's, its data the entry as JSON."""
    reader = streams.client(request.app)
    if not await _appears(reader, run_id, APPEAR_WAIT_S):
        raise _missing(run_id)
    return EventSourceResponse(_follow(reader, run_id, request, last_event_id or "0-0"))


async def _appears(reader: aioredis.Redis, run_id: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not await reader.exists(keys.run(run_id)):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _follow(
    reader: aioredis.Redis, run_id: str, request: Request, after: str
) -> AsyncIterator[ServerSentEvent]:
    stream = keys.run_log(run_id)
    while not await request.is_disconnected():
        reply = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]],
            await reader.xread({stream: after}, count=100, block=BLOCK_MS),
        )
        for entry_id, fields in (entry for _, entries in reply for entry in entries):
            after = entry_id
            kind = str(RunEvent.model_validate_json(fields["event"]).kind)
            yield ServerSentEvent(data=fields["event"], event=kind, id=entry_id)
            if kind == TERMINAL_KIND:
                return


class RetryIn(BaseModel):
    """``event_id``: the new run's idempotency key (the same one twice makes one run);
    left out, a new one is chosen."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(default=None, min_length=1, max_length=200)


class ForkIn(RetryIn):
    """``from_step``: the original's planning step that the fork plans again (from 0)."""

    from_step: int = Field(ge=0)


class Started(BaseModel):
    """The run a retry or fork started (it appears once intake has taken its event)."""

    run_id: str
    event_id: str


_STARTS: dict[int | str, dict[str, Any]] = {
    403: {"description": "the caller's role may not start runs"},
    404: {"description": "no such run"},
    409: {"description": "the run cannot be retried (not ended) or forked from that step"},
}


@router.post(
    "/{run_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Started,
    responses=_STARTS,
)
def retry_run(
    run_id: str,
    body: RetryIn | None = None,
    rt: Runtime = Depends(runtime_of),
    _: Caller = approver,
) -> Started:
    """Run an ended run's task again as a new run naming it under ``retry_of``."""
    try:
        new_run, event_id = client.retry(
            run_id, event_id=body.event_id if body else None, runtime=rt
        )
    except UnknownRunError as exc:
        raise _missing(run_id) from exc
    except RunNotEndedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return Started(run_id=new_run, event_id=event_id)


@router.post(
    "/{run_id}/fork",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Started,
    responses=_STARTS,
)
def fork_run(
    run_id: str, body: ForkIn, rt: Runtime = Depends(runtime_of), _: Caller = approver
) -> Started:
    """Start a new run from this run's state as step ``from_step`` was about to be
    planned: its messages and tool results so far (no tool of those steps runs again),
    a budget of its own; each run's timeline names the other."""
    try:
        new_run, event_id = client.fork(run_id, body.from_step, event_id=body.event_id, runtime=rt)
    except UnknownRunError as exc:
        raise _missing(run_id) from exc
    except ForkError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return Started(run_id=new_run, event_id=event_id)
