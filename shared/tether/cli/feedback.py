"""`tether feedback`: a person's score for a run's outcome, recorded on the run."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.markup import escape

from tether import client
from tether.cli import render


def feedback(
    run_id: str = typer.Argument(..., help="The run judged"),
    score: int = typer.Option(..., "--score", min=-1, max=1, help="-1 bad, 0 neutral, 1 good"),
    by: str = typer.Option(..., "--by", help="Who gives it (a name or id people can ask)"),
    comment: str = typer.Option(None, "--comment", help="Why, in a sentence"),
) -> None:
    """Record feedback on a run; `tether runs show` lists it and `tether stats` counts it.

    Exit 2 if the run does not exist or the feedback is invalid.
    """
    try:
        given = client.feedback(run_id, score, by=by, comment=comment)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None
    render.console.print(
        f"recorded feedback {given.score:+d} by {escape(given.by)} on {run_id} ({given.feedback_id})"
    )
