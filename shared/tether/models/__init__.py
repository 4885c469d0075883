"""Model clients: one per module, all speaking ModelClient."""

from tether.models.base import ModelClient, ModelResponse
from tether.models.fallback import FallbackModel
from tether.models.openai import OpenAIModel
from tether.models.scripted import ScriptedModel, from_turns, text, tool_call

__all__ = [
    "FallbackModel",
    "ModelClient",
    "ModelResponse",
    "OpenAIModel",
    "ScriptedModel",
    "from_turns",
    "text",
    "tool_call",
]
