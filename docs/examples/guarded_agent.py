"""An agent with guardrails at every place (docs/guides/guardrails.md)."""

from typing import Any

from tether import Agent, ScriptedModel, tool
from tether.guardrails import (
    GuardContext,
    GuardrailVerdict,
    InjectionGuardrail,
    LengthLimit,
    ModelGuardrail,
    PiiGuardrail,
    SecretsGuardrail,
)
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


class RefundCap:
    """A guardrail of your own: refunds over the cap wait for a person."""

    name = "refund_cap"

    def __init__(self, cap_cents: int) -> None:
        self.cap_cents = cap_cents

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        if value["amount_cents"] > self.cap_cents:
            return GuardrailVerdict.escalate(f"over the {self.cap_cents}-cent cap")
        return GuardrailVerdict.passed()


@tool(result_guardrails=[InjectionGuardrail()])
def read_ticket(ticket_id: int) -> str:
    """The text a customer wrote in a ticket."""
    return {7: "Card 4111 1111 1111 1111 was charged twice, please refund 1500 cents."}.get(
        ticket_id, "no such ticket"
    )


@tool(argument_guardrails=[RefundCap(cap_cents=10_000)])
def refund(order_id: int, amount_cents: int) -> str:
    """Refund an order."""
    return f"refunded {amount_cents} cents on order {order_id}"


def _model(messages: list[ChatMessage]) -> ModelResponse:
    done = [m.content or "" for m in messages if m.role == "tool"]
    if not done:
        return tool_call("read_ticket", {"ticket_id": 7})
    if len(done) == 1:
        return tool_call("refund", {"order_id": 1001, "amount_cents": 1500})
    return text(f"Done: {done[-1]}. Your card 4111 1111 1111 1111 gets it within 5 days.")


def _judge(messages: list[ChatMessage]) -> ModelResponse:
    return text("FLAG: rude" if "idiot" in (messages[-1].content or "") else "PASS")


tickets = Agent(
    name="tickets",
    instructions="Settle the customer's ticket.",
    # The scripted models stand in for OpenAIModel("gpt-4o-mini", base_url=...).
    model=ScriptedModel(_model, label="tickets"),
    tools=[read_ticket, refund],
    # Before the run stores the task: credentials end it, an overlong one waits for a
    # person, card numbers and IBANs, emails and phone numbers are redacted.
    input_guardrails=[SecretsGuardrail(), LengthLimit(4000, on_exceed="escalate"), PiiGuardrail()],
    # Every tool's result, before it is stored and the model reads it.
    tool_result_guardrails=[SecretsGuardrail(on_found="redact"), PiiGuardrail()],
    # The final answer: judged by a model (charged to the run's budget), then redacted.
    output_guardrails=[
        ModelGuardrail("politeness", ScriptedModel(_judge, label="judge"), "Flag rude text."),
        PiiGuardrail(),
    ],
)
