"""A run's timeline: its event log as a person reads it, with budget use and trace id.

Everything comes from what the run's commits wrote: its state, its budget hash and
its event log (each model call with the whole input it saw, each tool call with
its arguments and result, escalations opened and decided).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from tether.observability.tracing import run_trace_id
from tether.query.runs import RunSummary, summary_of
from tether.store import keys
from tether.store.runs import RunStore
from tether.store.state import RunState
from tether.transport.wire import ForkPoint


class BudgetLine(BaseModel):
    """One budget axis: what the run used against its limit (None: unbounded)."""

    limit: str
    used: float
    maximum: float | None


class TimelineEntry(BaseModel):
    """One entry of the event log; ``data`` is the entry whole (prompt, answer, arguments,
    result, escalation), the named fields are what a list of entries shows at a glance."""

    id: str
    kind: str
    step: int
    at: datetime
    tool: str | None = None
    ok: bool | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    error_category: str | None = None
    escalation_id: str | None = None
    data: dict[str, Any]


class Timeline(BaseModel):
    run: RunSummary
    goal: str
    result: str | None
    partial_result: str | None
    trace_id: str
    budget: list[BudgetLine]
    cost_usd: float
    tokens: int
    latency_s: float | None
    # The run this one was forked from, and the runs forked from this one (oldest first).
    forked_from: ForkPoint | None = None
    forks: list[str] = []
    entries: list[TimelineEntry]


_AXES = (
    ("steps", "max_steps"),
    ("tool_calls", "max_tool_calls"),
    ("tokens", "max_tokens"),
    ("cost_usd", "max_cost_usd"),
    ("wall_s", "max_wall_s"),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def entry_of(
    entry_id: str, kind: str, step: int, at: datetime, data: dict[str, Any]
) -> TimelineEntry:
    escalation = data.get("escalation")
    escalation_id = data.get("escalation_id")
    if escalation_id is None and isinstance(escalation, dict):
        escalation_id = escalation.get("escalation_id")
    ok = data.get("ok")
    return TimelineEntry(
        id=entry_id,
        kind=kind,
        step=step,
        at=at,
        tool=data.get("tool") if isinstance(data.get("tool"), str) else None,
        ok=ok if isinstance(ok, bool) else None,
        cost_usd=_number(data.get("cost_usd")),
        latency_ms=_number(data.get("latency_ms")),
        error_category=str(data["error_category"]) if data.get("error_category") else None,
        escalation_id=str(escalation_id) if escalation_id else None,
        data=data,
    )


def budget_lines(store: RunStore, state: RunState) -> list[BudgetLine]:
    used = store.budgets.usage(state.run_id).model_dump()
    limits = state.limits.model_dump()
    lines = []
    for axis, limit in _AXES:
        # An extension raises the limit in the budget hash; the state keeps the first.
        raised = store.budgets.limit(state.run_id, axis)
        maximum = raised if raised is not None else _number(limits.get(limit))
        lines.append(BudgetLine(limit=axis, used=float(used[axis]), maximum=maximum))
    return lines


def timeline(store: RunStore, run_id: str) -> Timeline | None:
    """The run's timeline; None if there is no such run (or it expired)."""
    store.flush()
    state = store.get(run_id)
    if state is None:
        return None
    entries = [
        entry_of(entry_id, event.kind, event.step, event.at, event.data)
        for entry_id, event in store.log.read(run_id)
    ]
    lines = budget_lines(store, state)
    spent = {line.limit: line.used for line in lines}
    latency = (
        (state.finished_at - state.created_at).total_seconds()
        if state.finished_at is not None
        else None
    )
    return Timeline(
        run=summary_of(state),
        goal=state.goal,
        result=state.result,
        partial_result=state.partial_result,
        trace_id=f"{run_trace_id(run_id):032x}",
        budget=lines,
        cost_usd=spent["cost_usd"],
        tokens=int(spent["tokens"]),
        latency_s=latency,
        forked_from=state.forked_from,
        forks=[str(m) for m in store.client.zrange(keys.run_forks(run_id), 0, -1)],
        entries=entries,
    )
