"""`tether runs export`: a recorded run as a regression scenario (tether.evaluation.export)."""

from __future__ import annotations

from pathlib import Path

import typer

from tether.cli import render
from tether.cli.connection import runtime
from tether.cli.terminal_text import escape


def export(
    run_id: str = typer.Argument(..., help="The recorded run to export"),
    scenario: Path = typer.Option(..., "--scenario", help="The scenario YAML file to write"),
    expect_status: str = typer.Option(
        "succeeded",
        "--expect-status",
        help="The status the scenario expects (succeeded, failed, budget_exhausted, rejected, "
        "cancelled)",
    ),
) -> None:
    """Write a scenario reproducing the run (model turns and tool results as fixtures) that
    expects it to end --expect-status with the same tool calls; run it with `tether eval`."""
    from tether.evaluation.export import export_run, write_scenario
    from tether.store.state import RunStatus

    try:
        status = RunStatus(expect_status)
    except ValueError:
        raise typer.BadParameter(
            f"{expect_status!r} is not a run status; one of {', '.join(RunStatus)}",
            param_hint="--expect-status",
        ) from None
    exported = export_run(runtime(), run_id, expect_status=status)
    path = write_scenario(exported, scenario)
    render.console.print(
        f"wrote {escape(str(path))}: {len(exported.model.turns) if exported.model else 0} "  # type: ignore[union-attr]
        f"model turns, {sum(len(f) for f in exported.fixtures.values())} tool fixtures, "
        f"expects {status}; `tether eval {escape(str(path))}` runs it"
    )
