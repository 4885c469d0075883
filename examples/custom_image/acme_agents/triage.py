"""A support-ticket triage agent: one typed tool, a model, a budget.

A team's own agent module, as the workers import it: the image puts this
package under /app (on PYTHONPATH) and TETHER_AGENT_MODULES names
``acme_agents.triage``. Without TETHER_MODEL_BASE_URL it runs on a scripted
model, named as such in every trace.
"""

from __future__ import annotations

import json

from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel, tool
from tether.config import get_settings
from tether.models import ModelClient, ModelResponse, text, tool_call
from tether.store.state import ChatMessage

URGENT_WORDS = ("down", "outage", "cannot log in", "data loss", "security")


@tool
def ticket_priority(summary: str) -> str:
    """The priority of a support ticket from its summary: urgent or normal."""
    lowered = summary.lower()
    return "urgent" if any(word in lowered for word in URGENT_WORDS) else "normal"


def triage_script(messages: list[ChatMessage]) -> ModelResponse:
    """What a careful model would do: ask the tool, then say what it found."""
    observed = [m for m in messages if m.role == "tool"]
    if not observed:
        ticket = next(m.content or "" for m in messages if m.role == "user")
        return tool_call("ticket_priority", {"summary": ticket})
    priority = json.loads(observed[-1].content or "{}").get("result", "unknown")
    return text(f"Priority: {priority}.")


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
    return ScriptedModel(triage_script, label="triage")


triage = Agent(
    name="triage",
    instructions=(
        "Triage support tickets: call ticket_priority with the ticket's summary, "
        "then answer 'Priority: <urgent|normal>.' and nothing else."
    ),
    model=_model(),
    tools=[ticket_priority],
    budget=BudgetLimits(max_steps=4, max_tool_calls=2, max_cost_usd=0.05, max_wall_s=120),
)
