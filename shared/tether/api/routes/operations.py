"""Stats, dead letters, queues and consumers."""

from __future__ import annotations

from http import HTTPStatus
from typing import get_type_hints

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel

from tether.api.auth import Caller, admin, runtime_of, viewer
from tether.insights import stats as run_stats
from tether.query import deadletters
from tether.query.deadletters import DeadLetterPage
from tether.query.queues import QueuesView, queues
from tether.runtime import Runtime
from tether.store.indexes import EVAL_PREFIX
from tether.worker.deadletters import DeadLetter

router = APIRouter(prefix="/v1", tags=["operations"])

# The stats model, as compute() declares it, wherever the insights package keeps it.
STATS_MODEL: type[BaseModel] = get_type_hints(run_stats.compute)["return"]


@router.get("/stats", response_model=STATS_MODEL)
def get_stats(
    rt: Runtime = Depends(runtime_of),
    _: Caller = viewer,
    since: str = Query(default="1h", description="window: 30m, 1h, 7d ..."),
    agent: str | None = None,
    version: str | None = None,
    compare_to: str | None = Query(default=None, description="baseline this much earlier"),
    include_eval: bool = Query(default=False, description="also count evaluation runs"),
) -> BaseModel:
    """Success rate, steps, cost, latency percentiles, errors, feedback and drift;
    evaluation runs only with ``include_eval`` or an ``eval:`` agent."""
    try:
        window = run_stats.parse_duration(since)
        baseline = run_stats.parse_duration(compare_to) if compare_to else None
    except run_stats.StatsError as exc:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from exc
    return run_stats.compute(
        rt.store,
        since=window,
        agent=agent,
        version=version,
        compare_to=baseline,
        # Evaluation runs are left out, as in `tether stats`, unless asked for by name.
        include_eval=include_eval or (agent or "").startswith(EVAL_PREFIX),
    )


@router.get("/dead-letters", response_model=DeadLetterPage)
def list_dead_letters(
    rt: Runtime = Depends(runtime_of), _: Caller = viewer, limit: int = Query(50, ge=1, le=1000)
) -> DeadLetterPage:
    """The newest dead letters first, with why each died."""
    return deadletters.list_dead(rt, limit)


def _found(letter: DeadLetter | None, entry_id: str) -> DeadLetter:
    """The letter an operation found, or a 404 that says where the others are."""
    if letter is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no dead letter {entry_id} (replayed or deleted already?); "
            "GET /v1/dead-letters lists them",
        )
    return letter


@router.get("/dead-letters/{entry_id}", response_model=DeadLetter)
def get_dead_letter(
    entry_id: str, rt: Runtime = Depends(runtime_of), _: Caller = viewer
) -> DeadLetter:
    return _found(deadletters.get(rt, entry_id), entry_id)


@router.post("/dead-letters/{entry_id}/replay", response_model=DeadLetter)
def replay_dead_letter(
    entry_id: str, rt: Runtime = Depends(runtime_of), _: Caller = admin
) -> DeadLetter:
    """Put the letter back on its queue, once; handlers are idempotent."""
    return _found(deadletters.replay(rt, entry_id), entry_id)


@router.delete("/dead-letters/{entry_id}", response_model=DeadLetter)
def delete_dead_letter(
    entry_id: str, rt: Runtime = Depends(runtime_of), _: Caller = admin
) -> DeadLetter:
    """Drop the letter for good."""
    return _found(deadletters.delete(rt, entry_id), entry_id)


@router.get("/queues", response_model=QueuesView)
def get_queues(rt: Runtime = Depends(runtime_of), _: Caller = viewer) -> QueuesView:
    """Messages waiting per service queue, and the consumers reading them."""
    return queues(rt)
