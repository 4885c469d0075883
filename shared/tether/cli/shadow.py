"""`tether shadow`: how candidate agents running in shadow compare with their primaries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tether.cli import render
from tether.cli.connection import runtime

if TYPE_CHECKING:
    from tether.rollout.shadow import ShadowReport

shadow_app = typer.Typer(
    help="Compare shadow runs with their primaries.", no_args_is_help=True, rich_markup_mode=None
)


@shadow_app.command("report")
def report_command(
    agent: str = typer.Option("", "--agent", "-a", help="Only this primary or candidate agent"),
    limit: int = typer.Option(200, help="How many recent runs to look through"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Per event: actions, outcome, steps, cost and latency of the primary and its shadow."""
    from tether.rollout.shadow import report

    found = report(runtime(), agent=agent or None, limit=limit)
    if as_json:
        typer.echo(found.model_dump_json(indent=2))
        return
    render.console.print(_table(found))
    s = found.summary
    agreement = f"{s.agreement:.0%}" if s.agreement is not None else "n/a"
    render.console.print(
        f"{s.events} shadowed events, {s.finished} finished: actions agree {s.actions_agree}, "
        f"outcome agrees {s.outcome_agree}, fully agree {s.fully_agree} ({agreement})"
    )


def _table(found: ShadowReport) -> Table:
    table = Table(title="shadow runs")
    for column in ("event", "agents", "steps", "cost $", "latency s", "agree", "differences"):
        table.add_column(column)
    for c in found.comparisons:
        p, s = c.primary, c.shadow
        table.add_row(
            c.event_id,
            f"{p.agent if p else '?'} / {s.agent}",
            f"{p.steps if p else '?'} / {s.steps}",
            f"{p.cost_usd if p else '?'} / {s.cost_usd}",
            f"{p.latency_s if p else '?'} / {s.latency_s}",
            "yes" if c.actions_agree and c.outcome_agree else "no",
            "\n".join(c.differences) or "-",
        )
    return table
