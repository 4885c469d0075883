"""An agent module: workers load it through TETHER_AGENT_MODULES (docs: Writing agents)."""

import os
from typing import Annotated

from pydantic import BaseModel, Field

from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel, ToolContext, tool
from tether.models import ModelClient, text, tool_call


class Invoice(BaseModel):
    invoice_id: int
    amount_cents: int
    status: str


INVOICES = {7: Invoice(invoice_id=7, amount_cents=4200, status="open")}  # a billing system


@tool
def get_invoice(
    invoice_id: Annotated[int, Field(ge=1, description="The numeric invoice id, e.g. 7")],
) -> Invoice:
    """Look up one invoice: amount and status."""
    if invoice_id not in INVOICES:
        raise LookupError(f"invoice {invoice_id} does not exist")
    return INVOICES[invoice_id]


@tool(idempotent=False, requires_approval=True, timeout_s=10)
def void_invoice(
    ctx: ToolContext,
    invoice_id: Annotated[int, Field(ge=1)],
    reason: Annotated[str, Field(min_length=3, max_length=300)],
) -> Invoice:
    """Void an invoice. A human approves every call before it runs."""
    # A real billing API would take ctx.action_id as its idempotency key: the id is the
    # same on every redelivery, so a retried call cannot void twice.
    INVOICES[invoice_id].status = "void"
    return INVOICES[invoice_id]


model: ModelClient
if os.environ.get("TETHER_MODEL_BASE_URL"):
    model = OpenAIModel(
        "gpt-4o-mini",
        base_url=os.environ["TETHER_MODEL_BASE_URL"],
        api_key=os.environ.get("TETHER_MODEL_API_KEY", "unset"),
    )
else:
    # The scripted model answers from the conversation alone: here, a fixed sequence of turns.
    model = ScriptedModel(
        [
            tool_call("get_invoice", {"invoice_id": 7}),
            tool_call("void_invoice", {"invoice_id": 7, "reason": "duplicate charge"}),
            text("Invoice 7 is void."),
        ],
        label="billing",
    )

billing = Agent(
    name="billing",
    instructions="You handle invoice questions. Look invoices up; never guess amounts.",
    model=model,
    tools=[get_invoice, void_invoice],
    budget=BudgetLimits(
        max_steps=6, max_tool_calls=8, max_tokens=20_000, max_cost_usd=0.10, max_wall_s=120
    ),
)
