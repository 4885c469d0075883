"""Earned autonomy: approvals of a requires_approval tool relax as its record is shown.

Per agent and tool, Redis keeps a record of human decisions: the streak of
approvals since the last rejection or failure, and what tightened it last.
Until ``after`` approvals in a row a human approves every call; from then on
only a ``sample`` share of calls, picked by a hash of the action id (so a
redelivered step picks the same ones), still goes to a human, and the rest is
approved automatically and logged as ``auto_approved``. A rejection or a
failure of the tool resets the streak: every call asks again.

The record only changes inside commits that already count a fact once: a
human decision in the escalation's compare-and-set (``decision_writes``), a
tool failure in the run commit that records its observation
(``failure_writes``). The mode is not stored but derived from the streak and
the declared policy, so changing ``after`` in code takes effect at once.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import cast

import redis
from pydantic import BaseModel

from tether.agent.definition import Agent
from tether.agent.options import EarnedAutonomy as EarnedAutonomy
from tether.store import keys
from tether.store.versioned import SideWrite
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    EventKind,
    Observation,
    RunEvent,
    ToolAction,
    Verdict,
    utcnow,
)

# A failure of the tool itself says something about trusting it; running out of
# budget or being refused says nothing about the tool.
TIGHTENING_FAILURES = frozenset(
    {
        ErrorCategory.tool_permanent,
        ErrorCategory.tool_transient,
        ErrorCategory.tool_validation,
        ErrorCategory.timeout,
    }
)


class Mode(StrEnum):
    supervised = "supervised"  # every call asks a human
    earned = "earned"  # a sampled share asks, the rest is approved automatically


class Mark(BaseModel):
    """What last tightened a policy: who or what, when, and why."""

    at: str
    by: str
    reason: str
    ref: str  # the escalation or action it came from


class AutonomyRecord(BaseModel):
    """The stored record of one agent's tool (all counts are of human decisions)."""

    agent: str
    tool: str
    streak: int = 0
    approvals: int = 0
    rejections: int = 0
    failures: int = 0
    last_rejection: Mark | None = None
    last_failure: Mark | None = None


class PolicyView(BaseModel):
    """A policy as operators see it (`tether escalations policy --json`)."""

    agent: str
    tool: str
    policy: EarnedAutonomy
    mode: Mode
    record: AutonomyRecord
    why: str


class Gate(BaseModel):
    """Whether one call of a requires_approval tool asks a human, and why."""

    ask: bool
    reason: str
    mode: Mode | None = None
    streak: int = 0

    @property
    def note(self) -> str:
        """What the escalation's reason adds: why a declared policy asks this time."""
        return f" (earned autonomy: {self.reason})" if self.mode is not None else ""


def load_record(client: redis.Redis, agent: str, tool: str) -> AutonomyRecord:
    raw = cast(dict[str, str], client.hgetall(keys.autonomy(agent, tool)))

    def mark(name: str) -> Mark | None:
        return Mark.model_validate_json(raw[name]) if raw.get(name) else None

    return AutonomyRecord(
        agent=agent,
        tool=tool,
        streak=int(raw.get("streak", 0)),
        approvals=int(raw.get("approvals", 0)),
        rejections=int(raw.get("rejections", 0)),
        failures=int(raw.get("failures", 0)),
        last_rejection=mark("last_rejection"),
        last_failure=mark("last_failure"),
    )


def mode_of(policy: EarnedAutonomy, record: AutonomyRecord) -> Mode:
    return Mode.earned if record.streak >= policy.after else Mode.supervised


def sampled(action_id: str, share: float) -> bool:
    """Whether this action is in the ``share`` that still asks; the same for every delivery."""
    digest = hashlib.sha256(action_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def why(policy: EarnedAutonomy, record: AutonomyRecord) -> str:
    if mode_of(policy, record) == Mode.earned:
        return (
            f"{record.streak} approvals in a row (needs {policy.after}) with no rejection or "
            f"failure since: {policy.sample:.0%} of calls still ask a human, the rest are "
            "approved automatically"
        )
    last = max(
        (m for m in (record.last_rejection, record.last_failure) if m is not None),
        key=lambda m: m.at,
        default=None,
    )
    tightened = f"; tightened at {last.at} by {last.by}: {last.reason}" if last is not None else ""
    return (
        f"{record.streak} of {policy.after} approvals in a row so far: every call asks a "
        f"human{tightened}"
    )


def view(agent: str, tool: str, policy: EarnedAutonomy, client: redis.Redis) -> PolicyView:
    record = load_record(client, agent, tool)
    return PolicyView(
        agent=agent,
        tool=tool,
        policy=policy,
        mode=mode_of(policy, record),
        record=record,
        why=why(policy, record),
    )


def gate(client: redis.Redis, agent: Agent, action: ToolAction) -> Gate:
    """Whether ``action`` (of a requires_approval tool) waits for a human."""
    if agent.shadow_of is not None:
        # A shadow's held tools run in dry-run (tether.rollout.shadow): nobody is asked.
        return Gate(
            ask=False,
            reason=f"shadow run of a candidate of {agent.shadow_of!r}: the tool runs in "
            "dry-run, no human is asked",
        )
    policy = agent.autonomy
    if policy is None:
        return Gate(ask=True, reason="the tool requires approval and no autonomy is declared")
    record = load_record(client, agent.name, action.tool)
    mode = mode_of(policy, record)
    base = why(policy, record)
    if mode == Mode.supervised:
        return Gate(ask=True, reason=base, mode=mode, streak=record.streak)
    if sampled(action.action_id, policy.sample):
        return Gate(
            ask=True,
            reason=f"sampled for review; {base}",
            mode=mode,
            streak=record.streak,
        )
    return Gate(ask=False, reason=base, mode=mode, streak=record.streak)


def auto_approved(run_id: str, step: int, action: ToolAction, decided: Gate) -> RunEvent:
    """The log entry of an automatic approval, written by the commit that makes it."""
    return RunEvent(
        run_id=run_id,
        kind=EventKind.auto_approved,
        step=step,
        data={
            "action_id": action.action_id,
            "tool": action.tool,
            "mode": decided.mode,
            "streak": decided.streak,
            "reason": decided.reason,
        },
    )


def _mark(by: str, reason: str, ref: str) -> str:
    return Mark(at=utcnow().isoformat(), by=by, reason=reason, ref=ref).model_dump_json()


def decision_writes(escalation: Escalation, decision: Decision) -> list[SideWrite]:
    """How a human's decision on an approval changes the tool's record, for its commit.

    An answer instead of running the tool neither approves nor rejects it.
    """
    if escalation.kind != EscalationKind.approval_required or escalation.action is None:
        return []
    key = keys.autonomy(escalation.agent, escalation.action.tool)
    if decision.verdict == Verdict.approve:
        return [
            SideWrite("HINCRBY", key, ("streak", 1)),
            SideWrite("HINCRBY", key, ("approvals", 1)),
        ]
    if decision.verdict == Verdict.reject:
        mark = _mark(decision.by, decision.reason or "rejected", escalation.escalation_id)
        return [
            SideWrite("HSET", key, ("streak", 0)),
            SideWrite("HINCRBY", key, ("rejections", 1)),
            SideWrite("HSET", key, ("last_rejection", mark)),
        ]
    return []


def failure_writes(agent: Agent, observation: Observation) -> list[SideWrite]:
    """How a failed call of a requires_approval tool tightens its record, for the run's commit."""
    if observation.ok or observation.error_category not in TIGHTENING_FAILURES:
        return []
    if not any(t.name == observation.tool and t.requires_approval for t in agent.tools):
        return []
    key = keys.autonomy(agent.name, observation.tool)
    mark = _mark("tool failure", observation.error or "failed", observation.action_id)
    return [
        SideWrite("HSET", key, ("streak", 0)),
        SideWrite("HINCRBY", key, ("failures", 1)),
        SideWrite("HSET", key, ("last_failure", mark)),
    ]


def policies(
    agents: dict[str, Agent], client: redis.Redis, only: str | None = None
) -> list[PolicyView]:
    """Every declared policy with its current state, per agent and requires_approval tool."""
    return [
        view(agent.name, tool.name, agent.autonomy, client)
        for agent in sorted(agents.values(), key=lambda a: a.name)
        if agent.autonomy is not None and (only is None or agent.name == only)
        for tool in agent.tools
        if tool.requires_approval
    ]
