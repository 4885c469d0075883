"""Agents for the observability tests: one succeeds, one fails, one runs out of budget,
one waits for a human. All on the scripted model.

The failing one's model error quotes the API key, as a careless endpoint or
client might, so the tests can check that it is redacted wherever it lands.

``obs_ok`` is version ``OBS_OK_VERSION`` (default v1) and calls its tool
``1 + OBS_OK_EXTRA_STEPS`` times before it answers, so a test can restart the
planner as a second version that takes more steps.
"""

from __future__ import annotations

import os

from tether import Agent, BudgetLimits, ScriptedModel, tool
from tether.errors import ModelPermanentError
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage

# Shaped like no built-in pattern: only TETHER_MODEL_API_KEY's own value redacts it.
API_KEY = "tether-obs-key-5f1c9a7e2b"


@tool
def obs_add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(idempotent=False, requires_approval=True)
def obs_transfer(account: str, cents: int) -> str:
    """Move money; a human approves it first."""
    return f"moved {cents} to {account}"


def _refused(messages: list[ChatMessage]) -> ModelResponse:
    raise ModelPermanentError(
        f"401 Unauthorized: invalid api key {API_KEY} (Authorization: Bearer {API_KEY})",
        status=401,
    )


OK_VERSION = os.environ.get("OBS_OK_VERSION", "v1")
OK_EXTRA_STEPS = int(os.environ.get("OBS_OK_EXTRA_STEPS", "0"))

obs_ok = Agent(
    name="obs_ok",
    instructions="Add numbers with the tool.",
    model=ScriptedModel(
        [tool_call("obs_add", {"a": 2, "b": 3})] * (1 + OK_EXTRA_STEPS) + [text("2 + 3 = 5")],
        label="obs_ok",
    ),
    tools=[obs_add],
    version=OK_VERSION,
)

obs_failing = Agent(
    name="obs_failing",
    instructions="Try the endpoint.",
    model=ScriptedModel(_refused, label="obs_failing"),
    tools=[obs_add],
    version="v1",
)

obs_looper = Agent(
    name="obs_looper",
    instructions="Keep adding.",
    model=ScriptedModel(
        lambda messages: tool_call("obs_add", {"a": len(messages), "b": 1}), label="obs_looper"
    ),
    tools=[obs_add],
    budget=BudgetLimits(max_steps=1),
    version="v1",
)

obs_approver = Agent(
    name="obs_approver",
    instructions="Transfer what is asked, with approval.",
    model=ScriptedModel(
        [tool_call("obs_transfer", {"account": "acme", "cents": 700}), text("moved")],
        label="obs_approver",
    ),
    tools=[obs_transfer],
    version="v1",
)
