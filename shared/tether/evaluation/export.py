"""A recorded run as a regression scenario: its model turns and tool results become fixtures.

The scenario replays what production saw (the event, each model answer as a
scripted turn, each tool outcome as a fixture matched on exact arguments) and
expects what *should* have happened: by default that the run succeeds and
makes the same tool calls. A failing production run therefore exports as a
failing scenario, which passes once the agent is fixed. Tools the run never
ran have no fixture and the scenario runs no real tool (``unfixtured_tools:
fail``): an exported production case can never cause a side effect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from tether.agent.definition import get_agent
from tether.errors import UnknownRunError
from tether.runtime import Runtime
from tether.store.state import RunStatus
from tether.transport.wire import BudgetLimits, ErrorCategory, EventKind, RunEvent

from .recording import Recording
from .scenario import (
    ArgumentMatch,
    Expectations,
    Fixture,
    Scenario,
    ScenarioEvent,
    ScriptedCall,
    ScriptedModelSpec,
    ScriptedTurn,
    ToolExpectation,
    dump_scenario,
)


def export_run(
    rt: Runtime, run_id: str, *, expect_status: RunStatus = RunStatus.succeeded
) -> Scenario:
    """The scenario that reproduces run ``run_id`` and expects ``expect_status``."""
    events = [event for _, event in rt.store.log.read(run_id)]
    if not events:
        raise UnknownRunError(run_id)
    recording = Recording.from_trace(run_id, events)
    started = recording.started.data
    state = rt.store.get(run_id)
    agent_name = str(started["agent"])
    turns = [_turn(recording.model_calls[step]) for step in sorted(recording.model_calls)]
    notes = [
        f"step {step}: the model failed ({e.data.get('error')}); a scenario cannot script that"
        for step, e in sorted(recording.model_failures.items())
    ]
    if not turns:
        turns = [ScriptedTurn(text="(the recorded run made no model call)")]
    outcome = recording.status or (str(state.status) if state else "unknown")
    error = (state.error.message if state and state.error else None) or _finish_error(events)
    description = (
        f"Exported from run {run_id} (agent {agent_name}, version "
        f"{started.get('agent_version') or '?'}), which ended {outcome}"
        + (f": {error}" if error else "")
        + "."
        + "".join(f" {n}." for n in notes)
    )
    return Scenario(
        name=f"regression {run_id}",
        description=description,
        agent=agent_name,
        event=ScenarioEvent(
            input=str(started["goal"]),
            metadata=state.metadata if state is not None else {},
            budget=_event_budget(agent_name, started.get("limits")),
        ),
        model=ScriptedModelSpec(turns=turns),
        fixtures=_fixtures(events),
        unfixtured_tools="fail",
        on_escalation=_on_escalation(events),
        expect=Expectations(status=expect_status, tools_called=_calls(events)),
    )


def write_scenario(scenario: Scenario, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_scenario(scenario))
    return path


def _turn(model_call: RunEvent) -> ScriptedTurn:
    answer = model_call.data["answer"]
    calls = answer.get("tool_calls") or []
    if not calls:
        # An empty reply stays empty: the planner nudges the model exactly as it did.
        return ScriptedTurn(text=answer.get("content") or "")
    return ScriptedTurn(
        tool_calls=[
            ScriptedCall(name=c["name"], arguments=_arguments(c["arguments"]), id=c["id"])
            for c in calls
        ]
    )


def _arguments(raw: str) -> dict[str, Any] | str:
    # Malformed arguments are kept as the model sent them: that may be the failure.
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw
    return parsed if isinstance(parsed, dict) else raw


def _fixtures(events: list[RunEvent]) -> dict[str, list[Fixture]]:
    fixtures: dict[str, list[Fixture]] = {}
    for event in events:
        data = event.data
        if event.kind != EventKind.tool_call or data.get("needs_human"):
            continue  # a question for a human is no outcome of the tool
        tool = str(data["tool"])
        when = ArgumentMatch(arguments=data.get("arguments") or {}, match="exact")
        if any(f.when == when for f in fixtures.get(tool, [])):
            continue  # the first outcome of a call is the one a scenario can serve
        if data.get("ok"):
            fixture = Fixture(when=when, result=data.get("output"))
        else:
            prefix = f"tool {tool!r} failed: "
            message = str(data.get("error") or "failed")
            fixture = Fixture(
                when=when,
                # The executor words the fixture's failure again; keep only the tool's own words.
                error=message.removeprefix(prefix),
                transient=data.get("error_category") == ErrorCategory.tool_transient,
            )
        fixtures.setdefault(tool, []).append(fixture)
    return fixtures


def _calls(events: list[RunEvent]) -> list[ToolExpectation]:
    """Every distinct tool call the run decided to make, in order."""
    calls: list[ToolExpectation] = []
    for event in events:
        if event.kind != EventKind.decision or event.data.get("decision") != "tool_calls":
            continue
        for action in event.data.get("actions", []):
            expected = ToolExpectation(
                tool=action["tool"], arguments=action["arguments"], match="exact"
            )
            if expected not in calls:
                calls.append(expected)
    return calls


def _on_escalation(events: list[RunEvent]) -> Literal["stop", "approve", "reject"]:
    verdicts = {e.data.get("verdict") for e in events if e.kind == EventKind.escalation_decided}
    if "reject" in verdicts:
        return "reject"
    return "approve" if "approve" in verdicts else "stop"


def _event_budget(agent: str, recorded: dict[str, Any] | None) -> BudgetLimits | None:
    """The axes on which the run was held tighter than the agent's current budget.

    The log keeps the limits the run ran under (the agent's budget narrowed by
    its event), not the event's own: what is tighter than the agent's budget now
    must have come from the event, while a budget the fix raised stays raised.
    """
    if not recorded:
        return None
    limits = BudgetLimits.model_validate(recorded)
    current = get_agent(agent).budget
    tighter = {
        name: value
        for name in BudgetLimits.model_fields
        if (value := getattr(limits, name)) is not None
        and (getattr(current, name) is None or value < getattr(current, name))
    }
    return BudgetLimits(**tighter) if tighter else None


def _finish_error(events: list[RunEvent]) -> str | None:
    for event in reversed(events):
        if event.kind == EventKind.run_finished:
            error = event.data.get("error") or {}
            return str(error["message"]) if error.get("message") else None
    return None
