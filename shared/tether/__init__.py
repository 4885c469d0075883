"""Tether: a production runtime for LLM agents."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.agent.definition import Agent
    from tether.agent.tools import Tool, ToolContext, tool
    from tether.client import cancel, decide, result, submit, wait
    from tether.models import ScriptedModel
    from tether.models.openai import OpenAIModel
    from tether.store.state import RunState, RunStatus
    from tether.transport.wire import BudgetLimits, TaskEvent, Verdict

# Imported on first use: `tether --help` and a worker that needs one part import
# only that part (the CLI's help must not wait on the whole runtime).
_HOME = {
    "Agent": "tether.agent.definition",
    "Tool": "tether.agent.tools",
    "ToolContext": "tether.agent.tools",
    "tool": "tether.agent.tools",
    "cancel": "tether.client",
    "decide": "tether.client",
    "result": "tether.client",
    "submit": "tether.client",
    "wait": "tether.client",
    "ScriptedModel": "tether.models",
    "OpenAIModel": "tether.models.openai",
    "RunState": "tether.store.state",
    "RunStatus": "tether.store.state",
    "BudgetLimits": "tether.transport.wire",
    "TaskEvent": "tether.transport.wire",
    "Verdict": "tether.transport.wire",
}

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
    "result",
    "submit",
    "tool",
    "wait",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
