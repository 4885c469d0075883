"""A recorded run, read for replay: its answers, outcomes and decisions, and the
decision points a replay compares (tether.evaluation.replay).

Action and escalation ids embed the run id; a recording keeps them with ``{run}``
in its place, so that the recorded run and its replay name the same action alike.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tether.errors import TetherError
from tether.planner.fencing import escalation_id
from tether.transport.wire import EventKind, RunEvent

RUN = "{run}"

PointKind = Literal["tool_call_invalid", "tool_call_denied", "decision", "escalation", "finished"]
# Within one step the log's order depends on which worker wrote first: compare in this order.
_RANK: dict[str, int] = {
    "tool_call_invalid": 0,
    "tool_call_denied": 0,
    "decision": 1,
    "escalation": 2,
    "finished": 3,
}


class ReplayError(TetherError):
    """A run cannot be replayed (no event log, no recorded start)."""


class DecisionPoint(BaseModel):
    """One thing the planner decided, reduced to what a replay compares."""

    model_config = ConfigDict(frozen=True)

    step: int
    kind: PointKind
    summary: dict[str, Any]

    def describe(self) -> str:
        s = self.summary
        if self.kind == "decision" and s.get("decision") == "tool_calls":
            calls = ", ".join(
                f"{c['tool']}({json.dumps(c['arguments'], sort_keys=True)})"
                + (" [approval required]" if c["approval_required"] else "")
                for c in s["calls"]
            )
            return f"calls {calls}"
        if self.kind == "decision":
            problem = f": {s['problem']}" if s.get("problem") else ""
            return f"decides {s['decision']}{problem}"
        if self.kind == "finished":
            return f"ends {s['status']}" + (f" with {s['result']!r}" if s.get("result") else "")
        if self.kind == "escalation":
            return f"escalates {s['kind']}"
        verb = "refuses as invalid" if self.kind == "tool_call_invalid" else "denies"
        return f"{verb} a tool call: {s['error']}"


# reading a recording -------------------------------------------------------------


@dataclass
class Recording:
    """A run's event log, indexed by what a replay needs; ids use ``{run}`` for the run id."""

    run_id: str
    started: RunEvent
    model_calls: dict[int, RunEvent] = field(default_factory=dict)
    model_failures: dict[int, RunEvent] = field(default_factory=dict)
    tool_outcomes: dict[str, deque[RunEvent]] = field(default_factory=lambda: defaultdict(deque))
    decisions: dict[str, RunEvent] = field(default_factory=dict)
    points: list[DecisionPoint] = field(default_factory=list)
    status: str | None = None

    @classmethod
    def from_trace(cls, run_id: str, events: list[RunEvent]) -> Recording:
        started = next((e for e in events if e.kind == EventKind.run_started), None)
        if started is None:
            raise ReplayError(
                f"run {run_id!r} has no run_started entry in its event log (it expired after "
                "run_ttl_s, or the log was trimmed), so it cannot be replayed"
            )
        recording = cls(run_id=run_id, started=started, points=decision_points(run_id, events))
        for event in events:
            if event.kind == EventKind.model_call:
                # A redelivered step that lost its commit may have called the model again.
                recording.model_calls.setdefault(event.step, event)
            elif event.kind == EventKind.model_failed:
                recording.model_failures.setdefault(event.step, event)
            elif event.kind == EventKind.tool_call:
                recording.tool_outcomes[generic(run_id, event.data["action_id"])].append(event)
            elif event.kind == EventKind.escalation_decided:
                recording.decisions[generic(run_id, event.data["escalation_id"])] = event
            elif event.kind == EventKind.run_finished:
                recording.status = str(event.data["status"])
        return recording


def generic(run_id: str, text: str) -> str:
    """Action and escalation ids are derived from the run id: make them run-independent."""
    return text.replace(run_id, RUN)


def decision_points(run_id: str, events: list[RunEvent]) -> list[DecisionPoint]:
    """The run's decisions in a canonical order, with run ids made generic."""
    points: list[DecisionPoint] = []
    for event in events:
        data = event.data
        summary: dict[str, Any]
        kind: PointKind
        if event.kind in (EventKind.tool_call_invalid, EventKind.tool_call_denied):
            kind = (
                "tool_call_invalid"
                if event.kind == EventKind.tool_call_invalid
                else "tool_call_denied"
            )
            summary = {"error": data.get("error")}
        elif event.kind == EventKind.decision:
            kind = "decision"
            summary = {"decision": data["decision"]}
            if data["decision"] == "tool_calls":
                held = set(data.get("awaiting_human", []))
                summary["calls"] = [
                    {
                        "tool": a["tool"],
                        "arguments": a["arguments"],
                        "approval_required": escalation_id(a["action_id"]) in held,
                    }
                    for a in data.get("actions", [])
                ]
            elif data.get("problem"):
                summary["problem"] = data["problem"]
        elif event.kind == EventKind.escalation_opened:
            kind = "escalation"
            summary = {"kind": data.get("kind")}
        elif event.kind == EventKind.run_finished:
            kind = "finished"
            error = data.get("error") or {}
            summary = {
                "status": data.get("status"),
                "result": data.get("result"),
                "error_category": error.get("category"),
            }
        else:
            continue
        summary = json.loads(generic(run_id, json.dumps(summary, default=str)))
        points.append(DecisionPoint(step=event.step, kind=kind, summary=summary))
    return sorted(
        points,
        key=lambda p: (p.step, _RANK[p.kind], json.dumps(p.summary, sort_keys=True)),
    )
