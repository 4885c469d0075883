"""`tether feedback`: a person's score for a run's outcome, recorded on the run."""

from __future__ import annotations

import typer

from tether.cli import render
from tether.cli.connection import runtime
from tether.cli.terminal_text import escape


def feedback(
    run_id: str = typer.Argument(..., help="The run judged"),
    score: int = typer.Option(..., "--score", min=-1, max=1, help="-1 bad, 0 neutral, 1 good"),
    by: str = typer.Option(..., "--by", help="Who gives it (a name or id people can ask)"),
    comment: str = typer.Option(None, "--comment", help="Why, in a sentence"),
) -> None:
    """Record feedback on a run; `tether runs show` lists it and `tether stats` counts it.

    Exit 2 if the run does not exist or the feedback is invalid.
    """
    from pydantic import ValidationError

    from tether import client
    from tether.errors import validation_problems

    try:
        given = client.feedback(run_id, score, by=by, comment=comment, runtime=runtime())
    except ValidationError as exc:
        raise typer.BadParameter(validation_problems(exc, whole="")) from None
    render.console.print(
        f"recorded feedback {given.score:+d} by {escape(given.by)} on {run_id} ({given.feedback_id})"
    )
