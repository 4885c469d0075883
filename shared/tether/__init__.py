"""Tether: a production runtime for LLM agents."""

from tether.agents import Agent
from tether.client import cancel, decide, submit, wait
from tether.messages import BudgetLimits, TaskEvent, Verdict
from tether.models import OpenAIModel, ScriptedModel
from tether.state import RunState, RunStatus
from tether.tools import Tool, ToolContext, tool

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
