"""The support desk agent. Workers load it with TETHER_AGENT_MODULES=examples.support_desk.agent."""

from __future__ import annotations

from examples.support_desk.script import support_desk_script
from examples.support_desk.tools import (
    find_customer,
    issue_refund,
    lookup_order,
    orders_of_customer,
)
from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel
from tether.config import get_settings
from tether.guardrails import (
    InjectionGuardrail,
    LengthLimit,
    PatternDetector,
    PiiGuardrail,
    SecretsGuardrail,
)
from tether.memory import MemoryConfig
from tether.models import ModelClient


def _model() -> ModelClient:
    settings = get_settings()
    if settings.model_base_url:
        return OpenAIModel(
            settings.model_name,
            base_url=settings.model_base_url,
            api_key=settings.model_api_key,
            timeout_s=settings.model_timeout_s,
            max_attempts=settings.model_max_attempts,
        )
    return ScriptedModel(support_desk_script, label="support_desk")


_PAYMENT_DATA = PatternDetector(kinds=("card", "iban"))

support_desk = Agent(
    name="support_desk",
    instructions=(
        "You are a support agent for an outdoor gear shop. Use the tools to look up orders and "
        "customers; never guess order details. Refunds need a human's approval: request them "
        "with issue_refund only for the order's own amount or less, and say what you did. "
        "When a request is ambiguous (a refund with no order number), ask a human with "
        "ask_human instead of guessing."
    ),
    model=_model(),
    tools=[lookup_order, find_customer, orders_of_customer, issue_refund],
    # The model may ask a human when a request is ambiguous (tether.agent.uncertainty).
    ask_human=True,
    # Long-term memory per customer: remember / recall (tether.memory.longterm).
    memory=MemoryConfig(subject_key="customer_id", max_items=50, ttl_s=30 * 24 * 3600),
    budget=BudgetLimits(
        max_steps=8, max_tool_calls=10, max_tokens=50_000, max_cost_usd=0.50, max_wall_s=300
    ),
    # Guardrails (tether.guardrails). Payment data (card numbers, IBANs) is redacted from
    # what customers write and from the answers; emails stay, since the desk finds
    # customers by them. A credential in a request ends the run before it is stored, and a
    # tool result that tries to give the model orders waits for a person.
    input_guardrails=[SecretsGuardrail(), LengthLimit(4000), PiiGuardrail(_PAYMENT_DATA)],
    tool_result_guardrails=[SecretsGuardrail(on_found="redact"), InjectionGuardrail()],
    output_guardrails=[SecretsGuardrail(), PiiGuardrail(_PAYMENT_DATA)],
)
