"""`tether dead`: messages that failed past their retries; replaying or deleting them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from tether.cli import render
from tether.cli.connection import nothing_found, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.worker.deadletters import DeadLetter

dead_app = typer.Typer(
    help="Dead letters: read, replay, delete them.", no_args_is_help=True, rich_markup_mode=None
)

# What the reason of a letter that can never succeed starts with or holds: a message
# its model refused (tether.worker.task.parse), or one refused as forged
# (tether.worker.deadletters.refuse). Sending either again dead-letters it again.
NEVER_SUCCEEDS = (" got a malformed ", "forged message refused")


def never_succeeds(letter: DeadLetter) -> bool:
    return any(mark in letter.reason for mark in NEVER_SUCCEEDS)


@dead_app.command("list")
def list_dead(
    limit: int = typer.Option(20, help="How many letters"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """The newest dead letters with why they died (`tether dead show` has each whole)."""
    from tether.worker import deadletters

    letters = deadletters.list_dead(runtime(), limit)
    if as_json:
        print(json.dumps([letter.model_dump(mode="json") for letter in letters], indent=2))
        return
    if not letters:
        render.console.print(nothing_found("dead letters"))
        return
    rows = [
        [letter.id, letter.task, letter.run_id or "-", str(letter.category), letter.reason]
        for letter in letters
    ]
    columns = ("id", "task", "run", "category", "reason")
    shown = render.fitted_table(
        "dead letters", columns, rows, wide="reason", optional=("run", "category")
    )
    render.console.print(shown)


def _letter(entry_id: str) -> DeadLetter:
    from tether.worker import deadletters

    letter = deadletters.get(runtime(), entry_id)
    if letter is None:
        render.console.print(f"{nothing_found(f'dead letter {entry_id}')}; see `tether dead list`")
        raise typer.Exit(2)
    return letter


@dead_app.command()
def show(
    entry_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the default form too)"),
) -> None:
    """One dead letter whole, with the message's arguments."""
    letter = _letter(entry_id)
    print(json.dumps(letter.model_dump(mode="json"), indent=2))


@dead_app.command()
def replay(entry_id: str) -> None:
    """Put a dead letter back on its queue once its cause is fixed; handlers are idempotent.

    A letter that can never succeed (its message was malformed or refused as forged) is
    not sent again: exit 2 with its reason; `tether dead delete` removes it.
    """
    from tether.worker import deadletters

    letter = _letter(entry_id)
    if never_succeeds(letter):
        render.console.print(
            f"not replayed: {entry_id} would only fail again ({escape(letter.reason)}); "
            f"fix the sender, then `tether dead delete {entry_id}`"
        )
        raise typer.Exit(2)
    sent = deadletters.replay(runtime(), entry_id)
    if sent is None:
        render.console.print(
            f"{entry_id} was not replayed: another replay took it first, or its task "
            f"{escape(letter.task)} has no queue; see `tether dead list`"
        )
        raise typer.Exit(2)
    render.console.print(f"replayed {entry_id} onto {sent.task}")


@dead_app.command()
def delete(entry_id: str) -> None:
    """Remove a dead letter for good (after reading it with `tether dead show`)."""
    from tether.query import deadletters

    _letter(entry_id)
    if deadletters.delete(runtime(), entry_id) is None:
        render.console.print(f"{entry_id} was already removed (a replay or delete took it)")
        raise typer.Exit(2)
    render.console.print(f"deleted dead letter {entry_id}")
