"""Model clients: one per module, all speaking ModelClient."""

from typing import TYPE_CHECKING, Any

from tether.models.base import ModelClient, ModelResponse
from tether.models.fallback import FallbackModel
from tether.models.scripted import ScriptedModel, answer, from_turns, text, tool_call

if TYPE_CHECKING:
    from tether.models.openai import OpenAIModel

__all__ = [
    "FallbackModel",
    "ModelClient",
    "ModelResponse",
    "OpenAIModel",
    "ScriptedModel",
    "answer",
    "from_turns",
    "text",
    "tool_call",
]


def __getattr__(name: str) -> Any:
    # The openai package takes a third of a second to import; every CLI command
    # and worker paid it, though only an endpoint-backed agent needs it.
    if name == "OpenAIModel":
        from tether.models.openai import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
