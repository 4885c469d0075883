"""`tether replay`: re-decide a recorded run with the current agent code (tether.evaluation.replay)."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

import typer

from tether.cli import render
from tether.cli.connection import agent_modules_importable, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.evaluation.replay import ReplayReport

# tether.evaluation.replay.DEFAULT_SCRATCH_DB, not imported for --help's sake
# (tests/unit/test_cli_help.py checks the two agree).
DEFAULT_SCRATCH_DB = 15


def replay(
    run_id: str = typer.Argument(..., help="The recorded run to replay"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
    scratch_db: int = typer.Option(
        DEFAULT_SCRATCH_DB,
        "--scratch-db",
        help="Redis database (same server) the replay runs in; nothing else may use it",
    ),
    scratch_url: str | None = typer.Option(
        None,
        "--scratch-url",
        help="A Redis of its own the replay runs in instead (needed on a Redis Cluster)",
    ),
) -> None:
    """Replay a run's recorded model answers, tool results and human decisions through the
    current agent code; tools never run. Exit 0 if it decides the same, 1 where it diverges."""
    from tether.evaluation.replay import replay as replay_run

    agent_modules_importable()
    # The replayed planner logs as workers do; none of it may mix with the report on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = replay_run(runtime(), run_id, scratch_db=scratch_db, scratch_redis=scratch_url)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        _print(report)
    if report.diverged:
        raise typer.Exit(1)


def _print(report: ReplayReport) -> None:
    out = render.console
    out.print(
        f"replayed {report.run_id} ({escape(report.agent)}): recorded version "
        f"{report.recorded_version or '?'}, current {report.current_version}; "
        f"{report.decision_points} recorded decision points"
    )
    divergence = report.divergence
    if divergence is None:
        out.print(f"[green]no divergence[/]: the current code ends {report.replayed_status}")
    else:
        out.print(f"[red]diverges at step {divergence.step}[/]: {escape(divergence.what)}")
        recorded = divergence.recorded.describe() if divergence.recorded else "(nothing)"
        replayed = divergence.replayed.describe() if divergence.replayed else "(nothing)"
        out.print(f"  recorded: {escape(recorded)}")
        out.print(f"  now:      {escape(replayed)}")
    for note in report.notes:
        out.print(f"  note: {escape(note)}")
