"""Typed agents whose final answer an output guardrail may hold for a person (issue 25).

The scripted model answers in each agent's schema; an answer holding ``FLAG`` is
escalated by the output guardrail. A goal with ``invalid`` gets an answer that does
not match the schema first (still holding ``FLAG``), then a valid one without it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from tether import Agent, BudgetLimits, ScriptedModel
from tether.guardrails import GuardContext, GuardrailVerdict
from tether.models import ModelResponse, text
from tether.store.state import ChatMessage

FLAG = "ESCALATE-ME"


class Refund(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str
    amount: float


class FlagGuardrail:
    """Escalates an answer holding FLAG."""

    @property
    def name(self) -> str:
        return "flag"

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        if FLAG in json.dumps(value):
            return GuardrailVerdict.escalate(f"{FLAG!r} needs a person's look")
        return GuardrailVerdict.passed()


def _refund(messages: list[ChatMessage]) -> ModelResponse:
    goal = next(m.content or "" for m in messages if m.role == "user")
    answered = any(m.role == "assistant" for m in messages)
    if "invalid" in goal and not answered:
        return text(json.dumps({"customer": FLAG, "amount": "lots"}))
    customer = "ACME" if "invalid" in goal else f"ACME {FLAG}"
    return text(json.dumps({"customer": customer, "amount": 12.5}))


def _confident(messages: list[ChatMessage]) -> ModelResponse:
    return text(json.dumps({"answer": f"ACME owes 12.50 {FLAG}", "confidence": 0.9}))


guarded_refunder = Agent(
    name="guarded_refunder",
    instructions="Say what to refund.",
    model=ScriptedModel(_refund, label="guarded_refunder"),
    budget=BudgetLimits(max_steps=6),
    output_type=Refund,
    output_guardrails=[FlagGuardrail()],
)

guarded_confident = Agent(
    name="guarded_confident",
    instructions="Answer with your confidence.",
    model=ScriptedModel(_confident, label="guarded_confident"),
    budget=BudgetLimits(max_steps=6),
    confidence_floor=0.5,
    output_guardrails=[FlagGuardrail()],
)
