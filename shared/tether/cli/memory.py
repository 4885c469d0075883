"""`tether threads` and `tether memory`: see and forget what agents keep across runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tether.cli import render
from tether.cli.connection import nothing_found, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.memory.forget import Forgotten

threads_app = typer.Typer(
    help="Conversation threads: history, runs, forgetting.", rich_markup_mode=None
)
memory_app = typer.Typer(
    help="Long-term memory per subject: show and forget.", rich_markup_mode=None
)


@threads_app.command("list")
def list_threads(
    limit: int = typer.Option(20, help="How many threads"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Threads by their last activity."""
    from tether.query.threads import list_threads as query_threads

    rows = [
        {
            **row.model_dump(mode="json"),
            "last_activity": row.last_activity.isoformat(timespec="seconds"),
        }
        for row in query_threads(runtime(), limit)
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        render.console.print(nothing_found("threads"))
        return
    table = Table("thread", "turns", "queued", "last activity")
    for row in rows:
        table.add_row(
            escape(str(row["thread_id"])),
            str(row["turns"]),
            str(row["queued"]),
            str(row["last_activity"]),
        )
    render.console.print(table)


@threads_app.command()
def show(thread_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A thread's runs (ended, running, queued) and the messages its history holds."""
    from tether.query.threads import thread

    view = thread(runtime(), thread_id)
    turns = view.turns if view is not None else []
    runs = [r.model_dump() for r in view.runs] if view is not None else []
    messages = [
        m.model_dump(mode="json", exclude_none=True)
        for index, turn in enumerate(turns)
        for m in turn.messages(index)
    ]
    doc = {
        "thread_id": thread_id,
        "runs": runs,
        "queued_events": view.queued_events if view is not None else [],
        "turns": [t.model_dump(mode="json") for t in turns],
        "messages": messages,
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table("run", "status")
    for run in runs:
        table.add_row(run["run_id"], run["status"])
    render.console.print(table)
    for turn in turns:
        render.console.print(f"[bold]{turn.run_id}[/] ({turn.status})")
        render.console.print(escape(turn.text()))


@threads_app.command("forget")
def forget_thread(thread_id: str) -> None:
    """Remove a thread's history and its runs (state, event log, results, escalations)."""
    from tether.memory import forget as forgetting

    report = forgetting.forget_thread(runtime(), thread_id)
    _print_report(f"thread {thread_id}", report)


@memory_app.command("show")
def show_memory(
    subject: str,
    agent: str = typer.Option("", help="Only this agent's memory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What agents remember about SUBJECT."""
    from tether.memory import longterm

    client = runtime().store.client
    found = {
        name: [i.model_dump() for i in longterm.items(client, name, subject)]
        for name in ([agent] if agent else longterm.agents(client))
    }
    found = {name: items for name, items in found.items() if items}
    if as_json:
        typer.echo(json.dumps({"subject": subject, "agents": found}, indent=2))
        return
    if not found:
        render.console.print(nothing_found(f"memory about {escape(subject)}"))
        return
    table = Table("agent", "key", "value", "written by run", "at")
    for name, items in found.items():
        for item in items:
            table.add_row(name, item["key"], escape(item["value"]), item["run_id"], item["at"])
    render.console.print(table)


@memory_app.command("forget")
def forget_memory(
    subject: str,
    agent: str = typer.Option("", help="Only this agent's memory"),
    runs: bool = typer.Option(
        False, "--runs", help="Also remove the ended runs about SUBJECT (they hold copies)"
    ),
) -> None:
    """Remove what agents remember about SUBJECT."""
    from tether.memory import forget as forgetting

    report = forgetting.forget_subject(runtime(), subject, agent or None, runs=runs)
    _print_report(f"subject {subject}", report)


def _print_report(what: str, report: Forgotten) -> None:
    render.console.print(f"forgot {escape(what)}:")
    render.console.print(f"  deleted {len(report.keys)} keys: {escape(', '.join(report.keys))}")
    if report.index_entries:
        render.console.print(f"  removed index entries: {escape(', '.join(report.index_entries))}")
    if report.runs:
        render.console.print(f"  removed runs: {', '.join(report.runs)}")
    if report.kept_runs:
        render.console.print(
            f"  kept runs that hold copies (they expire TETHER_RUN_TTL_S after they end; "
            f"--runs removes ended ones): {', '.join(report.kept_runs)}"
        )
    render.console.print(
        "  kept: lifecycle stream entries (run id, kind, step only), dead letters, metrics counters"
    )


__all__ = ["memory_app", "threads_app"]
