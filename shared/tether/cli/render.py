"""How runs, traces and escalations look in a terminal (rich)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tether.budgets import BudgetUsage
from tether.messages import RunEvent
from tether.state import RunState

console = Console()

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "budget_exhausted": "yellow",
    "rejected": "magenta",
    "cancelled": "dim",
    "waiting_human": "cyan",
    "waiting_tools": "blue",
    "running": "blue",
    "queued": "white",
}


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def runs_table(runs: list[RunState]) -> Table:
    table = Table(title="runs")
    for column in ("run", "agent", "status", "step", "goal", "updated"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.run_id,
            run.agent,
            status_text(run.status),
            str(run.step),
            _clip(run.goal, 50),
            run.updated_at.strftime("%H:%M:%S"),
        )
    return table


def run_panel(run: RunState, usage: BudgetUsage) -> Panel:
    lines = [
        f"agent      {run.agent}" + (f"   version {run.agent_version}" if run.agent_version else ""),
        f"status     {status_text(run.status)}",
        f"goal       {escape(run.goal)}",
        f"steps      {usage.steps}   tool calls {usage.tool_calls}   tokens {usage.tokens}   "
        f"cost ${usage.cost_usd:.6f}   wall {usage.wall_s:.1f}s",
        f"limits     {_limits(run)}",
    ]
    if run.result is not None:
        lines.append(f"result     {escape(run.result)}")
    if run.partial_result is not None:
        lines.append(f"partial    {escape(run.partial_result)}")
    if run.error is not None:
        lines.append(escape(f"error      [{run.error.category}] {run.error.message}"))
    for wait in run.awaiting_human:
        lines.append(escape(f"waiting    [{wait.kind}] {wait.escalation_id}: {wait.reason}"))
    for given in run.feedback:
        comment = f": {given.comment}" if given.comment else ""
        lines.append(
            escape(f"feedback   {given.score:+d} by {given.by} at {given.at:%Y-%m-%d %H:%M}{comment}")
        )
    return Panel("\n".join(lines), title=run.run_id, expand=False)


def _limits(run: RunState) -> str:
    return (
        "  ".join(f"{k}={v}" for k, v in run.limits.model_dump().items() if v is not None) or "none"
    )


def describe_event(event: RunEvent) -> str:
    d: dict[str, Any] = event.data
    match event.kind:
        case "run_started":
            return f"started: {_clip(str(d.get('goal')), 80)}"
        case "model_call":
            answer = d.get("answer", {})
            calls = ", ".join(
                f"{c['name']}({_clip(c['arguments'], 60)})" for c in answer.get("tool_calls", [])
            )
            said = calls or _clip(str(answer.get("content")), 80)
            return (
                f"model {d.get('model')} saw {len(d.get('messages', []))} messages -> {said}  "
                f"[{d.get('input_tokens')}+{d.get('output_tokens')} tok, ${d.get('cost_usd', 0):.6f}, "
                f"{d.get('latency_ms')} ms]"
            )
        case "decision":
            return f"decision: {d.get('decision')}" + (
                f" (waiting for a human: {', '.join(d['awaiting_human'])})"
                if d.get("awaiting_human")
                else ""
            )
        case "tool_call_invalid":
            return f"invalid tool call, fed back to the model: {_clip(str(d.get('error')), 120)}"
        case "tool_call":
            outcome = (
                _clip(json.dumps(d.get("output")), 80)
                if d.get("ok")
                else f"error [{d.get('error_category')}] {d.get('error')}"
            )
            return f"tool {d.get('tool')}({_clip(json.dumps(d.get('arguments')), 60)}) -> {outcome}  [{d.get('latency_ms')} ms]"
        case "observation":
            return f"observation of {d.get('tool')} recorded"
        case "escalation_opened":
            return f"escalation {d.get('escalation_id')} [{d.get('kind')}]: {d.get('reason')}"
        case "escalation_decided":
            return (
                f"escalation {d.get('escalation_id')} decided: {d.get('verdict')} by {d.get('by')} at {d.get('at')}"
                + (f" ({d['reason']})" if d.get("reason") else "")
            )
        case "resumed":
            return f"resumed after {d.get('verdict')} by {d.get('by')}"
        case "feedback":
            return f"feedback {int(d.get('score', 0)):+d} by {d.get('by')}" + (
                f": {_clip(str(d['comment']), 80)}" if d.get("comment") else ""
            )
        case "run_finished":
            error = d.get("error")
            tail = (
                f" [{error['category']}] {error['message']}"
                if error
                else f": {_clip(str(d.get('result')), 100)}"
            )
            return f"finished {d.get('status')}{tail}"
        case _:
            return f"{event.kind} {_clip(json.dumps(d, default=str), 100)}"


def trace_table(run_id: str, events: list[RunEvent]) -> Table:
    table = Table(title=f"trace of {run_id}", show_lines=False)
    table.add_column("time")
    table.add_column("step", justify="right")
    table.add_column("event")
    table.add_column("detail", overflow="fold")
    for event in events:
        table.add_row(
            event.at.strftime("%H:%M:%S.%f")[:-3],
            str(event.step),
            event.kind,
            escape(describe_event(event)),
        )
    return table


# A rejected payload can be hundreds of KB (an oversized event is one reason to
# refuse it): a preview identifies it, and the stream tether:rejected keeps more.
PAYLOAD_PREVIEW_CHARS = 200


def rejection_text(entry: dict[str, str]) -> str:
    """One refused event: when, why, and the start of its payload with its size."""
    payload = entry["payload"]
    # The store keeps a cut payload; a "size" field, where recorded, is the original's.
    size = int(entry.get("size") or len(payload))
    text = f"{entry['at']}  {escape(entry['reason'])}\n    {escape(_clip(payload, PAYLOAD_PREVIEW_CHARS))}"
    if size > PAYLOAD_PREVIEW_CHARS:
        kept = "" if "size" in entry else " stored"
        text += f"\n    [dim](payload cut to {PAYLOAD_PREVIEW_CHARS} of {size:,} chars{kept})[/]"
    return text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
