"""`tether runs`: list, show, trace, cancel, retry, fork, and see rejected events."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import typer

from tether.cli import render
from tether.cli.connection import nothing_found, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.store.state import RunState

runs_app = typer.Typer(
    help="Inspect and control runs.", no_args_is_help=True, rich_markup_mode=None
)

AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table")


def _print_json(doc: object) -> None:
    # Plain print: rich would wrap and colour the document.
    print(json.dumps(doc, indent=2, default=str))


@runs_app.command("list")
def list_runs(
    limit: int = typer.Option(20, min=1, max=500, help="How many runs"),
    agent: str = typer.Option("", "--agent", "-a", help="Only runs of this agent"),
    status: list[str] = typer.Option(
        [], "--status", "-s", help="Only runs with this status (repeatable)"
    ),
    include_eval: bool = typer.Option(
        False, "--include-eval", help="Also list evaluation runs (agent eval:…)"
    ),
    as_json: bool = AS_JSON,
) -> None:
    """The most recent runs (evaluation and shadow runs left out unless asked for)."""
    from pydantic import ValidationError

    from tether.errors import validation_problems
    from tether.query.runs import RunFilter
    from tether.query.runs import list_runs as query_runs

    try:
        query = RunFilter.model_validate(
            {
                "agent": agent or None,
                "status": status,
                "include_eval": include_eval or agent.startswith(EVAL_PREFIX),
                "limit": limit,
            }
        )
    except ValidationError as exc:
        raise typer.BadParameter(validation_problems(exc, whole="")) from None
    runs = query_runs(runtime().store, query).runs
    if as_json:
        _print_json([r.model_dump(mode="json") for r in runs])
    elif not runs:
        render.console.print(nothing_found("runs" + (f" of agent {agent}" if agent else "")))
    else:
        render.console.print(render.runs_table(runs))


EVAL_PREFIX = "eval:"


def _missing(run_id: str) -> typer.Exit:
    render.console.print(
        f"{nothing_found(f'run {run_id}')}. An event that was refused has no run: "
        "`tether runs rejected` lists refusals, `tether runs rejected --event EVENT_ID` "
        "looks one up by the event id `tether submit` printed"
    )
    return typer.Exit(2)


@runs_app.command()
def show(run_id: str, as_json: bool = AS_JSON) -> None:
    """A run's status, usage, result or partial result and error."""
    store = runtime().store
    state = store.get(run_id)
    if state is None:
        raise _missing(run_id)
    from tether.planner.fork import forks_of

    usage = store.budgets.usage(run_id)
    forks = forks_of(store, run_id)
    if as_json:
        _print_json(
            {
                **state.model_dump(mode="json"),
                "usage": usage.model_dump(mode="json"),
                "forks": forks,
            }
        )
        return
    render.console.print(render.run_panel(state, usage, forks))


@runs_app.command()
def trace(
    run_id: str,
    full: bool = typer.Option(
        False, "--full", help="Nothing cut: whole arguments and results, and each prompt"
    ),
    follow_it: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing events as they happen until the run ends"
    ),
    timeout: float = typer.Option(3600.0, help="Seconds to follow at most"),
    as_json: bool = AS_JSON,
) -> None:
    """Every decision point of a run: model calls, decisions, tools, escalations."""
    store = runtime().store
    if store.get(run_id) is None:
        raise _missing(run_id)
    if follow_it:
        follow(run_id, timeout, full=full, as_json=as_json)
        return
    events = [e for _, e in store.log.read(run_id)]
    if as_json:
        _print_json([e.model_dump(mode="json") for e in events])
        return
    render.console.print(render.trace_table(run_id, events, full=full))


@runs_app.command()
def cancel(run_id: str, by: str = typer.Option("operator", help="Who cancels")) -> None:
    """Stop a run now; it keeps its partial result."""
    from tether import client

    rt = runtime()
    if rt.store.get(run_id) is None:
        raise _missing(run_id)
    state = client.cancel(run_id, by=by)
    if state is None:
        render.console.print(f"{run_id} had already ended: {rt.store.load(run_id).status}")
    else:
        render.console.print(f"{run_id} {render.status_text(state.status)}")


@runs_app.command()
def retry(
    run_id: str,
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the new run until it ends"),
    timeout: float = typer.Option(300.0, help="Seconds to wait with --wait"),
) -> None:
    """Run an ended run's task again as a new run (a new event id); its metadata names the
    original under `retry_of`. Resubmitting the original event id would be deduplicated."""
    from tether import client
    from tether.errors import RunNotEndedError

    rt = runtime()
    if rt.store.get(run_id) is None:
        raise _missing(run_id)
    try:
        new_run, event_id = client.retry(run_id, runtime=rt)
    except RunNotEndedError as exc:
        render.console.print(escape(str(exc)))
        raise typer.Exit(2) from None
    render.console.print(f"retried {run_id} as run {new_run} (event {event_id})")
    _wait_for(new_run, event_id, wait, timeout)


@runs_app.command()
def fork(
    run_id: str,
    from_step: int = typer.Option(
        ..., "--from-step", min=0, help="The step to plan again (steps count from 0)"
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the new run until it ends"),
    timeout: float = typer.Option(300.0, help="Seconds to wait with --wait"),
) -> None:
    """Start a new run from this run's state as step N was about to be planned: its
    messages and tool results up to there, no tool of those steps run again, a budget of
    its own. Both runs' `show` name the other."""
    from tether import client
    from tether.errors import ForkError

    rt = runtime()
    if rt.store.get(run_id) is None:
        raise _missing(run_id)
    try:
        new_run, event_id = client.fork(run_id, from_step, runtime=rt)
    except ForkError as exc:
        render.console.print(escape(str(exc)))
        raise typer.Exit(2) from None
    render.console.print(f"forked {run_id} at step {from_step} as run {new_run} (event {event_id})")
    _wait_for(new_run, event_id, wait, timeout)


def _wait_for(run_id: str, event_id: str, wait: bool, timeout: float) -> None:
    if wait:
        state = follow(run_id, timeout, event_id=event_id, panel=True)
        raise typer.Exit(0 if state.status == "succeeded" else 1)


@runs_app.command()
def rejected(
    limit: int = typer.Option(20, help="How many"),
    event: str = typer.Option("", "--event", help="Only the refusal of this event id"),
    as_json: bool = AS_JSON,
) -> None:
    """Events that were refused (malformed, oversized, unknown agent), with why."""
    from tether import client

    rt = runtime()
    if event:
        reason = client.rejection(event, runtime=rt)
        if as_json:
            _print_json({"event_id": event, "rejected": reason is not None, "reason": reason})
        elif reason is None:
            render.console.print(nothing_found(f"refusal of event {event}"))
            raise typer.Exit(1)
        else:
            render.console.print(escape(f"event {event} was refused: {reason}"))
        return
    entries = rt.store.rejections.recent(limit)
    if as_json:
        _print_json(entries)
    elif not entries:
        render.console.print(nothing_found("refused events"))
    for entry in [] if as_json else entries:
        render.console.print(render.rejection_text(entry))


def follow(
    run_id: str,
    timeout_s: float,
    *,
    event_id: str | None = None,
    full: bool = False,
    as_json: bool = False,
    panel: bool = False,
) -> RunState:
    """Print a run's events as they happen until it ends (exit 3 past ``timeout_s``);
    returns its final state. ``panel``: end with the run's panel.

    Given the run's ``event_id``, a refused event raises EventRejectedError at once.
    """
    from tether import client

    store = runtime().store
    last = "-"
    deadline = time.monotonic() + timeout_s

    def print_new() -> None:
        nonlocal last
        for entry_id, event in store.log.read(run_id, last):
            last = entry_id
            if as_json:
                print(event.model_dump_json(), flush=True)
            else:
                render.console.print(render.event_line(event, full=full))

    while True:
        print_new()
        state = store.get(run_id)
        if state is not None and state.terminal:
            # Its last events were written with the state that ended it.
            print_new()
            break
        if state is None and event_id is not None:
            client.check_rejected(event_id)
        if time.monotonic() >= deadline:
            raise typer.Exit(3)
        time.sleep(0.1)
    if panel and not as_json:
        render.console.print(render.run_panel(state, store.budgets.usage(run_id)))
    return state
