"""Runs by agent, version, status, thread and time, a page at a time from Redis indexes.

Production runs are read apart from evaluation (``eval:`` agents) and shadow runs
unless a filter asks for them (tether.store.indexes). A page reads one sorted set
per population (and status) it covers and the documents of the runs on it, never
the whole store: a status filter reads the status indexes, which hold only runs in
that status. A version filter, or a status filter within a thread, reads further
entries of the index until the page is full or ``MAX_SCANNED`` runs were looked at.

Pages follow each other by (creation time, run id), the order of the indexes, so
runs created at the same instant are neither skipped nor repeated across pages.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import cast

from pydantic import BaseModel, Field

from tether.store import keys
from tether.store.indexes import RunKind, by_agent, by_kind, by_status, indexed_with, kind_of
from tether.store.runs import RunStore
from tether.store.state import RunState, RunStatus

# How many index entries one page may look at while filtering by status or version.
MAX_SCANNED = 2_000
_CHUNK = 200


class RunFilter(BaseModel):
    """Which runs a page holds; every field narrows it."""

    agent: str | None = None
    version: str | None = None
    status: list[RunStatus] = Field(default_factory=list)
    thread_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_eval: bool = False
    include_shadow: bool = False
    limit: int = Field(default=50, ge=1, le=500)
    # The previous page's ``next_before`` and ``next_before_run``: runs ordered after that
    # run (created before it, or at the same time with a smaller id). ``before`` alone:
    # runs created strictly before it.
    before: float | None = None
    before_run: str | None = None


class RunSummary(BaseModel):
    """One row of a runs page."""

    run_id: str
    event_id: str
    agent: str
    agent_version: str
    kind: RunKind
    status: RunStatus
    step: int
    thread_id: str | None
    primary_run_id: str | None
    goal: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error_category: str | None
    error: str | None
    waiting_for_human: int


class RunPage(BaseModel):
    runs: list[RunSummary]
    # Pass as ``before`` and ``before_run`` for the next page; None: this was the last one.
    next_before: float | None
    next_before_run: str | None = None


def summary_of(state: RunState) -> RunSummary:
    return RunSummary(
        run_id=state.run_id,
        event_id=state.event_id,
        agent=state.agent,
        agent_version=state.agent_version,
        kind=kind_of(state.agent, state.primary_run_id),
        status=state.status,
        step=state.step,
        thread_id=state.thread_id,
        primary_run_id=state.primary_run_id,
        goal=state.goal[:300],
        created_at=state.created_at,
        updated_at=state.updated_at,
        finished_at=state.finished_at,
        error_category=str(state.error.category) if state.error is not None else None,
        error=state.error.message if state.error is not None else None,
        waiting_for_human=len(state.awaiting_human),
    )


def indexes_for(query: RunFilter) -> list[str]:
    """The sorted sets whose union is the population ``query`` reads."""
    if query.thread_id is not None:
        return [keys.thread_runs(query.thread_id)]
    kinds = [RunKind.production]
    if query.include_eval or (query.agent or "").startswith("eval:"):
        kinds.append(RunKind.eval)
    if query.include_shadow:
        kinds.append(RunKind.shadow)
    if query.status:
        found = {by_status(kind, s, query.agent): None for kind in kinds for s in query.status}
        return list(found)
    if query.agent is not None:
        return [by_agent(kind, query.agent) for kind in kinds]
    return [by_kind(kind) for kind in kinds]


def _index_serves(query: RunFilter) -> bool:
    """Whether every run the indexes hold matches ``query``: then a page reads no more."""
    if query.status:
        # An index shared by several statuses (indexes.indexed_with) holds runs not asked for.
        asked = set(query.status)
        if query.thread_id is not None or any(indexed_with(s) - asked for s in asked):
            return False
    return query.version is None


# A position in the newest-first order of the indexes: (creation time, run id).
Cursor = tuple[float, str]


def _entries(
    store: RunStore,
    index: str,
    after: Cursor | None,
    until: float | None,
    since: float | None,
    count: int,
) -> list[Cursor]:
    """Up to ``count`` of ``index``'s entries that come after ``after``, newest first."""
    high = str(after[0]) if after is not None else "+inf"
    if until is not None and (after is None or until < after[0]):
        high = str(until)
    low = str(since) if since is not None else "-inf"
    taken: list[Cursor] = []
    start = 0
    while len(taken) < count:
        # Inclusive of ``after``'s own time: runs created then with a smaller id come next.
        found = cast(
            list[tuple[str, float]],
            store.client.zrevrangebyscore(
                index, high, low, start=start, num=count, withscores=True
            ),
        )
        taken += [
            (score, run_id) for run_id, score in found if after is None or (score, run_id) < after
        ]
        if len(found) < count:
            break
        start += len(found)
    return taken[:count]


def _read_field(store: RunStore, run_ids: list[str], field: str) -> list[str | None]:
    pipe = store.client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(keys.run(run_id), field)
    return cast(list[str | None], pipe.execute()) if run_ids else []


def _read_docs(store: RunStore, run_ids: list[str], wanted: set[RunStatus]) -> list[str | None]:
    """Each run's document (None: it expired), read only where its status is wanted."""
    if not wanted:
        return _read_field(store, run_ids, "doc")
    # The status field first: a filter that matches few runs reads few documents.
    statuses = _read_field(store, run_ids, "status")
    reading = [
        i for i, status in enumerate(statuses) if status is None or RunStatus(status) in wanted
    ]
    read = _read_field(store, [run_ids[i] for i in reading], "doc")
    docs: list[str | None] = [None] * len(run_ids)
    for i, doc in zip(reading, read, strict=True):
        docs[i] = doc
    # A run whose status is not wanted still exists: only a run with no status and no
    # document has expired.
    return [
        _SKIPPED if doc is None and statuses[i] is not None else doc for i, doc in enumerate(docs)
    ]


# Stands for the document of a run that exists but is not wanted (not read).
_SKIPPED = ""


def _start(query: RunFilter) -> Cursor | None:
    if query.before is None:
        return None
    # ``before`` alone: every run created at that time comes before the page.
    return (query.before, query.before_run or "")


def list_runs(store: RunStore, query: RunFilter) -> RunPage:
    """A page of runs, newest first."""
    store.flush()
    indexes = indexes_for(query)
    since = query.since.timestamp() if query.since is not None else None
    until = query.until.timestamp() if query.until is not None else None
    served = _index_serves(query)
    # Where the indexes hold only matching runs, a page reads as many as it shows.
    chunk_size = query.limit if served else _CHUNK
    wanted = set() if served else set(query.status)
    after = _start(query)
    found: list[RunSummary] = []
    scanned = 0
    exhausted = False
    while len(found) < query.limit and scanned < MAX_SCANNED:
        want = min(chunk_size, query.limit - len(found)) if served else chunk_size
        # The newest entries of the union past ``after``: each index's first ``want``, merged.
        merged = heapq.merge(
            *(_entries(store, index, after, until, since, want) for index in indexes),
            reverse=True,
        )
        chunk = list(merged)[:want]
        docs = _read_docs(store, [run_id for _, run_id in chunk], wanted)
        gone = [run_id for (_, run_id), doc in zip(chunk, docs, strict=True) if doc is None]
        if gone:
            # Finished runs expire after run_ttl_s; an index forgets them as it meets them.
            for index in indexes:
                store.client.zrem(index, *gone)
        taken = 0
        for entry, doc in zip(chunk, docs, strict=True):
            taken += 1
            scanned += 1
            after = entry
            if not doc:
                continue
            state = RunState.model_validate_json(doc)
            if _matches(state, query, set(query.status)):
                found.append(summary_of(state))
                if len(found) == query.limit:
                    break
        if len(chunk) < want and taken == len(chunk):
            exhausted = True
            break
    if exhausted or after is None:
        return RunPage(runs=found, next_before=None)
    return RunPage(runs=found, next_before=after[0], next_before_run=after[1])


def _matches(state: RunState, query: RunFilter, wanted: set[RunStatus]) -> bool:
    if wanted and state.status not in wanted:
        return False
    if query.version is not None and state.agent_version != query.version:
        return False
    return query.agent is None or state.agent == query.agent


def get_run(store: RunStore, run_id: str) -> RunState | None:
    store.flush()
    return store.get(run_id)
