"""How runs, traces and escalations look in a terminal (rich)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tether.cli.terminal_text import escape

if TYPE_CHECKING:
    from tether.query.runs import RunSummary
    from tether.store.budgets import BudgetUsage
    from tether.store.state import RunState
    from tether.transport.wire import RunEvent

# emoji=False: Redis keys such as tether:thread:{x}:turns are printed as they are,
# never as ":thread:" turned into an emoji.
console = Console(emoji=False)


# The free-text column gets at least this much before an optional column is dropped.
WIDE_AT_LEAST = 24


def fitted_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    wide: str,
    optional: Sequence[str] = (),
    width: int | None = None,
) -> Table:
    """A table that fits ``width`` (the terminal's): every column but ``wide`` as wide as
    its header or longest cell (markup), never wrapped, so ids stay whole; ``wide`` (plain
    free text, escaped here) gets the rest, cut at a word with an ellipsis. Where that
    leaves ``wide`` under WIDE_AT_LEAST, the ``optional`` columns go, in their order
    (`show` commands have them)."""
    width = width or console.width
    kept = list(columns)
    widths = {
        column: max([len(column), *(Text.from_markup(row[i]).cell_len for row in rows)])
        for i, column in enumerate(columns)
    }

    def room() -> int:
        # Separators " │ " between columns, no outer edge.
        return width - sum(widths[c] for c in kept if c != wide) - 3 * (len(kept) - 1)

    for column in optional:
        if room() >= WIDE_AT_LEAST:
            break
        kept.remove(column)
    shown = Table(title=title, box=box.MINIMAL_HEAVY_HEAD, show_edge=False, pad_edge=False)
    for column in kept:
        shown.add_column(column, no_wrap=True, min_width=len(column))
    wide_width = max(len(wide), room())
    for row in rows:
        cells = dict(zip(columns, row, strict=True))
        cells[wide] = escape(clip_words(cells[wide].replace("\n", " "), wide_width))
        shown.add_row(*(cells[c] for c in kept))
    return shown


def clip_words(text: str, width: int) -> str:
    """``text`` cut to ``width`` at a word boundary, with an ellipsis, never mid-word
    unless one word is longer than ``width``."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space > width // 3:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


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


def runs_table(runs: Sequence[RunSummary | RunState]) -> Table:
    rows = [
        [
            run.run_id,
            escape(run.agent),
            status_text(run.status),
            str(run.step),
            run.goal,
            run.updated_at.strftime("%H:%M:%S"),
        ]
        for run in runs
    ]
    columns = ("run", "agent", "status", "step", "goal", "updated")
    return fitted_table("runs", columns, rows, wide="goal", optional=("updated", "step"))


def run_panel(run: RunState, usage: BudgetUsage, forks: Sequence[str] = ()) -> Panel:
    lines = [
        f"agent      {run.agent}"
        + (f"   version {run.agent_version}" if run.agent_version else ""),
        f"status     {status_text(run.status)}",
        f"goal       {escape(run.goal)}",
        f"steps      {usage.steps}   tool calls {usage.tool_calls}   tokens {usage.tokens}   "
        f"cost ${usage.cost_usd:.6f}   wall {usage.wall_s:.1f}s",
        f"limits     {_limits(run)}",
    ]
    if run.forked_from is not None:
        lines.append(f"forked     from {run.forked_from.run_id} at step {run.forked_from.step}")
    if forks:
        lines.append(f"forks      {', '.join(forks)}")
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
            escape(
                f"feedback   {given.score:+d} by {given.by} at {given.at:%Y-%m-%d %H:%M}{comment}"
            )
        )
    return Panel("\n".join(lines), title=run.run_id, expand=False)


def _limits(run: RunState) -> str:
    return (
        "  ".join(f"{k}={v}" for k, v in run.limits.model_dump().items() if v is not None) or "none"
    )


def describe_event(event: RunEvent, *, full: bool = False) -> str:
    """One line for ``event``; ``full``: nothing cut, and a model call's prompt too."""
    d: dict[str, Any] = event.data

    def clip(text: str, width: int) -> str:
        return text if full else _clip(text, width)

    match event.kind:
        case "run_started":
            return f"started: {clip(str(d.get('goal')), 80)}"
        case "model_call":
            answer = d.get("answer", {})
            calls = ", ".join(
                f"{c['name']}({clip(c['arguments'], 60)})" for c in answer.get("tool_calls", [])
            )
            said = calls or clip(str(answer.get("content")), 80)
            line = (
                f"model {d.get('model')} saw {len(d.get('messages', []))} messages -> {said}  "
                f"[{d.get('input_tokens')}+{d.get('output_tokens')} tok, ${d.get('cost_usd', 0):.6f}, "
                f"{d.get('latency_ms')} ms]"
            )
            if full:
                line += "".join(
                    f"\n    {m.get('role')}: {m.get('content') or json.dumps(m.get('tool_calls'))}"
                    for m in d.get("messages", [])
                )
            return line
        case "decision":
            return f"decision: {d.get('decision')}" + (
                f" (waiting for a human: {', '.join(d['awaiting_human'])})"
                if d.get("awaiting_human")
                else ""
            )
        case "tool_call_invalid":
            return f"invalid tool call, fed back to the model: {clip(str(d.get('error')), 120)}"
        case "tool_call":
            outcome = (
                clip(json.dumps(d.get("output")), 80)
                if d.get("ok")
                else f"error [{d.get('error_category')}] {d.get('error')}"
            )
            return f"tool {d.get('tool')}({clip(json.dumps(d.get('arguments')), 60)}) -> {outcome}  [{d.get('latency_ms')} ms]"
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
                f": {clip(str(d['comment']), 80)}" if d.get("comment") else ""
            )
        case "rate_limited":
            return f"waits {d.get('seconds')}s for {d.get('limit')} ({d.get('why')})"
        case "run_finished":
            error = d.get("error")
            tail = (
                f" [{error['category']}] {error['message']}"
                if error
                else f": {clip(str(d.get('result')), 100)}"
            )
            return f"finished {d.get('status')}{tail}"
        case _:
            return f"{event.kind} {clip(json.dumps(d, default=str), 100)}"


def trace_table(run_id: str, events: list[RunEvent], *, full: bool = False) -> Table:
    shown = Table(title=f"trace of {run_id}", show_lines=full)
    shown.add_column("time", no_wrap=True, min_width=4)
    shown.add_column("step", justify="right", no_wrap=True, min_width=4)
    shown.add_column("event", no_wrap=True, min_width=5)
    shown.add_column("detail", overflow="fold", min_width=6)
    for event in events:
        shown.add_row(
            event.at.strftime("%H:%M:%S.%f")[:-3],
            str(event.step),
            event.kind,
            escape(describe_event(event, full=full)),
        )
    return shown


def event_line(event: RunEvent, *, full: bool = False) -> str:
    """One event as `runs trace --follow` and `submit --wait` print it (markup escaped)."""
    return f"  {event.at:%H:%M:%S} step {event.step:<2} {escape(describe_event(event, full=full))}"


def age(seconds: float) -> str:
    """A duration as a person reads an age: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


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
