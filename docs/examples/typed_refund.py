"""An agent whose answer is a validated Refund, not text (docs/guides/typed-results.md)."""

from pydantic import BaseModel, ConfigDict, Field

import tether
from tether import Agent, ScriptedModel
from tether.models import ModelResponse, answer, text
from tether.models.scripted import requested_format
from tether.store.state import ChatMessage


class Refund(BaseModel):
    model_config = ConfigDict(extra="forbid")  # closed and fully required: strict decoding

    order_id: int
    amount_eur: float = Field(ge=0, description="How much to refund, in euros.")
    reason: str = Field(description="Why, in the customer's words.")


def _model(messages: list[ChatMessage]) -> ModelResponse:
    # A model asked for the schema answers in it; asked for nothing, it answers in prose.
    if requested_format() is None:
        return text("Refund 25 EUR on order 1001.")
    return answer({"order_id": 1001, "amount_eur": 25.0, "reason": "arrived broken"})


refunds = Agent(
    name="refunds",
    instructions="Work out the refund the customer asks for.",
    # The scripted model stands in for OpenAIModel("gpt-4o-mini", base_url=...).
    model=ScriptedModel(_model, label="refunds"),
    output_type=Refund,
)


if __name__ == "__main__":
    run_id = tether.submit("refunds", "Order 1001 arrived broken; I paid 25 EUR.")
    refund = tether.result(run_id, Refund, timeout_s=60)
    print(f"refund {refund.amount_eur:.2f} EUR on order {refund.order_id}")
