"""Agents the integration tests run on real workers, all on the scripted model.

Side effects go to a ledger file the tests read, so a doubled side effect
shows up as a doubled line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel, ToolContext, tool
from tether.models import text, tool_call


def ledger_path() -> Path:
    return Path(os.environ.get("LEDGER_DIR", ".tether")) / "ledger.txt"


def read_ledger() -> list[str]:
    path = ledger_path()
    return path.read_text().splitlines() if path.exists() else []


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(idempotent=False, requires_approval=True)
def record_payment(ctx: ToolContext, account: str, cents: int) -> str:
    """Pay an account; a side effect that must never happen twice."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} {account} {cents}\n")
    return f"paid {cents} to {account}"


@tool(timeout_s=30)
def slow_lookup(seconds: float) -> str:
    """Wait a while, as a slow external API would."""
    time.sleep(seconds)
    return "done"


CALCULATOR_TURNS = [tool_call("add", {"a": 2, "b": 3}), text("2 + 3 = 5")]

calculator = Agent(
    name="calculator",
    instructions="Add numbers with the add tool.",
    model=ScriptedModel(CALCULATOR_TURNS, label="calculator"),
    tools=[add],
)

remote_calculator = Agent(
    name="remote_calculator",
    instructions="Add numbers with the add tool.",
    # The tests serve CALCULATOR_TURNS from a local OpenAI-compatible server.
    model=OpenAIModel(
        "gpt-4o-mini",
        base_url=os.environ.get("FAKE_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=10,
        max_attempts=2,
    ),
    tools=[add],
)

self_correcting = Agent(
    name="self_correcting",
    instructions="Add numbers with the add tool.",
    model=ScriptedModel(
        [
            tool_call("add", '{"a": "two", "b": 3'),
            tool_call("add", {"a": "two", "b": 3}),
            tool_call("multiply", {"a": 2, "b": 3}),
            tool_call("add", {"a": 2, "b": 3}),
            text("2 + 3 = 5"),
        ],
        label="self_correcting",
    ),
    tools=[add],
)

payer = Agent(
    name="payer",
    instructions="Pay what the user asks, with approval.",
    model=ScriptedModel(
        [
            tool_call("record_payment", {"account": "acme", "cents": 500}),
            text("paid acme 500 cents"),
        ],
        label="payer",
    ),
    tools=[record_payment],
)

looper = Agent(
    name="looper",
    instructions="Keep adding.",
    model=ScriptedModel(
        lambda messages: tool_call("add", {"a": len(messages), "b": 1}), label="looper"
    ),
    tools=[add],
    budget=BudgetLimits(max_steps=50, max_tool_calls=50),
)

sleeper = Agent(
    name="sleeper",
    instructions="Wait for the slow API.",
    model=ScriptedModel(
        [tool_call("slow_lookup", {"seconds": 3}), text("finished waiting")], label="sleeper"
    ),
    tools=[slow_lookup],
)
