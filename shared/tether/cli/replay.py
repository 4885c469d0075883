"""`tether replay`: re-decide a recorded run with the current agent code (tether.evaluation.replay)."""

from __future__ import annotations

import contextlib
import sys

import typer
from rich.markup import escape

from tether.cli import render
from tether.evaluation.replay import DEFAULT_SCRATCH_DB, ReplayReport
from tether.evaluation.replay import replay as replay_run
from tether.runtime import get_runtime


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
    # The replayed planner logs as workers do; none of it may mix with the report on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = replay_run(get_runtime(), run_id, scratch_db=scratch_db, scratch_redis=scratch_url)
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
