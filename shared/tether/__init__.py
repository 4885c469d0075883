"""Tether: a production runtime for LLM agents."""

from typing import TYPE_CHECKING, Any

from tether.agents import Agent
from tether.client import cancel, decide, submit, wait
from tether.messages import BudgetLimits, TaskEvent, Verdict
from tether.models import ScriptedModel
from tether.state import RunState, RunStatus
from tether.tools import Tool, ToolContext, tool

if TYPE_CHECKING:
    from tether.models.openai import OpenAIModel

__all__ = [
    "Agent",
    "BudgetLimits",
    "OpenAIModel",
    "RunState",
    "RunStatus",
    "ScriptedModel",
    "TaskEvent",
    "Tool",
    "ToolContext",
    "Verdict",
    "cancel",
    "decide",
    "submit",
    "tool",
    "wait",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIModel":  # imported on first use: see tether.models
        from tether.models.openai import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
