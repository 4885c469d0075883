"""`tether eval PATH...`: run scenario files through real workers and report pass^k."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import render
from tether.config import Settings, get_settings
from tether.devstack import DevStack
from tether.errors import TetherError
from tether.evaluation.report import EvalReport
from tether.evaluation.runner import run_scenarios
from tether.runtime import Runtime


@contextlib.contextmanager
def _runtime(embedded: bool, agents: list[str]) -> Iterator[Runtime]:
    if not embedded:
        yield Runtime(get_settings())
        return
    with DevStack(agent_modules=agents, log_dir=Path(".tether/logs/eval")) as stack:
        yield Runtime(Settings(redis_url=stack.redis_url))


def _table(report: EvalReport) -> Table:
    table = Table(title=f"scenarios, {report.k} trial(s) each")
    table.add_column("scenario")
    table.add_column("agent")
    table.add_column("passed", justify="right")
    table.add_column(f"pass^{report.k}", justify="right")
    table.add_column(f"pass@{report.k}", justify="right")
    table.add_column("why it failed")
    for s in report.scenarios:
        mark = "[green]PASS[/]" if s.passed else "[red]FAIL[/]"
        table.add_row(
            f"{mark} {escape(s.name)}",
            escape(s.agent),
            f"{s.passed_trials}/{s.n}",
            f"{s.pass_hat(report.k):.2f}" if s.n else "-",
            f"{s.pass_at(report.k):.2f}" if s.n else "-",
            escape("\n".join(s.reasons())),
        )
    return table


def eval_command(
    paths: list[Path] = typer.Argument(..., help="Scenario files, or folders of *.yaml"),
    trials: int = typer.Option(1, "--trials", "-k", min=1, help="Runs per scenario (k)"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
    embedded: bool = typer.Option(
        False, "--embedded", help="Start a Redis and workers for this evaluation only"
    ),
    agents: list[str] = typer.Option(
        ["examples.support_desk.agent"], "--agents", "-a", help="Agent modules (--embedded)"
    ),
) -> None:
    """Run scenarios k times each through the workers (TETHER_REDIS_URL's, or --embedded).

    Exits 1 when any scenario has a failing trial (pass^k below 1).
    """
    try:
        with _runtime(embedded, agents) as rt:
            report = run_scenarios(list(paths), trials, rt)
    except TetherError as exc:
        render.console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    if as_json:
        print(report.summary().model_dump_json(indent=2))
    else:
        render.console.print(_table(report))
        render.console.print(
            f"pass^{report.k} {report.pass_hat_k:.2f}   pass@{report.k} {report.pass_at_k:.2f}   "
            f"({sum(s.passed for s in report.scenarios)}/{len(report.scenarios)} scenarios passed)"
        )
        skipped = {
            e.reason
            for s in report.scenarios
            for t in s.trials
            for e in t.expectations
            if e.status == "skipped"
        }
        for reason in sorted(skipped):
            render.console.print(f"[yellow]skipped: {escape(reason)}[/]")
    if not report.passed:
        raise typer.Exit(1)
