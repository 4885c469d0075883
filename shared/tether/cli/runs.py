"""`tether runs`: list, show, trace, cancel, and see rejected events."""

from __future__ import annotations

import time

import typer
from rich.live import Live
from rich.markup import escape

from tether import client
from tether.cli import render
from tether.runtime import get_runtime
from tether.state import RunState

runs_app = typer.Typer(help="Inspect and control runs.", no_args_is_help=True)


@runs_app.command("list")
def list_runs(limit: int = typer.Option(20)) -> None:
    """The most recent runs."""
    render.console.print(render.runs_table(get_runtime().store.recent(limit)))


@runs_app.command()
def show(run_id: str) -> None:
    """A run's status, usage, result or partial result and error."""
    store = get_runtime().store
    render.console.print(render.run_panel(store.load(run_id), store.budgets.usage(run_id)))


@runs_app.command()
def trace(run_id: str) -> None:
    """Every decision point of a run: model calls, decisions, tools, escalations."""
    store = get_runtime().store
    store.load(run_id)
    render.console.print(render.trace_table(run_id, [e for _, e in store.trace(run_id)]))


@runs_app.command()
def cancel(run_id: str, by: str = typer.Option("operator", help="Who cancels")) -> None:
    """Stop a run now; it keeps its partial result."""
    state = client.cancel(run_id, by=by)
    if state is None:
        render.console.print(
            f"{run_id} had already ended: {get_runtime().store.load(run_id).status}"
        )
    else:
        render.console.print(f"{run_id} {render.status_text(state.status)}")


@runs_app.command()
def rejected(limit: int = typer.Option(20)) -> None:
    """Events that were refused (malformed, oversized, unknown agent), with why."""
    for entry in get_runtime().store.rejected(limit):
        render.console.print(render.rejection_text(entry))


def follow(run_id: str, timeout_s: float, *, event_id: str | None = None) -> RunState:
    """Print a run's events as they happen until it ends; returns its final state.

    Given the run's ``event_id``, a refused event raises EventRejectedError at once.
    """
    store = get_runtime().store
    last = "-"
    deadline = time.monotonic() + timeout_s
    with Live(
        render.console.status(f"{run_id}: queued"), console=render.console, transient=True
    ) as live:
        while time.monotonic() < deadline:
            for entry_id, event in store.trace(run_id, last):
                last = entry_id
                render.console.print(
                    f"  {event.at:%H:%M:%S} step {event.step:<2} {escape(render.describe_event(event))}"
                )
            state = store.get(run_id)
            if state is not None:
                live.update(render.console.status(f"{run_id}: {state.status}, step {state.step}"))
                if state.terminal:
                    break
            elif event_id is not None:
                client.check_rejected(event_id)
            time.sleep(0.1)
        else:
            raise typer.Exit(3)
    state = store.load(run_id)
    render.console.print(render.run_panel(state, store.budgets.usage(run_id)))
    return state
