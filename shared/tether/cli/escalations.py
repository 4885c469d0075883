"""`tether escalations`: what waits for a human, and the human's decision."""

from __future__ import annotations

import getpass
import json

import typer
from pydantic import TypeAdapter
from rich.table import Table

from tether import client, escalations
from tether.cli import render
from tether.messages import Verdict
from tether.runtime import get_runtime

escalations_app = typer.Typer(help="Decide what waits for a human.", no_args_is_help=True)

BY = typer.Option("", "--by", help="Who decides (default: your user name)")


def _who(by: str) -> str:
    return by or getpass.getuser()


@escalations_app.command("list")
def list_escalations(all: bool = typer.Option(False, "--all", help="Include decided ones")) -> None:
    """Pending escalations (or all of them)."""
    render.console.print(
        render.escalations_table(escalations.list_escalations(get_runtime(), pending_only=not all))
    )


@escalations_app.command()
def show(escalation_id: str) -> None:
    """One escalation whole: why, the action it holds, the decision if any."""
    record, _ = escalations.load(get_runtime(), escalation_id)
    render.console.print_json(json.dumps(record.model_dump(mode="json")))


@escalations_app.command()
def approve(escalation_id: str, by: str = BY, reason: str = typer.Option("", help="Why")) -> None:
    """Let the held action run; the run resumes."""
    client.decide(escalation_id, Verdict.approve, by=_who(by), reason=reason or None)
    render.console.print(f"approved {escalation_id} as {_who(by)}")


@escalations_app.command()
def reject(
    escalation_id: str,
    reason: str = typer.Option(..., help="Why (recorded in the run)"),
    by: str = BY,
) -> None:
    """Refuse the held action; the run ends `rejected` with its partial result."""
    client.decide(escalation_id, Verdict.reject, by=_who(by), reason=reason)
    render.console.print(f"rejected {escalation_id} as {_who(by)}")


@escalations_app.command()
def answer(escalation_id: str, text: str, by: str = BY) -> None:
    """Answer instead of running the action; the model gets the answer and goes on."""
    client.decide(escalation_id, Verdict.answer, by=_who(by), answer=text)
    render.console.print(f"answered {escalation_id} as {_who(by)}")


@escalations_app.command("policy")
def policy(
    agent: str = typer.Option("", "--agent", "-a", help="Only this agent's policies"),
    as_json: bool = typer.Option(False, "--json", help="Print the policies as JSON"),
) -> None:
    """Earned-autonomy policies: each tool's mode, record, and why it asks or not."""
    from tether.agents import load_agent_modules
    from tether.autonomy import PolicyView, policies
    from tether.config import get_settings

    views = policies(
        load_agent_modules(get_settings().agent_modules),
        get_runtime().store.client,
        only=agent or None,
    )
    if as_json:
        typer.echo(TypeAdapter(list[PolicyView]).dump_json(views, indent=2).decode())
        return
    table = Table(title="earned autonomy")
    for column in ("agent", "tool", "policy", "mode", "streak", "why"):
        table.add_column(column)
    for v in views:
        table.add_row(
            v.agent,
            v.tool,
            f"after {v.policy.after}, sample {v.policy.sample:.0%}",
            v.mode,
            str(v.record.streak),
            v.why,
        )
    render.console.print(table)
