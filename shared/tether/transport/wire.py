"""Versioned wire messages: what crosses a queue, as JSON, never pickle.

Every message carries ``schema_version`` so a consumer can refuse what it does
not understand instead of misreading it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = SCHEMA_VERSION


def canonical(message: BaseModel) -> dict[str, str]:
    """Each field of ``message`` as canonical JSON: what a message claims compares with
    what a worker trusts field by field, whatever the key order, and names what differs."""
    return {
        field: json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        for field, value in message.model_dump(mode="json").items()
    }


class BudgetLimits(BaseModel):
    """Upper bounds for one run; ``None`` means unbounded on that axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, ge=0)
    max_wall_s: float | None = Field(default=None, gt=0)

    def tightened_by(self, other: BudgetLimits | None) -> BudgetLimits:
        """The stricter of both on every axis: an event may narrow, never widen."""
        if other is None:
            return self
        merged: dict[str, Any] = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            candidates = [v for v in (mine, theirs) if v is not None]
            merged[name] = min(candidates) if candidates else None
        return BudgetLimits(**merged)


class ForkPoint(BaseModel):
    """Where a fork starts: the run it copies and the planning step it plans again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)


class Priority(StrEnum):
    """How urgently an event's run should start when runs wait for capacity
    (tether.planner.admission): interactive before batch, batch never starved."""

    interactive = "interactive"
    batch = "batch"


class TaskEvent(Message):
    """What an upstream system publishes to start a run.

    ``event_id`` is the idempotency key: the same event published twice starts one run.
    """

    event_id: str = Field(min_length=1, max_length=200)
    agent: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1)
    budget: BudgetLimits | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # A conversation in the upstream system: runs on one thread see its history and
    # run one at a time, in publish order (tether.memory.threads).
    thread_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[^\s*?\[\]]+$"
    )
    # The event's place in its thread's publish order, taken from the thread's counter
    # (``HINCRBY tether:thread:{<id>}:seq published 1``; tether.client.submit does it).
    # Without one, events on a thread go in the order of their publish times.
    thread_seq: int | None = Field(default=None, ge=1)
    # Set on a fork (tether.planner.fork): the run starts from that run's state as its
    # step was about to be planned, instead of from ``input`` alone.
    forked_from: ForkPoint | None = None
    # Which runs start first while runs wait for capacity (TETHER_MAX_RUNS_IN_FLIGHT,
    # tenant caps): interactive ones, with every Nth start given to a waiting batch one.
    priority: Priority = Priority.interactive


class ToolAction(Message):
    """One tool call of one run, executed by the executor service."""

    action_id: str
    run_id: str
    agent: str
    step: int
    tool: str
    tool_call_id: str
    arguments: dict[str, Any]
    idempotent: bool = True
    # The unsafe_retry escalation whose approval lets a non-idempotent action run
    # once more after an attempt with an unknown outcome; one approval, one attempt.
    rerun_approval: str | None = None


class ErrorCategory(StrEnum):
    model_transient = "model_transient"
    # The endpoint refused the request itself (bad key, unknown model, bad request).
    model_permanent = "model_permanent"
    model_invalid_output = "model_invalid_output"
    tool_validation = "tool_validation"
    tool_transient = "tool_transient"
    tool_permanent = "tool_permanent"
    timeout = "timeout"
    budget = "budget"
    policy_denied = "policy_denied"
    human_rejected = "human_rejected"
    # An escalation no one decided before its expiry (Agent.escalation_expiry_s).
    escalation_expired = "escalation_expired"
    cancelled = "cancelled"
    # A guardrail blocked the run (tether.guardrails).
    guardrail_blocked = "guardrail_blocked"
    internal = "internal"


class EscalationKind(StrEnum):
    approval_required = "approval_required"
    model_uncertain = "model_uncertain"
    repeated_failure = "repeated_failure"
    budget_exhausted = "budget_exhausted"
    unsafe_retry = "unsafe_retry"
    # A guardrail asks a person whether what it flagged may go on (tether.guardrails).
    guardrail = "guardrail"


class GuardrailPlace(StrEnum):
    """Where a guardrail looks (tether.guardrails)."""

    input = "input"
    tool_arguments = "tool_arguments"
    tool_result = "tool_result"
    output = "output"


class GuardrailOutcome(StrEnum):
    passed = "pass"
    block = "block"
    escalate = "escalate"
    rewrite = "rewrite"


class GuardrailFinding(BaseModel):
    """What one guardrail decided at one place: recorded, never the content it judged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    place: GuardrailPlace
    guardrail: str
    outcome: GuardrailOutcome
    reason: str = ""
    # At tool_arguments and tool_result: the tool and the model's call id.
    tool: str | None = None
    tool_call_id: str | None = None


class Observation(Message):
    """The outcome of one ToolAction, handed back to the planner.

    ``needs_human`` is set when the executor would not decide alone (a
    non-idempotent action found half-done): the planner holds it for a human.
    """

    action_id: str
    run_id: str
    step: int
    tool: str
    tool_call_id: str
    ok: bool
    output: Any = None
    error: str | None = None
    error_category: ErrorCategory | None = None
    latency_ms: float = 0.0
    attempts: int = 1
    needs_human: EscalationKind | None = None
    # What the tool's result guardrails found, in order (tether.guardrails): a rewrite is
    # already in ``output``; a block or escalate, last, stops the result.
    guardrails: list[GuardrailFinding] = Field(default_factory=list)


class Verdict(StrEnum):
    approve = "approve"
    reject = "reject"
    answer = "answer"
    # Raise the budget limit a budget_exhausted escalation names, within its ceiling.
    extend = "extend"


# The budget limits an escalation can name and an operator can extend (budgets.lua's names).
BUDGET_LIMITS = ("steps", "tool_calls", "tokens", "cost_usd", "wall_s")


class BudgetEscalation(BaseModel):
    """An agent's choice to ask a human when its budget runs out, instead of ending the run.

    ``ceiling`` bounds every extension: a limit is never raised past it (None: no ceiling
    on that axis, so it cannot be extended at all).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ceiling: BudgetLimits


class BudgetRequest(BaseModel):
    """What a budget_exhausted escalation asks: which limit ran out, what was used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Literal["steps", "tool_calls", "tokens", "cost_usd", "wall_s"]
    used: float
    max: float
    ceiling: float | None = None


class Decision(Message):
    """A human's answer to an escalation, with who decided and when."""

    escalation_id: str
    verdict: Verdict
    by: str = Field(min_length=1)
    at: datetime = Field(default_factory=utcnow)
    reason: str | None = None
    answer: str | None = None
    # For Verdict.extend: which budget limit, and by how much.
    limit: Literal["steps", "tool_calls", "tokens", "cost_usd", "wall_s"] | None = None
    extend_by: float | None = Field(default=None, gt=0)
    # For Verdict.approve of a held tool call: the arguments a person edited, which the call
    # runs with instead of the model's (None: as the model wrote them).
    arguments: dict[str, Any] | None = None
    # With operators configured (tether.escalation.operators): who signed it, from where, and
    # the HMAC-SHA256 of the rest under that operator's key.
    operator: str | None = None
    client_host: str | None = None
    client_pid: int | None = None
    signature: str | None = None

    def extension_id(self) -> str:
        """Who extended what by how much: a redelivery matches it, another operator does not."""
        return f"{self.by}|{self.limit}|{self.extend_by:g}"


class Escalation(Message):
    """A run that needs a human. Anyone may consume the escalation queue."""

    escalation_id: str
    run_id: str
    agent: str
    kind: EscalationKind
    reason: str
    action: ToolAction | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # model_uncertain: the model's question (ask_human) or its low-confidence draft answer.
    question: str | None = None
    context: str | None = None
    draft: str | None = None
    # budget_exhausted: the limit that ran out and what was used.
    budget: BudgetRequest | None = None

    def verdicts(self) -> list[Verdict]:
        """What a human can answer this escalation with."""
        if self.kind == EscalationKind.budget_exhausted:
            return [Verdict.extend, Verdict.reject]
        if self.kind == EscalationKind.guardrail and (self.action is None or self.context):
            # What a guardrail flagged in the input, a result or the answer goes on or stops.
            return [Verdict.approve, Verdict.reject]
        if self.kind == EscalationKind.model_uncertain:
            # A low-confidence draft can be approved as the final answer; a question cannot.
            if self.draft is not None:
                return [Verdict.approve, Verdict.answer, Verdict.reject]
            return [Verdict.answer, Verdict.reject]
        return [Verdict.approve, Verdict.answer, Verdict.reject]


class EventKind(StrEnum):
    """What an entry of a run's event log records (its ``kind``, also in the lifecycle
    stream tether:events). The values are stored: a renamed value leaves old entries under
    the old one, which reads back as a kind no member matches (``_missing_``)."""

    run_started = "run_started"
    thread_context = "thread_context"
    duplicate_event = "duplicate_event"
    duplicate_step = "duplicate_step"
    model_call = "model_call"
    model_failed = "model_failed"
    decision = "decision"
    tool_call_invalid = "tool_call_invalid"
    tool_call_denied = "tool_call_denied"
    tool_call = "tool_call"
    action_skipped = "action_skipped"
    shadow_tool = "shadow_tool"
    observation = "observation"
    observation_ignored = "observation_ignored"
    escalation_opened = "escalation_opened"
    escalation_decided = "escalation_decided"
    escalation_expired = "escalation_expired"
    decision_refused = "decision_refused"
    auto_approved = "auto_approved"
    resumed = "resumed"
    memory_write = "memory_write"
    feedback = "feedback"
    run_redriven = "run_redriven"
    run_not_redriven = "run_not_redriven"
    rate_limited = "rate_limited"
    dead_letter = "dead_letter"
    dead_letter_replayed = "dead_letter_replayed"
    dead_letter_deleted = "dead_letter_deleted"
    forged_message_refused = "forged_message_refused"
    # One guardrail's outcome: where, which, what, why; never the content it judged.
    guardrail = "guardrail"
    run_finished = "run_finished"

    @classmethod
    def _missing_(cls, value: object) -> EventKind | None:
        # A log outlives the release that wrote it (``forged_action_refused`` before it was
        # renamed), and a newer worker writes kinds an older reader does not know: such an
        # entry reads as its stored kind, so one entry does not make a whole run's log unreadable.
        if not isinstance(value, str) or not value:
            return None
        kind = str.__new__(cls, value)
        kind._name_ = value
        kind._value_ = value
        return kind


class RunEvent(BaseModel):
    """One decision point in a run's event log (its audit trail)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    kind: EventKind
    step: int
    at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)
