"""`tether stats`: success, steps, cost, latency, errors, escalations and feedback per window."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tether.cli import render
from tether.cli.connection import nothing_found, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.insights.figures import DriftFigure, ErrorFigure, Stats, WindowStats


def stats(
    agent: str = typer.Option(None, "--agent", help="Only runs of this agent"),
    version: str = typer.Option(None, "--version", help="Only runs of this agent version"),
    since: str = typer.Option(
        "1h", "--since", help="Window: runs created in the last 30m, 1h, 7d…"
    ),
    compare_to: str = typer.Option(
        None,
        "--compare-to",
        help="Also show the window of the same length ending this much earlier (e.g. 1d), "
        "and flag drift",
    ),
    include_eval: bool = typer.Option(
        False, "--include-eval", help="Also count evaluation runs (agent eval:…)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """How runs did: success rate, steps, cost, latency, errors, escalations, feedback.

    Evaluation runs (agent eval:…) are left out unless --include-eval or --agent names one.
    """
    from tether.insights import stats as run_stats

    result = run_stats.compute(
        runtime().store,
        since=run_stats.parse_duration(since),
        agent=agent,
        version=version,
        compare_to=run_stats.parse_duration(compare_to) if compare_to else None,
        include_eval=include_eval or bool(agent and agent.startswith("eval:")),
    )
    if as_json:
        # Plain print: rich would wrap and colour the document.
        print(result.to_json())
        return
    if result.runs.total == 0:
        render.console.print(nothing_found(f"runs created in the last {since}"))
    render.console.print(stats_table(result))
    for line in definitions(result):
        render.console.print(line)


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _rate(value: float | None) -> str:
    return _num(None if value is None else value * 100, "{:.1f}%")


def _usd(value: float | None) -> str:
    return _num(value, "${:.6f}")


Row = tuple[str, Callable[["WindowStats"], str]]

ROWS: list[Row] = [
    (
        "runs (finished / in flight)",
        lambda s: f"{s.runs.total} ({s.runs.finished} / {s.runs.in_flight})",
    ),
    (
        "success rate",
        lambda s: (
            f"{_rate(s.success_rate.value)} ({s.success_rate.succeeded}/{s.success_rate.finished})"
        ),
    ),
    ("steps per run mean / p95", lambda s: f"{_num(s.steps.mean)} / {_num(s.steps.p95)}"),
    (
        "tool calls per run mean / p95",
        lambda s: f"{_num(s.steps.tool_calls.mean)} / {_num(s.steps.tool_calls.p95)}",
    ),
    ("cost per run mean / p95", lambda s: f"{_usd(s.cost_usd.mean)} / {_usd(s.cost_usd.p95)}"),
    ("cost total (tokens)", lambda s: f"{_usd(s.cost_usd.total)} ({s.cost_usd.tokens_total})"),
    ("rate-limited seconds", lambda s: f"{s.rate_limited_s:.1f}"),
    (
        "latency p50 / p95 / p99",
        lambda s: " / ".join(
            _num(v, "{:.2f}s") for v in (s.latency_s.p50, s.latency_s.p95, s.latency_s.p99)
        ),
    ),
    (
        "escalation rate",
        lambda s: (
            f"{_rate(s.escalation_rate.value)} "
            f"({s.escalation_rate.escalated}/{s.escalation_rate.runs})"
        ),
    ),
    (
        "feedback count / mean score",
        lambda s: f"{s.feedback.count} / {_num(s.feedback.mean_score, '{:+.2f}')}",
    ),
    (
        "feedback -1 / 0 / +1",
        lambda s: " / ".join(str(s.feedback.by_score.get(k, 0)) for k in ("-1", "0", "1")),
    ),
]


def _drift_cell(figure: DriftFigure, points: bool = False) -> str:
    if figure.change is None:
        text = "-" if figure.current is None or figure.baseline is None else "new"
    else:
        text = f"{figure.change:+.1f} pts" if points else f"{figure.change:+.1%}"
    return f"[bold red]{text} DRIFT[/]" if figure.flagged else text


def stats_table(result: Stats) -> Table:
    f = result.filters
    scope = ", ".join(
        part
        for part in (
            f"agent {f.agent}" if f.agent else "all agents",
            f"version {f.version}" if f.version else "",
            f"created {f.window.start:%m-%d %H:%M} - {f.window.end:%m-%d %H:%M} UTC",
        )
        if part
    )
    table = Table(title="tether stats", caption=escape(scope))
    table.add_column("figure")
    table.add_column("current", justify="right")
    windows: list[WindowStats] = [result]
    if result.compare is not None and f.compare_window is not None:
        table.add_column(
            f"earlier ({f.compare_window.start:%m-%d %H:%M} - {f.compare_window.end:%m-%d %H:%M})",
            justify="right",
        )
        table.add_column("drift", justify="right")
        windows.append(result.compare)
    drift_cells: dict[str, str] = {}
    if result.drift is not None:
        drift_cells = {
            "success rate": _drift_cell(result.drift.success_rate, points=True),
            "steps per run mean / p95": _drift_cell(result.drift.steps),
            "cost per run mean / p95": _drift_cell(result.drift.cost_usd),
        }
    for label, cell in ROWS:
        row = [label, *(cell(w) for w in windows)]
        if result.drift is not None:
            row.append(drift_cells.get(label, ""))
        table.add_row(*row)
    categories = sorted(
        {c for w in windows for c in w.errors}, key=lambda c: -result.errors.get(c, _none()).count
    )
    for category in categories:
        row = [f"error {category}"]
        for w in windows:
            found = w.errors.get(category, _none())
            row.append(f"{found.count} ({_rate(found.rate)})")
        if result.drift is not None:
            row.append("")
        table.add_row(*row)
    for outcome in sorted({o for w in windows for o in w.guardrails}):
        row = [f"guardrail {outcome}", *(str(w.guardrails.get(outcome, 0)) for w in windows)]
        table.add_row(*row, *([""] if result.drift is not None else []))
    return table


def _none() -> ErrorFigure:
    from tether.insights.figures import ErrorFigure

    return ErrorFigure(count=0, rate=0.0)


def definitions(result: Stats) -> list[str]:
    lines = [
        f"[dim]success rate: {result.success_rate.definition}[/]",
        f"[dim]escalation rate: {result.escalation_rate.definition}[/]",
        f"[dim]per run: {result.steps.definition}; error rate: runs ending with that error / "
        "finished runs[/]",
    ]
    if result.drift is not None:
        d = result.drift
        lines.append(
            f"[dim]drift: steps {d.steps.threshold}; cost {d.cost_usd.threshold}; "
            f"success rate {d.success_rate.threshold}[/]"
        )
        lines.append(
            f"[bold red]drift flagged: {', '.join(d.flagged)}[/]"
            if d.flagged
            else "[green]no drift flagged[/]"
        )
    return lines
