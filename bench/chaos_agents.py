"""The agent the chaos run drives: a lookup, a payment that must never happen twice, an answer."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from tether import Agent, BudgetLimits, OpenAIModel, ToolContext, tool
from tether.errors import TransientToolError
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


def ledger_path() -> Path:
    return Path(os.environ.get("CHAOS_LEDGER", ".tether/chaos-ledger.txt"))


def chaos_script(messages: list[ChatMessage]) -> ModelResponse:
    """Look the order up, pay it, answer; recovers from any refused turn."""
    results = [m.content or "" for m in messages if m.role == "tool"]
    done = [r for r in results if '"result"' in r or "human_answer" in r]
    order = (messages[1].content or "0").split()[-1]
    if len(done) == 0:
        return tool_call("lookup", {"order": order})
    if len(done) == 1:
        return tool_call("pay", {"order": order, "cents": 1000})
    return text(f"order {order} paid")


@tool
def lookup(order: str) -> str:
    """Look an order up; the service is flaky."""
    if random.random() < float(os.environ.get("CHAOS_TOOL_FAULT_RATE", "0.1")):
        raise TransientToolError("lookup service busy")
    return f"order {order}: 1000 cents due"


@tool(idempotent=False)
def pay(ctx: ToolContext, order: str, cents: int) -> str:
    """Pay an order: the side effect the chaos run counts."""
    # The provider takes a moment before it charges: a worker killed now leaves an
    # attempt with no payment, which the operator may safely approve again.
    time.sleep(float(os.environ.get("CHAOS_PAY_ACCEPT_S", "0.2")))
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.action_id} {order} {cents}\n")
    # The payment provider confirms after a moment: a worker killed now has
    # made the payment but not recorded it, the case unsafe_retry exists for.
    time.sleep(float(os.environ.get("CHAOS_PAY_CONFIRM_S", "0.2")))
    return f"paid {cents} for {order}"


chaos = Agent(
    name="chaos",
    instructions="Look the order up, pay it, then say so.",
    model=OpenAIModel(
        "gpt-4o-mini",
        base_url=os.environ.get("CHAOS_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=1.0,
        max_attempts=4,
    ),
    tools=[lookup, pay],
    budget=BudgetLimits(max_steps=12, max_tool_calls=12),
    max_invalid_calls=3,
)
