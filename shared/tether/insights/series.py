"""Figures over time: a window cut into equal steps, each step's figures per agent and
version, read from the rollups (tether.store.rollups) for the console's charts.

A point counts the runs created in its step that have ended (runs in flight are in no
rollup yet), so the newest steps fill in as their runs end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from tether.insights import rollups as rollup_reads
from tether.insights.figures import Window
from tether.store import rollups
from tether.store.rollups import HOUR_S, MINUTE_S, NANO_USD
from tether.store.runs import RunStore
from tether.store.state import RunStatus

Series = tuple[str, str]
Select = Callable[[str, str], bool]


class Point(BaseModel):
    """The ended runs created in one step: [start, start + step)."""

    start: datetime
    ended: int
    success_rate: float | None
    steps_mean: float | None
    cost_usd: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    feedback_mean: float | None


Pick = Callable[[Point], float | None]


def point(start: datetime, counts: Counter[str]) -> Point:
    ended = counts["ended"]
    drawn = rollup_reads.histograms(counts)
    latency, steps = drawn["latency"], drawn["steps"]
    scores = {s: counts[f"feedback:{s}"] for s in (-1, 0, 1)}
    given = sum(scores.values())
    return Point(
        start=start,
        ended=ended,
        success_rate=counts[f"status:{RunStatus.succeeded}"] / ended if ended else None,
        steps_mean=rollup_reads.hist_mean(steps),
        cost_usd=counts["cost_nusd"] / NANO_USD,
        latency_p50_s=rollup_reads.hist_percentile(latency, 50),
        latency_p95_s=rollup_reads.hist_percentile(latency, 95),
        latency_p99_s=rollup_reads.hist_percentile(latency, 99),
        feedback_mean=sum(s * n for s, n in scores.items()) / given if given else None,
    )


def over_time(
    store: RunStore,
    window: Window,
    step_s: int,
    select: Select,
    memo: dict[rollups.Bucket, dict[str, str]] | None = None,
) -> dict[Series, list[Point]]:
    """Each selected series' points across ``window`` (whole steps from its start; a
    step of an hour or more reads hour buckets, a shorter one minute buckets)."""
    size_s, granularity = (HOUR_S, "h") if step_s % HOUR_S == 0 else (MINUTE_S, "m")
    start = int(window.start.timestamp()) // size_s * size_s
    end = int(window.end.timestamp())
    steps = list(range(start, end, step_s))
    buckets = [(granularity, at) for s in steps for at in range(s, s + step_s, size_s)]
    hashes = rollups.read_buckets(store.client, buckets, memo)
    per_step = step_s // size_s
    grouped = [hashes[i * per_step : (i + 1) * per_step] for i in range(len(steps))]
    in_steps = [rollup_reads.by_series(group, select) for group in grouped]
    names = sorted({name for found in in_steps for name in found})
    return {
        name: [
            point(datetime.fromtimestamp(at, UTC), found.get(name, Counter()))
            for at, found in zip(steps, in_steps, strict=True)
        ]
        for name in names
    }
