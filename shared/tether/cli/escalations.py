"""`tether escalations`: what waits for a human, and the human's decision."""

from __future__ import annotations

import getpass
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tether.cli import render
from tether.cli.autonomy import operator_key, policy
from tether.cli.connection import nothing_found, runtime
from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.query.escalations import EscalationView
    from tether.store.state import EscalationRecord
    from tether.transport.wire import Decision, Escalation

escalations_app = typer.Typer(
    help="Decide what waits for a human.", no_args_is_help=True, rich_markup_mode=None
)

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
    have closed since. Raises EscalationClosedError (exit 2) when it did, DecisionRefusedError
    (exit 2) when the service refused it; exits 3 when nothing was recorded in time.
    """
    from tether.errors import DecisionRefusedError, EscalationClosedError
    from tether.escalation import records as escalations
    from tether.escalation.refusals import refused_since

    if wait_s <= 0:
        return
    rt = runtime()
    deadline, read = time.monotonic() + wait_s, "-"
    while True:
        record, _ = escalations.load(rt, decision.escalation_id)
        if record.decision == decision:
            return
        if record.status != "pending":
            raise EscalationClosedError(
                decision.escalation_id, record.status, escalations.closed_why(record)
            )
        refused, read = refused_since(rt, record.escalation.run_id, decision, read)
        if refused is not None:
            raise DecisionRefusedError(
                f"the escalation service refused the decision; it is still pending: {refused}"
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


def _age(e: Escalation) -> str:
    return render.age((datetime.now(UTC) - e.created_at).total_seconds())


def _status(record: EscalationRecord) -> str:
    if record.decision is None:
        return record.status
    return f"{record.decision.verdict} by {record.decision.by}"


def _matching(
    *, pending_only: bool, agent: str, tool: str, kind: str, limit: int = 1000
) -> list[EscalationRecord]:
    """Escalations the filters match, the one waiting longest first (tether.query)."""
    from tether.query.escalations import list_escalations

    views = list_escalations(
        runtime(), pending_only=pending_only, agent=agent or None, tool=tool or None, limit=limit
    )
    return [v.record for v in views if not kind or v.kind == kind]


AGENT = typer.Option("", "--agent", "-a", help="Only escalations of this agent's runs")
TOOL = typer.Option("", "--tool", help="Only escalations holding a call of this tool")
KIND = typer.Option("", "--kind", help="Only this kind (approval_required, budget_exhausted…)")


@escalations_app.command("list")
def list_escalations(
    all: bool = typer.Option(False, "--all", help="Include decided ones"),
    agent: str = AGENT,
    tool: str = TOOL,
    kind: str = KIND,
    limit: int = typer.Option(100, help="How many at most"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Pending escalations (or all of them), oldest first: agent, kind, age, what is asked.

    A row holds what fits the terminal; `tether escalations show ID` has the rest.
    """
    records = _matching(pending_only=not all, agent=agent, tool=tool, kind=kind, limit=limit)
    if as_json:
        print(json.dumps([_document(r) for r in records], indent=2))
        return
    if not records:
        render.console.print(nothing_found("pending escalations" if not all else "escalations"))
        return
    columns = ["id", "agent", "kind", "age", *(["status"] if all else []), "asks"]
    rows = []
    for record in records:
        e = record.escalation
        row = [e.escalation_id, escape(e.agent), str(e.kind), _age(e)]
        if all:
            row.append(escape(_status(record)))
        rows.append([*row, asks(e)])
    shown = render.fitted_table("escalations", columns, rows, wide="asks", optional=("kind",))
    render.console.print(shown)


def asks(e: Escalation) -> str:
    """What an escalation asks a human, in one line."""
    if e.budget is not None:
        b = e.budget
        ceiling = "none" if b.ceiling is None else f"{b.ceiling:g}"
        return f"{b.limit} ran out: used {b.used:g} of max {b.max:g} (ceiling {ceiling})"
    if e.draft is not None:
        return f"approve draft answer? {e.draft}"
    if e.action is not None and e.question is None:
        return f"{e.reason}: {e.action.tool}({json.dumps(e.action.arguments)})"
    if e.question is not None:
        return e.question + (f" (context: {e.context})" if e.context else "")
    return e.reason


def _context(view: EscalationView) -> object:
    return None if view.context is None else view.context.model_dump(mode="json")


def _document(record: EscalationRecord) -> dict[str, object]:
    shown = record.model_dump(mode="json")
    shown["asks"] = asks(record.escalation)
    shown["answers"] = [str(v) for v in record.escalation.verdicts()]
    return shown


@escalations_app.command()
def show(
    escalation_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON"),
) -> None:
    """One escalation whole: the customer's request, the conversation and tool results so
    far, what it asks, the held call with its arguments, what can be answered, the decision."""
    from tether.query.escalations import get_escalation

    view = get_escalation(runtime(), escalation_id)
    if view is None:
        render.console.print(
            f"{nothing_found(f'escalation {escalation_id}')}; `tether escalations list --all` "
            "lists them (decided ones expire with their runs)"
        )
        raise typer.Exit(2)
    record = view.record
    if as_json:
        print(json.dumps({**_document(record), "context": _context(view)}, indent=2))
        return
    e = record.escalation
    out = render.console
    context = view.context
    out.print(
        f"[bold]{e.escalation_id}[/]  {e.kind}  {escape(_status(record))}  "
        f"opened {render.age(view.age_s)} ago  run {e.run_id} ({escape(e.agent)})"
    )
    if record.expires_at is not None and record.status == "pending":
        out.print(f"expires    {record.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    if context is not None:
        out.print(f"\n[bold]request[/]\n  {escape(context.request)}")
    out.print(f"\n[bold]asks[/]\n  {escape(asks(e))}")
    if e.action is not None:
        out.print(f"\n[bold]held call[/]  {escape(e.action.tool)} (step {e.action.step})")
        out.print(escape(json.dumps(e.action.arguments, indent=2)))
    if context is not None:
        out.print("\n[bold]conversation so far[/]")
        for turn in context.conversation:
            text = turn.content or ""
            for call in turn.tool_calls or []:
                text += f" -> {call.get('name')}({call.get('arguments')})"
            out.print(f"  [dim]{turn.role:<9}[/] {escape(text)}")
        if context.tool_results:
            out.print("\n[bold]tool results so far[/]")
        for obs in context.tool_results:
            result = json.dumps(obs.output, default=str) if obs.ok else f"error: {obs.error}"
            out.print(f"  {escape(obs.tool)} (step {obs.step}) -> {escape(result)}")
    if record.status == "pending":
        answers = ", ".join(str(v) for v in e.verdicts())
        out.print(
            f"\n[bold]answer with[/] {answers}: `tether escalations approve|reject|answer|"
            f"extend {e.escalation_id}`"
        )
    elif record.decision is not None:
        d = record.decision
        out.print(
            escape(
                f"\ndecided {d.verdict} by {d.by} at {d.at:%Y-%m-%d %H:%M:%S}"
                + (f": {d.reason or d.answer}" if d.reason or d.answer else "")
            )
        )
    elif record.closed_reason:
        out.print(escape(f"\nclosed: {record.closed_reason}"))


def _decide(
    escalation_id: str,
    verdict: str,
    by: str,
    token_file: Path | None,
    wait_s: float,
    **fields: object,
) -> Decision:
    """Send the decision, signed, and wait until it is recorded (``_recorded``)."""
    from tether import client
    from tether.transport.wire import Verdict

    decision = client.decide(
        escalation_id,
        Verdict(verdict),
        by=_who(by),
        token=_token(token_file),
        runtime=runtime(),
        **fields,  # type: ignore[arg-type]
    )
    _recorded(decision, wait_s)
    return decision


def _bulk(
    verdict: str,
    *,
    agent: str,
    tool: str,
    kind: str,
    by: str,
    token_file: Path | None,
    wait: float,
    reason: str | None,
) -> None:
    """Decide every pending escalation that the filters match, printing each."""
    if not (agent or tool or kind):
        render.console.print(
            "refused: --all decides by filter; name --agent, --tool or --kind "
            "(`tether escalations list` with the same filters shows what it would decide)"
        )
        raise typer.Exit(2)
    from tether.errors import TetherError

    records = _matching(pending_only=True, agent=agent, tool=tool, kind=kind)
    if not records:
        render.console.print(nothing_found("pending escalations matching the filters"))
        raise typer.Exit(1)
    failed = 0
    for record in records:
        e = record.escalation
        try:
            _decide(e.escalation_id, verdict, by, token_file, wait, reason=reason)
        except TetherError as exc:
            failed += 1
            render.console.print(f"[red]not {verdict}d[/] {e.escalation_id}: {escape(str(exc))}")
            continue
        render.console.print(f"{verdict}d {e.escalation_id} (run {e.run_id}, {escape(asks(e))})")
    render.console.print(f"{len(records) - failed} of {len(records)} {verdict}d as {_who(by)}")
    if failed:
        raise typer.Exit(1)


def _one_or_all(escalation_id: str | None, every: bool) -> str | None:
    if every == (escalation_id is not None):
        render.console.print("name one ESCALATION_ID, or --all with filters, not both")
        raise typer.Exit(2)
    return escalation_id


ALL = typer.Option(False, "--all", help="Every pending escalation the filters match")


@escalations_app.command()
def approve(
    escalation_id: str | None = typer.Argument(None, help="The escalation (or --all)"),
    by: str = BY,
    reason: str = typer.Option("", help="Why"),
    args: str = typer.Option(
        "",
        "--args",
        help="The held call's arguments as you edited them (a JSON object); the call runs "
        "with these, checked against the tool's schema",
    ),
    every: bool = ALL,
    agent: str = AGENT,
    tool: str = TOOL,
    kind: str = KIND,
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Let the held action run; the run resumes. With --all, every pending escalation
    matching --agent/--tool/--kind, each printed as it is decided."""
    edited = _arguments(args) if args else None
    if _one_or_all(escalation_id, every) is None:
        if edited is not None:
            render.console.print("--args edits one escalation's call; it does not go with --all")
            raise typer.Exit(2)
        _bulk(
            "approve",
            agent=agent,
            tool=tool,
            kind=kind,
            by=by,
            token_file=token_file,
            wait=wait,
            reason=reason or None,
        )
        return
    assert escalation_id is not None
    _decide(escalation_id, "approve", by, token_file, wait, reason=reason or None, arguments=edited)
    edits = f" with arguments {escape(json.dumps(edited))}" if edited is not None else ""
    render.console.print(f"approved {escalation_id}{edits} as {_who(by)}")


def _arguments(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON ({exc})", param_hint="--args") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(
            'a JSON object of the arguments, e.g. \'{"order_id": "1001"}\'', param_hint="--args"
        )
    return value


@escalations_app.command()
def reject(
    escalation_id: str | None = typer.Argument(None, help="The escalation (or --all)"),
    reason: str = typer.Option(..., help="Why (recorded in the run)"),
    by: str = BY,
    every: bool = ALL,
    agent: str = AGENT,
    tool: str = TOOL,
    kind: str = KIND,
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Refuse the held action; the run ends `rejected` with its partial result. With
    --all, every pending escalation matching --agent/--tool/--kind."""
    if _one_or_all(escalation_id, every) is None:
        _bulk(
            "reject",
            agent=agent,
            tool=tool,
            kind=kind,
            by=by,
            token_file=token_file,
            wait=wait,
            reason=reason,
        )
        return
    assert escalation_id is not None
    _decide(escalation_id, "reject", by, token_file, wait, reason=reason)
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
    _decide(escalation_id, "answer", by, token_file, wait, answer=text)
    render.console.print(f"answered {escalation_id} as {_who(by)}")


@escalations_app.command()
def extend(
    escalation_id: str,
    amount: float = typer.Option(..., "--amount", help="How much to add to the limit"),
    limit: str = typer.Option(
        "", "--limit", help="steps, tool_calls, tokens, cost_usd or wall_s (default: the one hit)"
    ),
    by: str = BY,
    reason: str = typer.Option("", help="Why"),
    token_file: Path | None = TOKEN_FILE,
    wait: float = WAIT,
) -> None:
    """Extend the budget limit a budget_exhausted run hit, within the agent's ceiling."""
    from tether.errors import DecisionRefusedError

    try:
        decision = _decide(
            escalation_id,
            "extend",
            by,
            token_file,
            wait,
            reason=reason or None,
            limit=limit or None,
            extend_by=amount,
        )
    except DecisionRefusedError as exc:
        render.console.print(f"[red]refused:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    render.console.print(
        f"extended max_{decision.limit} of {escalation_id} by {amount:g} as {_who(by)}"
    )


escalations_app.command("operator-key")(operator_key)
escalations_app.command("policy")(policy)
