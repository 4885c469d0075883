"""`tether runs export`: a recorded run as a regression scenario (tether.evaluation.export)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tether.cli import render
from tether.evaluation.export import export_run, write_scenario
from tether.runtime import get_runtime
from tether.state import RunStatus


def export(
    run_id: str = typer.Argument(..., help="The recorded run to export"),
    scenario: Path = typer.Option(..., "--scenario", help="The scenario YAML file to write"),
    expect_status: RunStatus = typer.Option(
        RunStatus.succeeded, "--expect-status", help="The status the scenario expects"
    ),
) -> None:
    """Write a scenario reproducing the run (model turns and tool results as fixtures) that
    expects it to end --expect-status with the same tool calls; run it with `tether eval`."""
    exported = export_run(get_runtime(), run_id, expect_status=expect_status)
    path = write_scenario(exported, scenario)
    render.console.print(
        f"wrote {escape(str(path))}: {len(exported.model.turns) if exported.model else 0} "  # type: ignore[union-attr]
        f"model turns, {sum(len(f) for f in exported.fixtures.values())} tool fixtures, "
        f"expects {expect_status}; `tether eval {escape(str(path))}` runs it"
    )
