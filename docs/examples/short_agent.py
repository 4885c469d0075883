"""The agent in the README: one typed tool, a model, a budget."""

from tether import Agent, BudgetLimits, ScriptedModel, tool
from tether.models import text, tool_call


@tool
def order_status(order_id: int) -> str:
    """Where an order is."""
    return {1001: "shipped"}.get(order_id, "unknown")


orders = Agent(
    name="orders",
    instructions="Answer questions about orders. Look them up; never guess.",
    # The scripted model stands in for OpenAIModel("gpt-4o-mini", base_url=...).
    model=ScriptedModel(
        [tool_call("order_status", {"order_id": 1001}), text("Order 1001 has shipped.")],
        label="orders",
    ),
    tools=[order_status],
    budget=BudgetLimits(max_steps=5, max_cost_usd=0.05),
)
