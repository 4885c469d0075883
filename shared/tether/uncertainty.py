"""Escalate instead of guessing: the built-in ask_human tool and the confidence rule.

An agent opts in with ``Agent(ask_human=True)``: the model gets an ``ask_human``
tool, and calling it opens a ``model_uncertain`` escalation whose answer comes
back as the tool's result. ``Agent(confidence_floor=0.6)`` asks the model to end
its final answer with ``{"answer": ..., "confidence": ...}``; an answer below the
floor, or without a readable confidence, escalates with the draft instead of
finishing the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tether.tools import Tool, tool

ASK_HUMAN = "ask_human"


def _never_runs(question: str, context: str = "") -> str:
    """Ask a human operator a question when the request is ambiguous or you are unsure.

    The run waits for their answer, which comes back as this tool's result. Give
    the question, and in context what you know so far and why you cannot decide.
    """
    # The planner holds every call for a human; the executor never gets one.
    raise RuntimeError("ask_human is answered by a human, never executed")


ask_human_tool: Tool = tool(name=ASK_HUMAN)(_never_runs)

CONFIDENCE_INSTRUCTIONS = (
    "When you give your final answer, reply with only a JSON object "
    '{"answer": "<your answer>", "confidence": <a number from 0 to 1>} where confidence '
    "is how sure you are that the answer is right and complete."
)


@dataclass(frozen=True)
class StatedAnswer:
    """A final answer split into its text and the model's stated confidence (None: none)."""

    answer: str
    confidence: float | None


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and 0.0 <= number <= 1.0 else None


def _trailing_object(text: str) -> tuple[int, dict[str, Any]] | None:
    """The outermost JSON object that ends the text (code fences allowed), and where it starts."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value, end = None, -1
        if isinstance(value, dict) and not text[end:].strip().strip("`").strip():
            return start, value
        start = text.find("{", start + 1)
    return None


def parse_stated(text: str) -> StatedAnswer:
    """Read ``{"answer": ..., "confidence": ...}`` from a final answer, robustly.

    The object may be the whole reply, in a code fence, or end the text after
    prose (then the prose is the answer unless the object has its own). A missing,
    non-numeric or out-of-range confidence is None, which counts as low.
    """
    stripped = text.strip()
    found = _trailing_object(stripped)
    if found is None:
        return StatedAnswer(answer=stripped, confidence=None)
    start, obj = found
    prose = stripped[:start].strip()
    if prose.endswith("```json"):
        prose = prose[: -len("```json")]
    prose = prose.strip().strip("`").strip()
    answer = obj.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        answer = prose or (json.dumps(answer) if answer is not None else stripped)
    return StatedAnswer(answer=answer, confidence=_confidence(obj.get("confidence")))
