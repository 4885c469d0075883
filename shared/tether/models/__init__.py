"""Model clients: one per module, all speaking ModelClient."""

from tether.models.base import ModelClient, ModelResponse
from tether.models.openai import OpenAIModel
from tether.models.scripted import ScriptedModel, text, tool_call

__all__ = ["ModelClient", "ModelResponse", "OpenAIModel", "ScriptedModel", "text", "tool_call"]
