"""What the console's stats page shows: each agent's and version's figures beside the
window before (with drift flags), and charts of them over the window, all read from the
rollups (tether.insights.rollups), so the page costs a few hash reads however many runs
the window holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup
from pydantic import BaseModel

from tether.console.charts import Line, legend, line_chart
from tether.insights import rollups as rollup_reads
from tether.insights import series
from tether.insights.figures import Drift, DriftThresholds, Window, WindowStats
from tether.insights.stats import drift, selector
from tether.runtime import Runtime
from tether.store import rollups
from tether.transport.wire import utcnow

ALL = "all agents"
MINUTE, HOUR = 60, 3600


class AgentStats(BaseModel):
    """One row: an agent (or one version of it), its window and its drift from the one before."""

    agent: str
    version: str | None = None
    stats: WindowStats
    drift: Drift


@dataclass(frozen=True)
class AgentCharts:
    agent: str
    legend: Markup
    charts: list[Markup]


@dataclass(frozen=True)
class StatsView:
    window: Window
    rows: list[AgentStats]
    charts: list[AgentCharts]


def step_for(since: timedelta) -> int:
    """About 24 points a chart: whole minutes under a day, whole hours from a day."""
    seconds = int(since.total_seconds())
    unit = HOUR if seconds >= 86400 else MINUTE
    return max(unit, seconds // 24 // unit * unit)


def stats_view(rt: Runtime, since: timedelta, now: datetime | None = None) -> StatsView:
    """Production runs created in the last ``since``: all agents, each agent, and each
    version of an agent that has several, beside the window before; and their charts."""
    end = now or utcnow()
    current = rollup_reads.aligned(end - since, end)
    earlier = Window(start=current.start - since, end=current.start)
    keep = selector(None, None, include_eval=False)
    running = rollup_reads.in_flight(rt.store)
    memo: dict[rollups.Bucket, dict[str, str]] = {}  # the charts read the same hours
    found = {
        w.start: rollup_reads.by_series(rollup_reads.read_window(rt.store, w, memo), keep)
        for w in (current, earlier)
    }
    names = sorted(set(found[current.start]) | set(found[earlier.start]))
    limits = DriftThresholds()

    def figures(window: Window, agent: str | None, version: str | None) -> WindowStats:
        wanted = selector(agent, version, include_eval=False)
        counts: Counter[str] = Counter()
        for (a, v), tally in found[window.start].items():
            if wanted(a, v):
                counts.update(tally)
        return rollup_reads.window_stats(counts, rollup_reads.within(running, window, wanted))

    def row(agent: str | None, version: str | None) -> AgentStats:
        now_figures = figures(current, agent, version)
        before = figures(earlier, agent, version)
        return AgentStats(
            agent=agent or ALL,
            version=version,
            stats=now_figures,
            drift=drift(now_figures, before, limits),
        )

    rows = [row(None, None)]
    agents = sorted({a for a, _ in names} | {r.agent for r in running if keep(r.agent, "")})
    for agent in agents:
        rows.append(row(agent, None))
        versions = sorted({v for a, v in names if a == agent})
        if len(versions) > 1:
            rows += [row(agent, v) for v in versions]
    return StatsView(window=current, rows=rows, charts=_charts(rt, current, since, keep, memo))


def _charts(
    rt: Runtime,
    window: Window,
    since: timedelta,
    keep: series.Select,
    memo: dict[rollups.Bucket, dict[str, str]],
) -> list[AgentCharts]:
    points = series.over_time(rt.store, window, step_for(since), keep, memo)
    first, last = window.start.strftime("%m-%d %H:%M"), window.end.strftime("%m-%d %H:%M")
    return [
        _agent_charts(
            agent, [(v, p) for (a, v), p in sorted(points.items()) if a == agent], first, last
        )
        for agent in sorted({a for a, _ in points})
    ]


def _agent_charts(
    agent: str, versions: list[tuple[str, list[series.Point]]], first: str, last: str
) -> AgentCharts:
    """One agent's charts, a line per version."""
    labels = [f"{agent} {v or '(no version)'}" for v, _ in versions]

    def lines(pick: series.Pick, dashed: bool = False) -> list[Line]:
        return [
            Line(label=label, values=[pick(x) for x in p], dashed=dashed, colour=n)
            for n, (label, (_, p)) in enumerate(zip(labels, versions, strict=True))
        ]

    return AgentCharts(
        agent=agent,
        legend=legend(labels),
        charts=[
            line_chart(
                "success rate",
                lines(lambda x: x.success_rate),
                first,
                last,
                fmt="{:.0%}".format,
                ceiling=1.0,
            ),
            line_chart(
                "cost (USD)", lines(lambda x: x.cost_usd), first, last, fmt="${:.4f}".format
            ),
            line_chart(
                "latency p50 (solid) / p95 (dashed), s",
                lines(lambda x: x.latency_p50_s) + lines(lambda x: x.latency_p95_s, True),
                first,
                last,
                fmt="{:.1f}".format,
            ),
            line_chart("steps, mean", lines(lambda x: x.steps_mean), first, last),
            line_chart(
                "feedback, mean score",
                lines(lambda x: x.feedback_mean),
                first,
                last,
                fmt="{:+.1f}".format,
                floor=-1.0,
                ceiling=1.0,
            ),
        ],
    )
