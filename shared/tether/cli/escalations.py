"""`tether escalations`: what waits for a human, and the human's decision."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import typer
from pydantic import TypeAdapter
from rich.markup import escape
from rich.table import Table

from tether import client, escalations, operators
from tether.cli import render
from tether.errors import EscalationClosedError
from tether.messages import Decision, Escalation, Verdict
from tether.runtime import get_runtime

escalations_app = typer.Typer(help="Decide what waits for a human.", no_args_is_help=True)

BY = typer.Option("", "--by", help="Who decides (default: your user name)")
TOKEN_FILE = typer.Option(
    None,
    "--token-file",
    help="File holding your operator token (default: TETHER_OPERATOR_TOKEN)",
    exists=True,
    dir_okay=False,
)


WAIT = typer.Option(
    10.0,
    "--wait",
    help="Seconds to wait for the escalation service to record the decision (0: do not wait)",
)


def _recorded(decision: Decision, wait_s: float) -> None:
    """Wait until the escalation service has recorded ``decision``, so that a decision
    that came too late (its run ended, the escalation expired) never reads as taken.

    The record was pending when the decision was sent (client.decide checks); it may
    have closed since. Raises EscalationClosedError (exit 2) when it did; exits 3 when
    nothing was recorded in time.
    """
    if wait_s <= 0:
        return
    rt = get_runtime()
    deadline = time.monotonic() + wait_s
    while True:
        record, _ = escalations.load(rt, decision.escalation_id)
        if record.decision == decision:
            return
        if record.status != "pending":
            raise EscalationClosedError(
                decision.escalation_id, record.status, escalations.closed_why(record)
            )
        if time.monotonic() >= deadline:
            render.console.print(
                f"[yellow]sent, not recorded:[/] the escalation service did not record the "
                f"decision on {decision.escalation_id} within {wait_s:g}s; it is down or "
                "refused it (see `tether runs trace` of its run for decision_refused): check "
                "`tether escalations show` before deciding again"
            )
            raise typer.Exit(3)
        time.sleep(0.1)


def _who(by: str) -> str:
    return by or getpass.getuser()


def _token(token_file: Path | None) -> str | None:
    """The operator token that signs the decision: --token-file, else the setting."""
    return token_file.read_text().strip() if token_file is not None else None


@escalations_app.command("list")
def list_escalations(all: bool = typer.Option(False, "--all", help="Include decided ones")) -> None:
    """Pending escalations (or all of them): kind, what is asked, what can be answered."""
    records = escalations.list_escalations(get_runtime(), pending_only=not all)
    table = Table(title="escalations")
    # Ids whole on one line, so they can be copied (and found) as they are.
    widest = max((len(r.escalation.escalation_id) for r in records), default=2)
    table.add_column("id", no_wrap=True, min_width=widest)
    for column in ("run", "kind", "status", "asks", "answer with"):
        table.add_column(column, overflow="fold")
    for record in records:
        e = record.escalation
        status = (
            record.status
            if record.decision is None
            else f"{record.decision.verdict} by {record.decision.by}"
        )
        answers = ", ".join(e.verdicts()) if record.status == "pending" else ""
        table.add_row(e.escalation_id, e.run_id, e.kind, status, escape(asks(e)[:120]), answers)
    render.console.print(table)


def asks(e: Escalation) -> str:
    """What an escalation asks a human, in one line."""
    if e.budget is not None:
        b = e.budget
        ceiling = "none" if b.ceiling is None else f"{b.ceiling:g}"
        return f"{b.limit} ran out: used {b.used:g} of max {b.max:g} (ceiling {ceiling})"
    if e.draft is not None:
        return f"approve draft answer? {e.draft}"
    if e.question is not None:
        return e.question + (f" (context: {e.context})" if e.context else "")
    return e.reason


@escalations_app.command()
def show(escalation_id: str) -> None:
    """One escalation whole: why, what it asks, what can be answered, the decision if any."""
    record, _ = escalations.load(get_runtime(), escalation_id)
    shown = record.model_dump(mode="json")
    shown["asks"] = asks(record.escalation)
    shown["answers"] = [str(v) for v in record.escalation.verdicts()]
    render.console.print_json(json.dumps(shown))


@escalations_app.command()
def approve(
    escalation_id: str,
    by: str = BY,
    reason: str = typer.Option("", help="Why"),
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Let the held action run; the run resumes."""
    decision = client.decide(
        escalation_id,
        Verdict.approve,
        by=_who(by),
        reason=reason or None,
        token=_token(token_file),
    )
    _recorded(decision, wait)
    render.console.print(f"approved {escalation_id} as {_who(by)}")


@escalations_app.command()
def reject(
    escalation_id: str,
    reason: str = typer.Option(..., help="Why (recorded in the run)"),
    by: str = BY,
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Refuse the held action; the run ends `rejected` with its partial result."""
    decision = client.decide(
        escalation_id, Verdict.reject, by=_who(by), reason=reason, token=_token(token_file)
    )
    _recorded(decision, wait)
    render.console.print(f"rejected {escalation_id} as {_who(by)}")


@escalations_app.command()
def answer(
    escalation_id: str,
    text: str,
    by: str = BY,
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Answer instead of running the action; the model gets the answer and goes on."""
    decision = client.decide(
        escalation_id, Verdict.answer, by=_who(by), answer=text, token=_token(token_file)
    )
    _recorded(decision, wait)
    render.console.print(f"answered {escalation_id} as {_who(by)}")


@escalations_app.command()
def extend(
    escalation_id: str,
    limit: str = typer.Option(
        "", "--limit", help="steps, tool_calls, tokens, cost_usd or wall_s (default: the one hit)"
    ),
    by_amount: float = typer.Option(..., "--by", help="How much to add to the limit"),
    by: str = typer.Option("", "--by-who", help="Who decides (default: your user name)"),
    reason: str = typer.Option("", help="Why"),
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Extend the budget limit a budget_exhausted run hit, within the agent's ceiling."""
    from tether.errors import DecisionRefusedError

    try:
        decision = client.decide(
            escalation_id,
            Verdict.extend,
            by=_who(by),
            reason=reason or None,
            limit=limit or None,
            extend_by=by_amount,
            token=_token(token_file),
        )
    except DecisionRefusedError as exc:
        render.console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    _recorded(decision, wait)
    render.console.print(
        f"extended max_{decision.limit} of {escalation_id} by {by_amount:g} as {_who(by)}"
    )


@escalations_app.command("operator-key")
def operator_key(name: str) -> None:
    """Print a new token for operator NAME and the line for TETHER_OPERATORS_FILE.

    Give the token to the operator (TETHER_OPERATOR_TOKEN or --token-file) and add
    the line to the file's "operators" list; the file holds no token, but whoever
    reads it can sign decisions, so keep it as secret as the tokens.
    """
    token, key = operators.new_token()
    render.console.print(f"token (give it to {escape(name)}, once): {token}")
    render.console.print(json.dumps({"name": name, "key_sha256": key}), markup=False)


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
