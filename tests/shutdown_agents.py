"""Agents for tests/faults/test_graceful_shutdown.py: a slow side effect, a slow model.

Both write to the ledger (tests.agents.ledger_path) when they start and when
they finish, so a step or tool cut short or run twice shows up there.
"""

from __future__ import annotations

import os
import time

from tests.agents import ledger_path
from tether import Agent, ScriptedModel, ToolContext, tool
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


def _write(line: str) -> None:
    with ledger_path().open("a") as ledger:
        ledger.write(line + "\n")


@tool(idempotent=False, timeout_s=30)
def settle(ctx: ToolContext, cents: int) -> str:
    """Settle a payment: it must happen exactly once, and takes a while."""
    _write(f"{ctx.run_id} settle started")
    time.sleep(float(os.environ.get("SHUTDOWN_TOOL_S", "3")))
    _write(f"{ctx.run_id} settle done")
    return f"settled {cents}"


def _settle_then_answer(messages: list[ChatMessage]) -> ModelResponse:
    if not any(m.role == "tool" for m in messages):
        return tool_call("settle", {"cents": 700})
    return text("settled")


settler = Agent(
    name="settler",
    instructions="Settle the payment.",
    model=ScriptedModel(_settle_then_answer, label="settler"),
    tools=[settle],
)


@tool
def jot(ctx: ToolContext) -> str:
    """Note that the run got here."""
    _write(f"{ctx.run_id} jot")
    return "jotted"


def _slow_model(messages: list[ChatMessage]) -> ModelResponse:
    # A model call in flight for seconds: the planner is SIGTERMed in the middle of it.
    step = sum(1 for m in messages if m.role == "assistant")
    run = next((m.content for m in messages if m.role == "user"), "")
    _write(f"{run} model started {step}")
    time.sleep(float(os.environ.get("SHUTDOWN_MODEL_S", "3")))
    _write(f"{run} model done {step}")
    return tool_call("jot") if step == 0 else text("jotted")


ponderer = Agent(
    name="ponderer",
    instructions="Think slowly, then jot.",
    model=ScriptedModel(_slow_model, label="ponderer"),
    tools=[jot],
)
