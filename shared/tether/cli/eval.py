"""`tether eval [PATH...] [--adversarial AGENT]`: scenarios (pass^k) and the adversarial suite,
through real workers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tether.cli import render
from tether.cli.connection import agent_modules_importable, lasting_runtime
from tether.cli.terminal_text import escape
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.evaluation.adversarial import AdversarialReport
    from tether.evaluation.report import EvalReport
    from tether.runtime import Runtime


@contextlib.contextmanager
def _runtime(embedded: bool, agents: list[str]) -> Iterator[Runtime]:
    from tether.config import Settings
    from tether.dev.stack import DevStack
    from tether.runtime import Runtime

    # This process imports agent modules from here, as the workers started here do (the
    # adversarial suite reads the agent's tools), even run as the `tether` script.
    agent_modules_importable()
    if not embedded:
        yield lasting_runtime()
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


def _adversarial_table(report: AdversarialReport) -> Table:
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


def _print_scenarios(report: EvalReport) -> None:
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


def eval_command(
    paths: list[Path] | None = typer.Argument(None, help="Scenario files, or folders of *.yaml"),
    trials: int = typer.Option(1, "--trials", "-k", min=1, help="Runs per scenario (k)"),
    adversarial: str | None = typer.Option(
        None, "--adversarial", help="Also run the adversarial suite against this agent"
    ),
    input: str = typer.Option(
        "", "--input", help="The task of every adversarial run (default: the suite's own)"
    ),
    timeout_s: float = typer.Option(
        90.0, "--timeout", help="Seconds for all adversarial cases to end"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
    embedded: bool = typer.Option(
        False, "--embedded", help="Start a Redis and workers for this evaluation only"
    ),
    agents: list[str] = typer.Option(
        ["examples.support_desk.agent"], "--agents", "-a", help="Agent modules (--embedded)"
    ),
) -> None:
    """Run scenarios k times each, and/or the adversarial suite against an agent, through
    the workers (TETHER_REDIS_URL's, or --embedded).

    Exits 1 when a scenario has a failing trial (pass^k below 1) or a case failed.
    """
    from tether.agent.definition import load_agent_modules
    from tether.config import get_settings
    from tether.evaluation.adversarial import DEFAULT_INPUT, run_suite
    from tether.evaluation.runner import run_scenarios

    if not paths and adversarial is None:
        render.console.print("[red]name scenario files or folders, or --adversarial AGENT[/]")
        raise typer.Exit(2)
    scenarios: EvalReport | None = None
    suite: AdversarialReport | None = None
    try:
        with _runtime(embedded, agents) as rt:
            if paths:
                scenarios = run_scenarios(list(paths), trials, rt)
            if adversarial is not None:
                # The suite reads the agent's tools here too, to plan its cases.
                load_agent_modules(agents if embedded else get_settings().agent_modules)
                suite = run_suite(
                    rt, adversarial, input=input or DEFAULT_INPUT, timeout_s=timeout_s
                )
    except TetherError as exc:
        render.console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    if as_json:
        parts = {
            "scenarios": scenarios.summary().model_dump(mode="json") if scenarios else None,
            "adversarial": suite.model_dump(mode="json") if suite else None,
        }
        if scenarios is None or suite is None:
            # One report asked for: print it alone.
            print(json.dumps(next(v for v in parts.values() if v is not None), indent=2))
        else:
            print(json.dumps(parts, indent=2))
    else:
        if scenarios is not None:
            _print_scenarios(scenarios)
        if suite is not None:
            render.console.print(_adversarial_table(suite))
            render.console.print(
                f"adversarial: survived {suite.survived_count}/{len(suite.cases)} cases"
            )
    if (scenarios is not None and not scenarios.passed) or (
        suite is not None and not suite.survived_all
    ):
        raise typer.Exit(1)
