"""`tether dead`: messages that failed past their retries, and putting them back."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from tether import deadletters
from tether.cli import render
from tether.runtime import get_runtime

dead_app = typer.Typer(help="Dead letters: read them, replay them.", no_args_is_help=True)


@dead_app.command("list")
def list_dead(limit: int = typer.Option(20)) -> None:
    """The newest dead letters with why they died."""
    table = Table(title="dead letters")
    for column in ("id", "task", "run", "category", "at", "reason"):
        table.add_column(column, overflow="fold")
    for letter in deadletters.list_dead(get_runtime(), limit):
        table.add_row(
            letter.id,
            letter.task,
            letter.run_id or "-",
            letter.category,
            letter.at,
            escape(letter.reason),
        )
    render.console.print(table)


@dead_app.command()
def show(entry_id: str) -> None:
    """One dead letter whole, with the message's arguments."""
    letter = deadletters.get(get_runtime(), entry_id)
    if letter is None:
        render.console.print(f"no dead letter {entry_id}; see `tether dead list`")
        raise typer.Exit(2)
    render.console.print_json(json.dumps(letter.model_dump(mode="json")))


@dead_app.command()
def replay(entry_id: str) -> None:
    """Put a dead letter back on its queue once its cause is fixed; handlers are idempotent."""
    letter = deadletters.replay(get_runtime(), entry_id)
    if letter is None:
        render.console.print(f"no replayable dead letter {entry_id}; see `tether dead list`")
        raise typer.Exit(2)
    render.console.print(f"replayed {entry_id} onto {letter.task}")
