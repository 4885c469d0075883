"""An agent for the fairness tests: one tool call that pauses as long as its input says,
then an answer, so that runs stay in flight a known while, on the scripted model."""

from __future__ import annotations

import time

from tether import Agent, ScriptedModel, tool
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


@tool(timeout_s=30)
def pause(seconds: float) -> str:
    """Take ``seconds``, as a call to a slow API would."""
    time.sleep(seconds)
    return "rested"


def paced_script(messages: list[ChatMessage]) -> ModelResponse:
    """Input "pause 0.5": call pause(0.5) once, then answer."""
    if any(m.role == "tool" for m in messages):
        return text("rested")
    goal = next(m.content for m in messages if m.role == "user") or "pause 0"
    return tool_call("pause", {"seconds": float(goal.split()[-1])})


paced = Agent(
    name="paced",
    instructions="Pause as long as asked, then say so.",
    model=ScriptedModel(paced_script, label="paced"),
    tools=[pause],
)
