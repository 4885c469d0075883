"""`tether adversarial AGENT`: run the adversarial suite against an agent on the running workers."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from tether.agents import load_agent_modules
from tether.cli import render
from tether.config import get_settings
from tether.errors import TetherError
from tether.evaluation.adversarial import DEFAULT_INPUT, AdversarialReport, run_suite
from tether.runtime import get_runtime


def _table(report: AdversarialReport) -> Table:
    table = Table(title=f"adversarial suite: {report.agent}")
    for column in ("case", "group", "outcome", "how", "status", "detail"):
        table.add_column(column)
    for case in report.cases:
        outcome = "[green]survived[/]" if case.survived else "[red]NOT SURVIVED[/]"
        detail = "; ".join(f"{f.kind}: {f.detail}" for f in case.failures) or case.detail
        table.add_row(
            escape(case.case),
            case.group,
            outcome,
            case.how or "-",
            case.status or "-",
            escape(detail[:160]),
        )
    return table


def adversarial(
    agent: str = typer.Argument(..., help="The agent to attack, as the workers load it"),
    input: str = typer.Option(DEFAULT_INPUT, "--input", help="The task every run gets"),
    timeout_s: float = typer.Option(90.0, "--timeout", help="Seconds for all cases to end"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Malformed input, injections, faulty tools and models, budget pressure: what survives.

    Runs on the workers at TETHER_REDIS_URL, which must load AGENT; exits 1 if any
    case was not survived.
    """
    try:
        load_agent_modules(get_settings().agent_modules)
        report = run_suite(get_runtime(), agent, input=input, timeout_s=timeout_s)
    except TetherError as exc:
        render.console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        render.console.print(_table(report))
        render.console.print(f"survived {report.survived_count}/{len(report.cases)} cases")
    if not report.survived_all:
        raise typer.Exit(1)
