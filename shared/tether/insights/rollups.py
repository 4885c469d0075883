"""Stats from the rollups (tether.store.rollups): a window's figures from its minute and
hour buckets, plus the runs still in flight read one by one.

Ended runs are counted by their end commits into the buckets of their creation time;
runs not ended yet are in no bucket, so the unfinished runs index (``tether:runs:active``)
gives them, each read as in ``read_runs``. Feedback always comes from the buckets (its
commit counts it, whether the run has ended or not), never from an in-flight run's state.
Windows are whole minutes, the smallest bucket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import cast

from pydantic import BaseModel, ConfigDict
from redis.exceptions import NoPermissionError

from tether.guardrails.tally import PREFIX as GUARDRAIL_FIGURE
from tether.insights.figures import (
    CostFigures,
    Distribution,
    ErrorFigure,
    EscalationRate,
    FeedbackFigures,
    LatencyFigures,
    RunCounts,
    StepFigures,
    SuccessRate,
    Window,
    WindowStats,
)
from tether.store import keys, rollups
from tether.store.rollups import MINUTE_S, NANO_USD
from tether.store.runs import RunStore
from tether.store.state import RunState, RunStatus

Series = tuple[str, str]  # (agent, version)
Select = Callable[[str, str], bool]


def aligned(start: datetime, end: datetime) -> Window:
    """[start, end) widened to whole minutes."""
    low = int(start.timestamp() // MINUTE_S * MINUTE_S)
    high = -int(-end.timestamp() // MINUTE_S * MINUTE_S)
    return Window(start=datetime.fromtimestamp(low, UTC), end=datetime.fromtimestamp(high, UTC))


def _span(window: Window) -> tuple[int, int]:
    return int(window.start.timestamp()), int(window.end.timestamp())


def tally(hashes: Iterable[dict[str, str]], select: Select) -> Counter[str]:
    """The figures of the selected series, summed over ``hashes``."""
    total: Counter[str] = Counter()
    for counts in by_series(hashes, select).values():
        total.update(counts)
    return total


# Each field name once split: ((agent, version), figure). Bounded by the series and the
# histogram buckets there are, which is why a page's cost does not grow with its runs.
_SPLIT: dict[str, tuple[Series, str]] = {}


def _split(name: str) -> tuple[Series, str]:
    found = _SPLIT.get(name)
    if found is None:
        agent, version, figure = rollups.split_field(name)
        if len(_SPLIT) > 200_000:
            _SPLIT.clear()
        found = _SPLIT[name] = ((agent, version), figure)
    return found


def by_series(hashes: Iterable[dict[str, str]], select: Select) -> dict[Series, Counter[str]]:
    """The figures of each selected (agent, version), summed over ``hashes``."""
    sums: dict[Series, dict[str, int]] = {}
    kept: dict[Series, bool] = {}
    for bucket in hashes:
        for name, count in bucket.items():
            series, figure = _SPLIT.get(name) or _split(name)
            into = sums.get(series)
            if into is None:
                if series in kept:
                    continue
                kept[series] = select(*series)
                if not kept[series]:
                    continue
                into = sums[series] = {}
            into[figure] = into.get(figure, 0) + int(count)
    return {series: Counter(figures) for series, figures in sums.items()}


def read_window(
    store: RunStore, window: Window, memo: dict[rollups.Bucket, dict[str, str]] | None = None
) -> list[dict[str, str]]:
    return rollups.read_buckets(store.client, rollups.cover(*_span(window)), memo)


# --- figures from counters -----------------------------------------------------------


HISTOGRAMS = {"steps": False, "calls": False, "cost": True, "latency": True}


@lru_cache(maxsize=65536)
def _histogram_point(figure: str) -> tuple[str, float] | None:
    """("latency", its value) for a histogram figure "latency:<bucket>"; None for others."""
    kind, _, bucket = figure.partition(":")
    log = HISTOGRAMS.get(kind)
    if log is None:
        return None
    return kind, rollups.bucket_value(bucket) if log else float(bucket)


def histograms(counts: Counter[str]) -> dict[str, list[tuple[float, int]]]:
    """(value, runs) of each histogram figure (steps, calls, cost, latency), by value."""
    found: dict[str, list[tuple[float, int]]] = {kind: [] for kind in HISTOGRAMS}
    for name, n in counts.items():
        point = _histogram_point(name)
        if point is not None and n > 0:
            found[point[0]].append((point[1], n))
    for points in found.values():
        points.sort()
    return found


def hist_percentile(points: Sequence[tuple[float, int]], q: float) -> float | None:
    """As stats.percentile over the values the histogram holds (linear interpolation)."""
    total = sum(n for _, n in points)
    if total == 0:
        return None
    rank = (total - 1) * q / 100
    low, high = int(rank), min(int(rank) + 1, total - 1)

    def at(position: int) -> float:
        seen = 0
        for value, n in points:
            seen += n
            if position < seen:
                return value
        return points[-1][0]

    below = at(low)
    return below + (at(high) - below) * (rank - low)


def hist_mean(points: Sequence[tuple[float, int]]) -> float | None:
    total = sum(n for _, n in points)
    return sum(v * n for v, n in points) / total if total else None


def window_stats(counts: Counter[str], in_flight: Sequence[InFlightRun]) -> WindowStats:
    """A window's figures: its ended runs' counters and its runs still in flight."""
    ended = counts["ended"]
    total = ended + len(in_flight)
    by_status = Counter(
        {
            name.removeprefix("status:"): n
            for name, n in counts.items()
            if name.startswith("status:") and n
        }
    )
    by_status.update(str(r.status) for r in in_flight)
    succeeded = counts[f"status:{RunStatus.succeeded}"]
    drawn = histograms(counts)
    steps, calls, cost, latency = (drawn[k] for k in ("steps", "calls", "cost", "latency"))
    spent = counts["cost_nusd"] / NANO_USD
    errors = {
        name.removeprefix("error:"): n for name, n in counts.items() if name.startswith("error:")
    }
    escalated = counts["escalated"] + sum(1 for r in in_flight if r.escalated)
    scores = {str(s): counts[f"feedback:{s}"] for s in (-1, 0, 1)}
    feedback = sum(scores.values())
    return WindowStats(
        runs=RunCounts(
            total=total,
            finished=ended,
            in_flight=len(in_flight),
            by_status=dict(sorted(by_status.items())),
        ),
        success_rate=SuccessRate(
            value=succeeded / ended if ended else None, succeeded=succeeded, finished=ended
        ),
        steps=StepFigures(
            mean=hist_mean(steps),
            p95=hist_percentile(steps, 95),
            tool_calls=Distribution(mean=hist_mean(calls), p95=hist_percentile(calls, 95)),
        ),
        cost_usd=CostFigures(
            mean=spent / ended if ended else None,
            p95=hist_percentile(cost, 95),
            total=spent + sum(r.cost_usd for r in in_flight),
            tokens_total=counts["tokens"] + sum(r.tokens for r in in_flight),
        ),
        latency_s=LatencyFigures(
            p50=hist_percentile(latency, 50),
            p95=hist_percentile(latency, 95),
            p99=hist_percentile(latency, 99),
        ),
        errors={
            category: ErrorFigure(count=n, rate=n / ended)
            for category, n in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
        },
        escalation_rate=EscalationRate(
            value=escalated / total if total else None, escalated=escalated, runs=total
        ),
        feedback=FeedbackFigures(
            count=feedback,
            runs_with_feedback=counts["feedback_runs"],
            mean_score=(sum(int(s) * n for s, n in scores.items()) / feedback)
            if feedback
            else None,
            by_score=scores,
        ),
        guardrails={
            name.removeprefix(GUARDRAIL_FIGURE): n
            for name, n in sorted(counts.items())
            if name.startswith(GUARDRAIL_FIGURE) and n
        },
        rate_limited_s=(counts["rate_limited_ms"] + sum(r.rate_limited_ms for r in in_flight))
        / 1000,
    )


# --- runs in flight ------------------------------------------------------------------


class InFlightRun(BaseModel):
    """What a window's figures take from a run that has not ended."""

    model_config = ConfigDict(frozen=True)

    agent: str
    agent_version: str
    status: RunStatus
    created_at: datetime
    tokens: int
    cost_usd: float
    escalated: bool
    rate_limited_ms: int = 0


def in_flight(store: RunStore, chunk: int = 500) -> list[InFlightRun]:
    """The runs of the unfinished runs index that have not ended. An ended run stays in
    the index until the stalled-run sweep or a reader meets it: this one drops those it
    meets, as RunIndexes.forget_active does, so the index stays about as long as the runs in
    flight."""
    ids = cast(list[str], store.client.zrange(keys.ACTIVE_RUNS, 0, -1))
    found: list[InFlightRun] = []
    for at in range(0, len(ids), chunk):
        part = ids[at : at + chunk]
        pipe = store.client.pipeline(transaction=False)
        for run_id in part:
            pipe.hget(keys.run(run_id), "status")
        statuses = cast(list[str | None], pipe.execute())
        # Ended (its end commit counted it in the rollups) or expired: as forget_active,
        # for all of them in one round trip.
        gone = [
            r for r, s in zip(part, statuses, strict=True) if s is None or RunStatus(s).terminal
        ]
        if gone:
            # A read-only Redis user may not: the stalled-run sweep drops them instead.
            with suppress(NoPermissionError):
                prune = store.client.pipeline(transaction=False)
                prune.zrem(keys.ACTIVE_RUNS, *gone)
                prune.hdel(keys.REDRIVES, *gone)
                prune.execute()
        running = [
            r for r, s in zip(part, statuses, strict=True) if s and not RunStatus(s).terminal
        ]
        pipe = store.client.pipeline(transaction=False)
        for run_id in running:
            pipe.hget(keys.run(run_id), "doc")
            pipe.hgetall(keys.budget(run_id))
        replies = pipe.execute()
        for doc, budget in zip(replies[::2], replies[1::2], strict=True):
            if doc is None:
                continue
            state = RunState.model_validate_json(doc)
            if state.terminal:
                continue  # ended since: its end commit counted it in the rollups
            found.append(
                InFlightRun(
                    agent=state.agent,
                    agent_version=state.agent_version,
                    status=state.status,
                    created_at=state.created_at,
                    tokens=int(budget.get("tokens") or 0),
                    cost_usd=float(budget.get("cost_usd") or 0.0),
                    escalated=bool(state.awaiting_human) or state.human_wait_s > 0,
                    rate_limited_ms=int(budget.get("rate_limited_ms") or 0),
                )
            )
    return found


def within(runs: Iterable[InFlightRun], window: Window, select: Select) -> list[InFlightRun]:
    return [
        r
        for r in runs
        if window.start <= r.created_at < window.end and select(r.agent, r.agent_version)
    ]
