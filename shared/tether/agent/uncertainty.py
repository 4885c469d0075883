"""Escalate instead of guessing: the built-in ask_human tool and the confidence rule.

An agent opts in with ``Agent(ask_human=True)``: the model gets an ``ask_human``
tool, and calling it opens a ``model_uncertain`` escalation whose answer comes
back as the tool's result. ``Agent(confidence_floor=0.6)`` asks the model for its
final answer as structured output, ``{"answer": ..., "confidence": ...}`` (or the
agent's output_type's fields plus ``confidence``: tether.agent.output); an answer
below the floor escalates with the draft instead of finishing the run, and one
that does not match the schema goes back to the model.
"""

from __future__ import annotations

from tether.agent.tools import Tool, tool

ASK_HUMAN = "ask_human"


def _never_runs(question: str, context: str = "") -> str:
    """Ask a human operator a question when the request is ambiguous or you are unsure.

    The run waits for their answer, which comes back as this tool's result. Give
    the question, and in context what you know so far and why you cannot decide.
    """
    # The planner holds every call for a human; the executor never gets one.
    raise RuntimeError("ask_human is answered by a human, never executed")


ask_human_tool: Tool = tool(name=ASK_HUMAN)(_never_runs)

# The schema itself travels in the request's response_format (tether.agent.output); this
# says what the number means, which a schema cannot.
CONFIDENCE_INSTRUCTIONS = (
    "Your final answer is a JSON object in the schema you are given; its confidence is a "
    "number from 0 to 1 saying how sure you are that the answer is right and complete."
)
