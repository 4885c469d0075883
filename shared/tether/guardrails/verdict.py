"""What a guardrail is and what it answers: pass, block, escalate, or rewrite.

A guardrail looks at one value at one place of a run (GuardrailPlace): the task's
input and the final answer are text, a tool's arguments a JSON object, a tool's
result any JSON value. It answers with a GuardrailVerdict; a rewrite carries the
value that replaces the original everywhere downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from tether.models.base import ModelClient, ModelResponse
from tether.store.state import ChatMessage
from tether.transport.wire import GuardrailFinding, GuardrailOutcome, GuardrailPlace

__all__ = [
    "GuardContext",
    "Guardrail",
    "GuardrailFinding",
    "GuardrailOutcome",
    "GuardrailPlace",
    "GuardrailVerdict",
    "ModelCharge",
]


class GuardrailVerdict(BaseModel):
    """One guardrail's answer. ``rewritten`` is the new value, for a rewrite only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: GuardrailOutcome
    reason: str = ""
    rewritten: Any = None

    @classmethod
    def passed(cls) -> GuardrailVerdict:
        return cls(outcome=GuardrailOutcome.passed)

    @classmethod
    def block(cls, reason: str) -> GuardrailVerdict:
        return cls(outcome=GuardrailOutcome.block, reason=reason)

    @classmethod
    def escalate(cls, reason: str) -> GuardrailVerdict:
        return cls(outcome=GuardrailOutcome.escalate, reason=reason)

    @classmethod
    def rewrite(cls, value: Any, reason: str) -> GuardrailVerdict:
        return cls(outcome=GuardrailOutcome.rewrite, reason=reason, rewritten=value)


class ModelCharge(Protocol):
    """How a guardrail that calls a model pays for it from the run's budget
    (tether.guardrails.charge.BudgetCharge): an upper bound reserved before the call,
    what it really cost settled after; BudgetExhaustedError where the budget refuses."""

    def complete(self, key: str, model: ModelClient, messages: list[ChatMessage]) -> ModelResponse:
        """The model's answer to ``messages``; ``key`` names the charge on every delivery."""
        ...


@dataclass(frozen=True)
class GuardContext:
    """Where a guardrail is asked, about which run; ``charge`` pays for model calls."""

    run_id: str
    agent: str
    place: GuardrailPlace
    step: int
    tool: str | None = None
    tool_call_id: str | None = None
    charge: ModelCharge | None = None

    @property
    def where(self) -> str:
        """The place checked, for a verdict's reason: "the tool_result of 'fetch'"."""
        return f"the {self.place}" + (f" of {self.tool!r}" if self.tool else "")

    def key(self, guardrail: str) -> str:
        """A name for this check, the same on every delivery of its message."""
        return f"guard:{self.step}:{self.place}:{self.tool_call_id or '-'}:{guardrail}"


@runtime_checkable
class Guardrail(Protocol):
    """Anything with a ``name`` and a ``check``; raising from ``check`` blocks (fails closed)."""

    @property
    def name(self) -> str: ...

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict: ...
