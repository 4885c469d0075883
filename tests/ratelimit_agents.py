"""An agent whose one tool is limited to a few calls a second across every executor; each
call writes when it ran to RATE_TOOL_LOG, which the test reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tether.agent.definition import Agent
from tether.agent.tools import tool
from tether.models.scripted import ScriptedModel, text, tool_call

TOOL_PER_S = 4.0


@tool(rate_limit_per_s=TOOL_PER_S)
def lookup(key: str) -> str:
    """Look a key up in a downstream API that allows a few calls a second."""
    with Path(os.environ["RATE_TOOL_LOG"]).open("a") as calls:
        calls.write(f"{time.time()}\n")
    return key.upper()


tool_limited = Agent(
    name="tool_limited",
    instructions="Look the key up.",
    model=ScriptedModel([tool_call("lookup", {"key": "abc"}), text("ABC")], label="tool_limited"),
    tools=[lookup],
)
