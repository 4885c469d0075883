"""`tether stats`: how agents do, read back from Redis.

Figures are computed from facts the commits already hold, each counted once. A
run's end commit counts it into the rollups of the minute and hour it was created
in (tether.store.rollups): its status, steps, tool calls, tokens and cost spent,
latency, error category, and whether it waited for a human; a feedback's commit
counts the feedback. ``compute`` reads those buckets, and the runs still in flight
one by one (tether.insights.rollups), so a window means "runs created in it", in
whole minutes; rollups are kept 35 days, longer than the runs themselves.
``read_runs`` and ``summarize`` compute the same figures from every run's record:
the definition the rollups are tested against, and the way to per-run detail.

Definitions (also printed by the CLI and carried in the JSON):

- finished: a run in a terminal status (succeeded, failed, budget_exhausted,
  rejected, cancelled). Per-run figures (steps, tool calls, cost mean/p95,
  latency) and error rates are over finished runs, so runs still in flight do
  not pull them down; ``cost_usd.total`` is everything the window's runs
  spent so far, in flight included.
- success rate: succeeded / finished.
- escalated: the run waited for a human at least once (every escalation is a
  wait; ``read_runs`` finds them by the escalation records that name the run)
  or it waits for one now; escalation rate: escalated / all runs in the window.
- percentiles: linear interpolation between closest ranks (numpy's default); from the
  rollups, steps and tool calls exactly, cost and latency within about 2% (their
  histograms have 16 buckets to a doubling).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import cast

from pydantic import BaseModel, ConfigDict, ValidationError

from tether.errors import TetherError
from tether.insights import rollups
from tether.insights.figures import (
    CostFigures,
    Distribution,
    Drift,
    DriftFigure,
    DriftThresholds,
    ErrorFigure,
    EscalationRate,
    FeedbackFigures,
    Filters,
    LatencyFigures,
    RunCounts,
    Stats,
    StepFigures,
    SuccessRate,
    Window,
    WindowStats,
)
from tether.store import keys
from tether.store.runs import RunStore
from tether.store.state import EscalationRecord, RunState, RunStatus
from tether.transport.wire import utcnow

# Reads go out in pipelines of this many runs: one round trip each, bounded replies.
READ_CHUNK = 500
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class StatsError(TetherError):
    pass


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``1d``, ``2w`` as a timedelta."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise StatsError(
            f"cannot read the duration {text!r}; write a positive number and a unit, "
            "one of s, m, h, d, w (e.g. 30m, 1h, 7d)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- the facts of one run --------------------------------------------------------------


class RunFacts(BaseModel):
    """What stats needs from one run, read from its state and budget."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    agent: str
    agent_version: str
    status: RunStatus
    created_at: datetime
    steps: int
    tool_calls: int
    tokens: int
    cost_usd: float
    latency_s: float | None
    error_category: str | None
    escalated: bool
    feedback_scores: list[int]
    rate_limited_ms: int = 0

    @property
    def finished(self) -> bool:
        return self.status.terminal


def facts_of(
    state: RunState, budget: dict[str, str], escalated: bool, tool_calls: int | None = None
) -> RunFacts:
    """``tool_calls``: the run's completed actions, where ``state`` was read without them."""
    latency = (
        (state.finished_at - state.created_at).total_seconds()
        if state.finished_at is not None and state.terminal
        else None
    )
    return RunFacts(
        run_id=state.run_id,
        agent=state.agent,
        agent_version=state.agent_version,
        status=state.status,
        created_at=state.created_at,
        steps=state.step,
        tool_calls=len(state.completed_actions) if tool_calls is None else tool_calls,
        tokens=int(budget.get("tokens") or 0),
        cost_usd=float(budget.get("cost_usd") or 0.0),
        latency_s=latency,
        error_category=str(state.error.category) if state.error is not None else None,
        escalated=escalated or bool(state.awaiting_human),
        feedback_scores=[f.score for f in state.feedback],
        rate_limited_ms=int(budget.get("rate_limited_ms") or 0),
    )


# --- computing -------------------------------------------------------------------------


def summarize(runs: Sequence[RunFacts]) -> WindowStats:
    """The figures of one window from its runs' facts."""
    finished = [r for r in runs if r.finished]
    succeeded = sum(1 for r in finished if r.status == RunStatus.succeeded)
    steps = [float(r.steps) for r in finished]
    tool_calls = [float(r.tool_calls) for r in finished]
    costs = [r.cost_usd for r in finished]
    latencies = [r.latency_s for r in finished if r.latency_s is not None]
    errors = Counter(r.error_category for r in finished if r.error_category is not None)
    scores = [s for r in runs for s in r.feedback_scores]
    escalated = sum(1 for r in runs if r.escalated)
    return WindowStats(
        runs=RunCounts(
            total=len(runs),
            finished=len(finished),
            in_flight=len(runs) - len(finished),
            by_status=dict(sorted(Counter(str(r.status) for r in runs).items())),
        ),
        success_rate=SuccessRate(
            value=succeeded / len(finished) if finished else None,
            succeeded=succeeded,
            finished=len(finished),
        ),
        steps=StepFigures(
            mean=mean(steps),
            p95=percentile(steps, 95),
            tool_calls=Distribution(mean=mean(tool_calls), p95=percentile(tool_calls, 95)),
        ),
        cost_usd=CostFigures(
            mean=mean(costs),
            p95=percentile(costs, 95),
            total=sum(r.cost_usd for r in runs),
            tokens_total=sum(r.tokens for r in runs),
        ),
        latency_s=LatencyFigures(
            p50=percentile(latencies, 50),
            p95=percentile(latencies, 95),
            p99=percentile(latencies, 99),
        ),
        errors={
            category: ErrorFigure(count=count, rate=count / len(finished))
            for category, count in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
        },
        escalation_rate=EscalationRate(
            value=escalated / len(runs) if runs else None, escalated=escalated, runs=len(runs)
        ),
        feedback=FeedbackFigures(
            count=len(scores),
            runs_with_feedback=sum(1 for r in runs if r.feedback_scores),
            mean_score=mean([float(s) for s in scores]),
            by_score={str(s): scores.count(s) for s in (-1, 0, 1)},
        ),
        rate_limited_s=sum(r.rate_limited_ms for r in runs) / 1000,
    )


def _rise(current: float | None, baseline: float | None, limit: float) -> DriftFigure:
    threshold = f"mean rises more than {limit:.0%}"
    if current is None or baseline is None:
        return DriftFigure(
            current=current, baseline=baseline, change=None, threshold=threshold, flagged=False
        )
    if baseline == 0:
        # Any rise from nothing is a rise; no rise from nothing is no change.
        change = math.inf if current > 0 else 0.0
    else:
        change = (current - baseline) / baseline
    return DriftFigure(
        current=current,
        baseline=baseline,
        change=None if math.isinf(change) else change,
        threshold=threshold,
        flagged=change > limit,
    )


def drift(current: WindowStats, baseline: WindowStats, limits: DriftThresholds) -> Drift:
    """Flags where the current window got worse than the baseline beyond ``limits``."""
    now, before = current.success_rate.value, baseline.success_rate.value
    points = None if now is None or before is None else (now - before) * 100
    figures = {
        "steps": _rise(current.steps.mean, baseline.steps.mean, limits.steps_rise),
        "cost_usd": _rise(current.cost_usd.mean, baseline.cost_usd.mean, limits.cost_rise),
        "success_rate": DriftFigure(
            current=now,
            baseline=before,
            change=points,
            threshold=f"drops more than {limits.success_drop_points:g} points",
            flagged=points is not None and -points > limits.success_drop_points,
        ),
    }
    return Drift(
        steps=figures["steps"],
        cost_usd=figures["cost_usd"],
        success_rate=figures["success_rate"],
        flagged=[name for name, figure in figures.items() if figure.flagged],
    )


# --- reading Redis ---------------------------------------------------------------------


def _chunks(items: Sequence[str], size: int = READ_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def escalated_runs(store: RunStore, since: datetime) -> set[str]:
    """Runs named by an escalation opened since ``since`` (escalations follow their run)."""
    ids = cast(
        list[str], store.client.zrangebyscore(keys.ALL_ESCALATIONS, since.timestamp(), "+inf")
    )
    runs: set[str] = set()
    for chunk in _chunks(ids):
        pipe = store.client.pipeline(transaction=False)
        for escalation_id in chunk:
            pipe.hget(keys.escalation(escalation_id), "doc")
        for doc in pipe.execute():
            if doc is not None:
                runs.add(EscalationRecord.model_validate_json(doc).escalation.run_id)
    return runs


def read_runs(
    store: RunStore,
    window: Window,
    *,
    agent: str | None = None,
    version: str | None = None,
    escalated: set[str] | None = None,
    include_eval: bool = True,
) -> list[RunFacts]:
    """The facts of runs created in [start, end) that match the filters; ``include_eval``
    False leaves out evaluation runs (agent ``eval:…``)."""
    ids = cast(
        list[str],
        store.client.zrangebyscore(
            keys.RUN_INDEX, window.start.timestamp(), f"({window.end.timestamp()}"
        ),
    )
    if escalated is None:
        escalated = escalated_runs(store, window.start)
    facts: list[RunFacts] = []
    for chunk in _chunks(ids):
        pipe = store.client.pipeline(transaction=False)
        for run_id in chunk:
            # The document alone: completed actions counted, not read (tether.store.run_lists).
            pipe.hmget(keys.run(run_id), ["doc", "completed"])
            pipe.hgetall(keys.budget(run_id))
        replies = pipe.execute()
        for run_id, (doc, completed), budget in zip(
            chunk, replies[::2], replies[1::2], strict=True
        ):
            if doc is None:
                continue  # expired; `tether runs list` prunes the index
            try:
                state = RunState.model_validate_json(doc)
            except ValidationError as exc:
                raise StatsError(
                    f"run {run_id} holds a state this version of Tether cannot read ({exc}); "
                    "upgrade the CLI to the workers' version"
                ) from exc
            if agent is not None and state.agent != agent:
                continue
            if version is not None and state.agent_version != version:
                continue
            if not include_eval and state.agent.startswith("eval:"):
                continue
            done = int(completed) if completed is not None else None
            facts.append(facts_of(state, budget, run_id in escalated, done))
    return facts


def selector(
    agent: str | None, version: str | None, include_eval: bool
) -> Callable[[str, str], bool]:
    """Which (agent, version) series the filters keep."""

    def keep(name: str, agent_version: str) -> bool:
        if agent is not None and name != agent:
            return False
        if version is not None and agent_version != version:
            return False
        return include_eval or not name.startswith("eval:")

    return keep


def compute(
    store: RunStore,
    *,
    since: timedelta,
    agent: str | None = None,
    version: str | None = None,
    compare_to: timedelta | None = None,
    now: datetime | None = None,
    thresholds: DriftThresholds | None = None,
    include_eval: bool = True,
) -> Stats:
    """Stats of runs created in the last ``since`` (in whole minutes, the current one
    included), from the rollups; with ``compare_to``, beside the window of the same
    length ending ``compare_to`` earlier, with drift flags."""
    end = now or utcnow()
    current = rollups.aligned(end - since, end)
    earlier = (
        rollups.aligned(current.start - compare_to, current.end - compare_to)
        if compare_to is not None
        else None
    )
    keep = selector(agent, version, include_eval)
    running = rollups.in_flight(store)

    def figures(window: Window) -> WindowStats:
        counts = rollups.tally(rollups.read_window(store, window), keep)
        return rollups.window_stats(counts, rollups.within(running, window, keep))

    stats = figures(current)
    filters = Filters(
        agent=agent,
        version=version,
        since_s=since.total_seconds(),
        compare_to_s=compare_to.total_seconds() if compare_to is not None else None,
        window=current,
        compare_window=earlier,
    )
    if earlier is None:
        return Stats(**dict(stats), filters=filters)
    baseline = figures(earlier)
    return Stats(
        **dict(stats),
        filters=filters,
        compare=baseline,
        drift=drift(stats, baseline, thresholds or DriftThresholds()),
    )
