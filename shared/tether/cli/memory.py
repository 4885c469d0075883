"""`tether threads` and `tether memory`: see and forget what agents keep across runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.table import Table

from tether import keys
from tether.cli import render
from tether.memory import forget as forgetting
from tether.memory import longterm, threads
from tether.runtime import get_runtime

threads_app = typer.Typer(help="Conversation threads: history, runs, forgetting.")
memory_app = typer.Typer(help="Long-term memory per subject: show and forget.")


@threads_app.command("list")
def list_threads(limit: int = typer.Option(20)) -> None:
    """Threads by their last activity."""
    rt = get_runtime()
    table = Table("thread", "turns", "queued", "last activity")
    for thread_id, score in threads.recent(rt, limit):
        table.add_row(
            escape(thread_id),
            str(rt.store.client.llen(keys.thread_turns(thread_id))),
            str(len(threads.queued(rt, thread_id))),
            datetime.fromtimestamp(score, UTC).isoformat(timespec="seconds"),
        )
    render.console.print(table)


@threads_app.command()
def show(thread_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A thread's runs (ended, running, queued) and the messages its history holds."""
    rt = get_runtime()
    turns = threads.turns(rt, thread_id)
    runs = []
    for run_id in threads.runs_of(rt, thread_id):
        state = rt.store.get(run_id)
        runs.append({"run_id": run_id, "status": str(state.status) if state else "queued"})
    messages = [
        m.model_dump(mode="json", exclude_none=True)
        for index, turn in enumerate(turns)
        for m in turn.messages(index)
    ]
    doc = {
        "thread_id": thread_id,
        "runs": runs,
        "queued_events": threads.queued(rt, thread_id),
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
    report = forgetting.forget_thread(get_runtime(), thread_id)
    _print_report(f"thread {thread_id}", report)


@memory_app.command("show")
def show_memory(
    subject: str,
    agent: str = typer.Option("", help="Only this agent's memory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What agents remember about SUBJECT."""
    client = get_runtime().store.client
    found = {
        name: [i.model_dump() for i in longterm.items(client, name, subject)]
        for name in ([agent] if agent else longterm.agents(client))
    }
    found = {name: items for name, items in found.items() if items}
    if as_json:
        typer.echo(json.dumps({"subject": subject, "agents": found}, indent=2))
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
    report = forgetting.forget_subject(get_runtime(), subject, agent or None, runs=runs)
    _print_report(f"subject {subject}", report)


def _print_report(what: str, report: forgetting.Forgotten) -> None:
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
