"""Shadow running: a candidate agent gets a copy of its primary's live events.

A candidate is an Agent declared with ``shadow_of="<primary agent>"``. When the
planner accepts an event for the primary, it publishes a copy for each
candidate under a deterministic event id (``shadow_event_id``), so a
redelivered event starts no second shadow. The shadow is an ordinary run of
the candidate, through the same queues, with its own run id and therefore its
own budget key; its RunState names the primary run (``primary_run_id``).

A shadow can never cause a side effect: every tool call of a candidate goes
through ``held_back`` in the executor, the one place tools run. A tool runs
for real only if it declares ``safe_in_shadow`` (a read) and needs no
approval; one with a ``dry_run`` gets its simulated result; any other is not
run and the model is told so. Nobody is asked about a shadow: approvals are
skipped (tether.rollout.autonomy.gate), and any other escalation of a shadow is decided
at once by ``SHADOW_DECIDER`` (``auto_decision``), never left pending.

``report`` compares each primary run with its shadow: actions (tool names and
arguments), outcome (status, result), steps, cost, latency.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from tether.agent.definition import Agent, get_agent, load_agent_modules
from tether.agent.tools import Tool, ToolContext
from tether.config import get_settings
from tether.errors import UnknownAgentError
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import RunState
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EventKind,
    TaskEvent,
    ToolAction,
    Verdict,
)

# Where a shadow's TaskEvent carries the run it shadows.
SHADOW_METADATA = "tether_shadow"
SHADOW_DECIDER = "tether-shadow"


def shadow_event_id(candidate: str, event_id: str) -> str:
    """The shadow's event id: the same primary event always names the same shadow run."""
    return f"shadow:{candidate}:{event_id}"


def candidates(primary: str) -> list[Agent]:
    """The agents declared as shadows of ``primary``, in name order."""
    agents = load_agent_modules(get_settings().agent_modules)
    return sorted((a for a in agents.values() if a.shadow_of == primary), key=lambda a: a.name)


def start_shadows(rt: Runtime, event: TaskEvent, primary_run_id: str) -> list[str]:
    """Publish a copy of ``event`` to each candidate of its agent; returns the shadow run ids.

    Publishing again (a redelivered primary event) is harmless: intake starts a
    run once per event id.
    """
    started: list[str] = []
    for candidate in candidates(event.agent):
        copy = event.model_copy(
            update={
                "event_id": shadow_event_id(candidate.name, event.event_id),
                "agent": candidate.name,
                # A shadow takes no place on its primary's thread.
                "thread_seq": None,
                "metadata": {
                    **event.metadata,
                    SHADOW_METADATA: {
                        "primary_run_id": primary_run_id,
                        "primary_event_id": event.event_id,
                    },
                },
            }
        )
        rt.publish_event(copy)
        started.append(run_id_for(copy.event_id))
    return started


def primary_run(agent: Agent, event: TaskEvent) -> str | None:
    """The primary run a candidate's event shadows (None for any other run)."""
    if agent.shadow_of is None:
        return None
    link = event.metadata.get(SHADOW_METADATA)
    return (
        str(link["primary_run_id"]) if isinstance(link, dict) and "primary_run_id" in link else None
    )


def held_back(agent: Agent, tool: Tool) -> bool:
    """Whether the executor must not run ``tool`` for real: a candidate's call that is not a
    declared-safe read (an approval-required tool is never safe in shadow)."""
    return agent.shadow_of is not None and (tool.requires_approval or not tool.safe_in_shadow)


def simulate(rt: Runtime, action: ToolAction, tool: Tool) -> dict[str, Any]:
    """The outcome of a held-back call (as tether.executor.outcomes.report takes it); logs how it was handled."""
    context = ToolContext(
        run_id=action.run_id, action_id=action.action_id, agent=action.agent, step=action.step
    )
    outcome: dict[str, Any]
    if tool.dry_run is None:
        mode = "not_run"
        outcome = {
            "ok": False,
            "category": ErrorCategory.policy_denied,
            "error": f"tool {tool.name!r} was not run: this is a shadow run and the tool "
            "declares neither dry_run nor safe_in_shadow; declare one to let candidates use it",
        }
    else:
        mode = "dry_run"
        try:
            outcome = {"ok": True, "output": tool.simulate(action.arguments, context)}
        except Exception as exc:
            outcome = {
                "ok": False,
                "category": ErrorCategory.tool_permanent,
                "error": f"dry_run of tool {tool.name!r} failed: {type(exc).__name__}: {exc}",
            }
    rt.store.log.append(
        action.run_id,
        EventKind.shadow_tool,
        action.step,
        action_id=action.action_id,
        tool=tool.name,
        mode=mode,
    )
    return outcome


def auto_decision(escalation: Escalation) -> Decision | None:
    """How a shadow's escalation is decided without a human; None when it is no shadow's."""
    try:
        agent = get_agent(escalation.agent)
    except UnknownAgentError:
        return None
    if agent.shadow_of is None:
        return None
    # An approval lets the held call go on to the executor, which dry-runs it; anything
    # else (repeated failures, an unknown outcome) ends the shadow where it stands.
    verdict = Verdict.approve if escalation.kind == "approval_required" else Verdict.reject
    return Decision(
        escalation_id=escalation.escalation_id,
        verdict=verdict,
        by=SHADOW_DECIDER,
        reason="shadow runs never ask a human; decided automatically",
    )


# The report ------------------------------------------------------------------------


class ActionCall(BaseModel):
    tool: str
    arguments: dict[str, Any]
    # How a shadow's call was handled: run for real (a safe read), simulated, or not run.
    handled: Literal["live", "dry_run", "not_run"] = "live"

    def key(self) -> tuple[str, str]:
        return self.tool, json.dumps(self.arguments, sort_keys=True)

    def __str__(self) -> str:
        return f"{self.tool}({json.dumps(self.arguments, sort_keys=True)})"


class RunSide(BaseModel):
    run_id: str
    agent: str
    agent_version: str
    status: str
    result: str | None
    error: str | None
    actions: list[ActionCall]
    steps: int
    tokens: int
    cost_usd: float
    latency_s: float


class Comparison(BaseModel):
    event_id: str
    primary: RunSide | None  # None once the primary run has expired
    shadow: RunSide
    finished: bool  # both runs ended; until then agreement is provisional
    actions_agree: bool
    outcome_agree: bool
    differences: list[str] = Field(default_factory=list)


class Summary(BaseModel):
    events: int
    finished: int
    actions_agree: int
    outcome_agree: int
    fully_agree: int
    agreement: float | None  # fully_agree / finished


class ShadowReport(BaseModel):
    agent: str | None
    comparisons: list[Comparison]
    summary: Summary


def _side(rt: Runtime, state: RunState) -> RunSide:
    actions: list[ActionCall] = []
    handled: dict[str, Literal["dry_run", "not_run"]] = {}
    tokens = 0
    cost = 0.0
    calls: list[tuple[str, ActionCall]] = []
    for _, event in rt.store.log.read(state.run_id):
        if event.kind == EventKind.model_call:
            tokens += int(event.data.get("input_tokens", 0)) + int(
                event.data.get("output_tokens", 0)
            )
            cost += float(event.data.get("cost_usd", 0.0))
        elif event.kind == EventKind.decision and event.data.get("decision") == "tool_calls":
            for action in event.data.get("actions", []):
                call = ActionCall(tool=action["tool"], arguments=action["arguments"])
                calls.append((action["action_id"], call))
        elif event.kind == EventKind.shadow_tool:
            handled[event.data["action_id"]] = event.data["mode"]
    for action_id, call in calls:
        mode = handled.get(action_id)
        actions.append(call.model_copy(update={"handled": mode}) if mode else call)
    end = state.finished_at.timestamp() if state.finished_at else time.time()
    return RunSide(
        run_id=state.run_id,
        agent=state.agent,
        agent_version=state.agent_version,
        status=str(state.status),
        result=state.result,
        error=state.error.message if state.error else None,
        actions=actions,
        steps=state.step,
        tokens=tokens,
        cost_usd=round(cost, 8),
        latency_s=round(end - state.created_at.timestamp(), 3),
    )


def compare(primary: RunSide | None, shadow: RunSide, event_id: str) -> Comparison:
    if primary is None:
        return Comparison(
            event_id=event_id,
            primary=None,
            shadow=shadow,
            finished=False,
            actions_agree=False,
            outcome_agree=False,
            differences=["the primary run is gone (expired): nothing to compare with"],
        )
    differences: list[str] = []
    actions_agree = [a.key() for a in primary.actions] == [a.key() for a in shadow.actions]
    if not actions_agree:
        differences.append(
            f"actions: primary {[str(a) for a in primary.actions]}, "
            f"shadow {[str(a) for a in shadow.actions]}"
        )
    outcome_agree = primary.status == shadow.status and primary.result == shadow.result
    if primary.status != shadow.status:
        differences.append(f"status: primary {primary.status}, shadow {shadow.status}")
    if primary.result != shadow.result:
        differences.append(f"result: primary {primary.result!r}, shadow {shadow.result!r}")
    if primary.steps != shadow.steps:
        differences.append(f"steps: primary {primary.steps}, shadow {shadow.steps}")
    if primary.cost_usd != shadow.cost_usd:
        differences.append(f"cost_usd: primary {primary.cost_usd:g}, shadow {shadow.cost_usd:g}")
    terminal = {"succeeded", "failed", "budget_exhausted", "rejected", "cancelled"}
    return Comparison(
        event_id=event_id,
        primary=primary,
        shadow=shadow,
        finished=primary.status in terminal and shadow.status in terminal,
        actions_agree=actions_agree,
        outcome_agree=outcome_agree,
        differences=differences,
    )


def report(rt: Runtime, *, agent: str | None = None, limit: int = 200) -> ShadowReport:
    """Compare the shadow runs among the ``limit`` most recent runs with their primaries.

    ``agent`` keeps the comparisons where it is the primary or the candidate.
    """
    comparisons: list[Comparison] = []
    for state in rt.store.recent(limit):
        if state.primary_run_id is None:
            continue
        primary_state = rt.store.get(state.primary_run_id)
        if agent is not None and agent not in (
            state.agent,
            primary_state.agent if primary_state else None,
        ):
            continue
        link = state.metadata.get(SHADOW_METADATA, {})
        event_id = str(link.get("primary_event_id", state.event_id))
        comparisons.append(
            compare(
                _side(rt, primary_state) if primary_state else None,
                _side(rt, state),
                event_id,
            )
        )
    comparisons.sort(key=lambda c: c.event_id)
    finished = [c for c in comparisons if c.finished]
    fully = sum(1 for c in finished if c.actions_agree and c.outcome_agree)
    return ShadowReport(
        agent=agent,
        comparisons=comparisons,
        summary=Summary(
            events=len(comparisons),
            finished=len(finished),
            actions_agree=sum(1 for c in finished if c.actions_agree),
            outcome_agree=sum(1 for c in finished if c.outcome_agree),
            fully_agree=fully,
            agreement=round(fully / len(finished), 4) if finished else None,
        ),
    )
