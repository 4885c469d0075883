"""`tether top`: a live terminal view of queues, runs in flight, rates and escalations."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from tether.cli import render
from tether.cli.connection import runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.insights.top import TopSnapshot


def top(
    interval: float = typer.Option(2.0, "--interval", "-n", help="Seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit"),
    window: str = typer.Option(
        "5m", "--window", help="Finish rates over this much recent time (30s, 5m, 1h…)"
    ),
    rows: int = typer.Option(5, "--rows", help="Pending escalations listed, oldest first"),
    as_json: bool = typer.Option(False, "--json", help="Print one snapshot as JSON and exit"),
) -> None:
    """Live view: queue depth and oldest message, runs in flight, finish rates, escalations."""
    from tether.insights import top as top_data
    from tether.insights.stats import parse_duration

    if interval <= 0:
        raise typer.BadParameter("--interval must be positive")
    window_s = parse_duration(window).total_seconds()
    rt = runtime()

    if as_json:
        snap = top_data.snapshot(rt, window_s=window_s, escalation_rows=rows)
        print(snap.model_dump_json(indent=2))
        return

    def frame() -> Group:
        return top_view(top_data.snapshot(rt, window_s=window_s, escalation_rows=rows))

    if once:
        render.console.print(frame())
        return
    try:
        with Live(frame(), console=render.console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def top_view(snap: TopSnapshot) -> Group:
    queues = Table(title="queues", title_justify="left")
    queues.add_column("queue")
    queues.add_column("depth", justify="right")
    queues.add_column("oldest", justify="right")
    for q in snap.queues:
        queues.add_row(escape(q.queue), str(q.depth), _age(q.oldest_age_s) if q.depth else "-")

    in_flight = Table(title=f"runs in flight: {snap.in_flight_total}", title_justify="left")
    in_flight.add_column("status")
    in_flight.add_column("runs", justify="right")
    for status, count in snap.in_flight.items():
        in_flight.add_row(render.status_text(status), str(count))

    f = snap.finished
    rates = Table(title=f"finished in the last {_age(f.window_s)}: {f.total}", title_justify="left")
    rates.add_column("status")
    rates.add_column("runs", justify="right")
    rates.add_column("per min", justify="right")
    for status, count in f.by_status.items():
        rates.add_row(render.status_text(status), str(count), f"{f.per_minute[status]:.2f}")

    pending = Table(
        title=f"pending escalations: {snap.escalations_pending}"
        + (f", oldest {_age(snap.oldest_escalation_age_s)}" if snap.escalations_pending else ""),
        title_justify="left",
    )
    for column in ("escalation", "run", "agent", "kind", "age"):
        pending.add_column(column, justify="right" if column == "age" else "left")
    for e in snap.escalations:
        pending.add_row(
            *(escape(v) for v in (e.escalation_id, e.run_id, e.agent, e.kind)), _age(e.age_s)
        )

    header = f"[bold]tether top[/]  {snap.taken_at:%Y-%m-%d %H:%M:%S} UTC"
    return Group(header, queues, in_flight, rates, pending)
