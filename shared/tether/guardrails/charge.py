"""Paying for a guardrail's model call from the run's budget, as a planning step's call is
paid (tether.planner.model_call): reserve its upper bound, call, settle what it cost.

The reservation is named by the check (GuardContext.key), so a redelivered message
that runs the check again is charged once: budgets.lua applies a reservation id once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.errors import BudgetExhaustedError
from tether.models.base import ModelClient, ModelResponse
from tether.models.prices import reserved_cost_usd
from tether.store.budgets import Budgets, BudgetUsage
from tether.store.state import ChatMessage
from tether.transport.wire import BudgetLimits


@dataclass(frozen=True)
class BudgetCharge:
    budgets: Budgets
    run_id: str

    def complete(self, key: str, model: ModelClient, messages: list[ChatMessage]) -> ModelResponse:
        tokens = model.estimate_tokens(messages, [])
        limits = BudgetLimits(max_cost_usd=self.budgets.limit(self.run_id, "cost_usd"))
        cost = reserved_cost_usd(model, tokens, limits)
        granted = self.budgets.reserve(self.run_id, key, tokens=tokens, cost_usd=cost)
        if not granted.granted:
            raise BudgetExhaustedError(self.run_id, granted.reason, granted.limit)
        try:
            response = model.complete(messages, [])
        except BaseException:
            self.budgets.settle(self.run_id, key, tokens=-tokens, cost_usd=-cost)
            raise
        self.budgets.settle(
            self.run_id,
            key,
            tokens=response.total_tokens - tokens,
            cost_usd=response.cost_usd - cost,
        )
        return response


@dataclass
class OpeningCharge:
    """For the task's input, checked before its run and budget exist: what the calls
    spent, which the run's budget opens with (as a thread summary's call is)."""

    spent: BudgetUsage = field(default_factory=BudgetUsage)

    def complete(self, key: str, model: ModelClient, messages: list[ChatMessage]) -> ModelResponse:
        response = model.complete(messages, [])
        self.spent = BudgetUsage(
            tokens=self.spent.tokens + response.total_tokens,
            cost_usd=self.spent.cost_usd + response.cost_usd,
        )
        return response
