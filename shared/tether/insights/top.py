"""What `tether top` shows: queues, runs in flight, finish rates and pending records.

Everything is read from Redis as the services leave it, never from a worker:
the same queue and escalation figures the escalation service serves on
/metrics (tether.observability.metrics.read_redis_figures), the status field of each run in
the index of unfinished runs, and the `run_finished` entries of the lifecycle
stream for the rates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

import redis
from pydantic import BaseModel

from tether.errors import UnknownEscalationError
from tether.escalation import records
from tether.observability import metrics
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunStatus
from tether.transport.wire import EventKind

# Redis round trips are paged so a large index or a busy stream never blocks Redis long.
_PAGE = 1000


class PendingEscalation(BaseModel):
    escalation_id: str
    run_id: str
    agent: str
    kind: str
    reason: str
    age_s: float


class FinishRates(BaseModel):
    """Runs whose `run_finished` entry reached the lifecycle stream in the last ``window_s``."""

    window_s: float
    # status -> runs; "unknown" when the run's record has already expired.
    by_status: dict[str, int]
    total: int
    per_minute: dict[str, float]


class TopSnapshot(BaseModel):
    taken_at: datetime
    queues: list[metrics.QueueFigures]
    # Unfinished runs by status (queued, running, waiting_tools, waiting_human).
    in_flight: dict[str, int]
    in_flight_total: int
    finished: FinishRates
    escalations_pending: int
    oldest_escalation_age_s: float
    # The oldest pending escalations first, at most the number asked for.
    escalations: list[PendingEscalation]


def snapshot(
    rt: Runtime, *, window_s: float = 300.0, escalation_rows: int = 5, now: float | None = None
) -> TopSnapshot:
    now = time.time() if now is None else now
    client = rt.store.client
    figures = metrics.read_redis_figures(client, now=now, broker=rt.broker)
    in_flight = runs_in_flight(client)
    return TopSnapshot(
        taken_at=datetime.fromtimestamp(now, UTC),
        queues=figures.queues,
        in_flight=in_flight,
        in_flight_total=sum(in_flight.values()),
        finished=finish_rates(client, window_s, now),
        escalations_pending=figures.escalations_pending,
        oldest_escalation_age_s=figures.oldest_escalation_age_s,
        escalations=oldest_escalations(rt, escalation_rows, now),
    )


def _statuses(client: redis.Redis, run_ids: Iterable[str]) -> list[str | None]:
    ids = list(run_ids)
    found: list[str | None] = []
    for start in range(0, len(ids), _PAGE):
        pipe = client.pipeline(transaction=False)
        for run_id in ids[start : start + _PAGE]:
            pipe.hget(keys.run(run_id), "status")
        found += cast(list[str | None], pipe.execute())
    return found


def runs_in_flight(client: redis.Redis) -> dict[str, int]:
    """Unfinished runs by status; a finished run the index still holds is not counted."""
    run_ids = cast(list[str], client.zrange(keys.ACTIVE_RUNS, 0, -1))
    counts = Counter(
        status
        for status in _statuses(client, run_ids)
        # None: the record expired; terminal: the index forgets it at its next stall check.
        if status is not None and not RunStatus(status).terminal
    )
    return dict(sorted(counts.items()))


def finish_rates(client: redis.Redis, window_s: float, now: float) -> FinishRates:
    finished: set[str] = set()
    start = f"{int((now - window_s) * 1000)}-0"
    end = "+"
    while True:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            client.xrevrange(keys.LIFECYCLE_STREAM, max=end, min=start, count=_PAGE),
        )
        finished.update(f["run_id"] for _, f in entries if f.get("kind") == EventKind.run_finished)
        if len(entries) < _PAGE:
            break
        end = f"({entries[-1][0]}"
    counts = Counter(status or "unknown" for status in _statuses(client, sorted(finished)))
    by_status = dict(sorted(counts.items()))
    minutes = window_s / 60
    return FinishRates(
        window_s=window_s,
        by_status=by_status,
        total=sum(by_status.values()),
        per_minute={status: count / minutes for status, count in by_status.items()},
    )


def oldest_escalations(rt: Runtime, limit: int, now: float) -> list[PendingEscalation]:
    if limit <= 0:
        return []
    ids = cast(list[str], rt.store.client.zrange(keys.PENDING_ESCALATIONS, 0, limit - 1))
    rows = []
    for escalation_id in ids:
        try:
            record, _ = records.load(rt, escalation_id)
        except UnknownEscalationError:
            continue  # expired with its run; `tether escalations list` prunes the index
        e = record.escalation
        rows.append(
            PendingEscalation(
                escalation_id=e.escalation_id,
                run_id=e.run_id,
                agent=e.agent,
                kind=str(e.kind),
                reason=e.reason,
                age_s=max(0.0, now - e.created_at.timestamp()),
            )
        )
    return rows
