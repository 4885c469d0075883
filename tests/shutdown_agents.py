"""Agents for tests/faults/test_graceful_shutdown.py: a slow side effect, a slow model.

Both write to the ledger (tests.agents.ledger_path) when they start and when
they finish, so a step or tool cut short or run twice shows up there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.agents import ledger_path
from tether import Agent, ScriptedModel, ToolContext, tool
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


def _write(line: str) -> None:
    with ledger_path().open("a") as ledger:
        ledger.write(line + "\n")


def _until_released(name: str) -> None:
    """Work until the test opens the gate ``name`` (a file in SHUTDOWN_GATES), at most
    25 s: the test decides when the work in a worker's hands is done, not a fixed time a
    loaded machine may spend before the test has looked."""
    gate = Path(os.environ["SHUTDOWN_GATES"]) / name
    deadline = time.monotonic() + 25
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@tool(idempotent=False, timeout_s=30)
def settle(ctx: ToolContext, cents: int) -> str:
    """Settle a payment: it must happen exactly once, and takes a while."""
    _write(f"{ctx.run_id} settle started")
    _until_released(ctx.run_id)
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
    _until_released(run or "")
    _write(f"{run} model done {step}")
    return tool_call("jot") if step == 0 else text("jotted")


ponderer = Agent(
    name="ponderer",
    instructions="Think slowly, then jot.",
    model=ScriptedModel(_slow_model, label="ponderer"),
    tools=[jot],
)
