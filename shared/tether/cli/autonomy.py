"""`tether escalations operator-key` and `policy`: who may decide, and what no longer asks.

Registered on `tether escalations` (tether.cli.escalations); kept apart from deciding.
"""

from __future__ import annotations

import json

import typer

from tether.cli import render
from tether.cli.connection import agent_modules_importable, runtime
from tether.cli.terminal_text import escape


def operator_key(name: str) -> None:
    """Print a new token for operator NAME and the line for TETHER_OPERATORS_FILE.

    Give the token to the operator (TETHER_OPERATOR_TOKEN or --token-file) and add
    the line to the file's "operators" list; the file holds no token, but whoever
    reads it can sign decisions, so keep it as secret as the tokens.
    """
    from tether.escalation import operators

    token, key = operators.new_token()
    render.console.print(f"token (give it to {escape(name)}, once): {token}")
    render.console.print(json.dumps({"name": name, "key_sha256": key}), markup=False)


def policy(
    agent: str = typer.Option("", "--agent", "-a", help="Only this agent's policies"),
    as_json: bool = typer.Option(False, "--json", help="Print the policies as JSON"),
) -> None:
    """Earned-autonomy policies: each tool's mode, record, and why it asks or not."""
    from pydantic import TypeAdapter
    from rich.table import Table

    from tether.agent.definition import load_agent_modules
    from tether.config import get_settings
    from tether.rollout.autonomy import PolicyView, policies

    agent_modules_importable()
    views = policies(
        load_agent_modules(get_settings().agent_modules),
        runtime().store.client,
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
