"""The explicit state of one run, stored in Redis with a version."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from tether.transport.wire import (
    BudgetLimits,
    BudgetRequest,
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    ForkPoint,
    GuardrailFinding,
    Observation,
    ToolAction,
    utcnow,
)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    waiting_tools = "waiting_tools"
    waiting_human = "waiting_human"
    succeeded = "succeeded"
    failed = "failed"
    budget_exhausted = "budget_exhausted"
    rejected = "rejected"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        RunStatus.succeeded,
        RunStatus.failed,
        RunStatus.budget_exhausted,
        RunStatus.rejected,
        RunStatus.cancelled,
    }
)


class ToolCall(BaseModel):
    """A tool call exactly as the model wrote it; ``arguments`` is its raw JSON text."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # The sizes of its to_openai() JSON, measured once: each model call of a long run
    # measures every message the run holds, and a message does not change.
    _sizes: tuple[int, int] | None = PrivateAttr(default=None)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._sizes = None
        return copied

    def openai_sizes(self) -> tuple[int, int]:
        """len() of ``json.dumps(self.to_openai())``: in UTF-8 bytes of it written with
        ensure_ascii=False, and in characters of it written as json.dumps does by default."""
        # The private dict, not self._sizes: pydantic's path to a private attribute costs
        # about 5 us, 35 times the dict's, and every model call asks every message.
        private = self.__pydantic_private__
        sizes: tuple[int, int] | None = private.get("_sizes") if private is not None else None
        if sizes is None:
            message = self.to_openai()
            utf8 = len(json.dumps(message, ensure_ascii=False).encode("utf-8"))
            sizes = (utf8, len(json.dumps(message)))
            if private is not None:
                private["_sizes"] = sizes
        return sizes

    def to_openai(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def openai_json_size(messages: Sequence[ChatMessage], *, utf8: bool) -> int:
    """len() of ``json.dumps([m.to_openai() for m in messages])`` without writing it:
    in UTF-8 bytes (ensure_ascii=False) if ``utf8``, else in characters (the default)."""
    sizes = [m.openai_sizes()[0 if utf8 else 1] for m in messages]
    return 2 + sum(sizes) + 2 * max(0, len(sizes) - 1)  # "[", "]" and ", " between


class RunError(BaseModel):
    model_config = ConfigDict(frozen=True)

    category: ErrorCategory
    message: str
    # The budget limit a budget_exhausted run hit (steps, tool_calls, tokens, cost_usd,
    # wall_s), from the refusal itself; None otherwise, and in states written before it.
    limit: str | None = None


class HumanWait(BaseModel):
    """Something the run waits on a human for; ``action`` is the tool call held, if any."""

    model_config = ConfigDict(frozen=True)

    escalation_id: str
    kind: EscalationKind
    reason: str
    action: ToolAction | None = None
    # What the escalation asks (tether.agent.uncertainty, budget escalations); see Escalation.
    question: str | None = None
    context: str | None = None
    draft: str | None = None
    # The draft's typed output (an agent's output_type), which approving it makes the run's.
    draft_output: dict[str, Any] | None = None
    budget: BudgetRequest | None = None
    # A tool result a guardrail held for a person (tether.guardrails): approving it hands
    # it to the model as the call's result; the tool does not run again.
    result: Observation | None = None

    def escalation(self, run_id: str, agent: str) -> Escalation:
        return Escalation(
            escalation_id=self.escalation_id,
            run_id=run_id,
            agent=agent,
            kind=self.kind,
            reason=self.reason,
            action=self.action,
            question=self.question,
            context=self.context,
            draft=self.draft,
            budget=self.budget,
        )


class Feedback(BaseModel):
    """A person's verdict on a run's outcome: -1 bad, 0 neutral, 1 good."""

    model_config = ConfigDict(frozen=True)

    # Chosen by the caller's client, so a retried call records the feedback once.
    feedback_id: str = Field(min_length=1)
    score: Literal[-1, 0, 1]
    by: str = Field(min_length=1, pattern=r"\S")
    comment: str | None = Field(default=None, max_length=4000)
    at: datetime = Field(default_factory=utcnow)


class EscalationRecord(BaseModel):
    """An escalation as the escalation service keeps it."""

    escalation: Escalation
    # closed: the run ended (finished, cancelled) before anyone decided; expired: no one
    # decided before expires_at, and the run ended rejected (escalation_expired).
    status: Literal["pending", "decided", "closed", "expired"] = "pending"
    decision: Decision | None = None
    # When it expires undecided (Agent.escalation_expiry_s); None: records opened before
    # escalations expired, which never do.
    expires_at: datetime | None = None
    # Why it closed (the run's ending), read from the record's hash; None unless closed.
    closed_reason: str | None = None


@dataclass(frozen=True)
class StoredLists:
    """A run's messages and completed actions as the run store holds them."""

    messages: list[ChatMessage]
    completed: list[Observation]
    # Bumped whenever the store writes a list anew instead of appending; -1: not known.
    generation: int


class RunState(BaseModel):
    schema_version: Literal[1] = 1
    run_id: str
    event_id: str
    agent: str
    # Which version of the agent ran this run (Agent.version); "" for states
    # stored before versions were recorded.
    agent_version: str = ""
    # Set on a shadow run (tether.rollout.shadow): the primary run it shadows.
    primary_run_id: str | None = None
    # Set on a fork (tether.planner.fork): the run and step whose state it started from.
    forked_from: ForkPoint | None = None
    goal: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    # The conversation thread the run belongs to (tether.memory.threads), and the tools
    # whose calls and results its turn keeps in the thread's history.
    thread_id: str | None = None
    thread_keep: list[str] = Field(default_factory=list)
    status: RunStatus = RunStatus.queued
    step: int = 0
    messages: list[ChatMessage] = Field(default_factory=list)
    pending_actions: list[ToolAction] = Field(default_factory=list)
    completed_actions: list[Observation] = Field(default_factory=list)
    awaiting_human: list[HumanWait] = Field(default_factory=list)
    invalid_calls: int = 0
    limits: BudgetLimits = Field(default_factory=BudgetLimits)
    # What the input's guardrails did other than pass (tether.guardrails): a rewrite is in
    # goal and messages already; a block or escalation is acted on by the first planning step.
    input_guardrails: list[GuardrailFinding] = Field(default_factory=list)
    result: str | None = None
    # The final answer validated against the agent's output_type, as JSON values
    # (tether.agent.output); None for an agent without one. ``result`` holds it as text.
    output: dict[str, Any] | None = None
    partial_result: str | None = None
    error: RunError | None = None
    feedback: list[Feedback] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # Human time is not agent time (invariant 8): when the run began waiting for a human
    # (None when it waits for none), and the seconds it has waited in all; its wall-time
    # budget counts neither (tether.store.budgets.human_clock).
    waiting_since: datetime | None = None
    human_wait_s: float = 0.0
    version: int = 0
    # What the run store holds of its messages and completed actions at this version
    # (tether.store.run_lists): both only grow, so a commit appends what came after instead of
    # writing them all again. None: not known (a state built anew).
    _stored: StoredLists | None = PrivateAttr(default=None)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def latest_partial(self) -> str:
        """What the run had achieved so far, for runs that end without an answer."""
        lines = [
            f"{obs.tool} -> {obs.output if obs.ok else 'error: ' + (obs.error or '')}"
            for obs in self.completed_actions
        ]
        last_text = next(
            (m.content for m in reversed(self.messages) if m.role == "assistant" and m.content),
            None,
        )
        if last_text:
            lines.append(f"last model note: {last_text}")
        return "\n".join(lines) if lines else "no steps completed"
