"""A model that hands the call to the next one when the current one fails."""

from __future__ import annotations

from typing import Any

from tether.errors import ModelError
from tether.models.base import ModelClient, ModelResponse
from tether.state import ChatMessage


class FallbackModel:
    """Try each model in order; each keeps its own retries, the first answer wins."""

    def __init__(self, primary: ModelClient, *fallbacks: ModelClient) -> None:
        if not fallbacks:
            raise ValueError("FallbackModel needs at least one fallback model")
        self.models = [primary, *fallbacks]

    @property
    def name(self) -> str:
        return "fallback(" + ", ".join(m.name for m in self.models) + ")"

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return max(m.estimate_tokens(messages, tools) for m in self.models)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        failures: list[str] = []
        attempts = 0
        for model in self.models:
            try:
                response = model.complete(messages, tools, deadline=deadline)
            except ModelError as exc:
                failures.append(f"{model.name}: {exc}")
                attempts += exc.attempts
                continue
            return response.model_copy(update={"attempts": attempts + response.attempts})
        raise ModelError("every model failed: " + " | ".join(failures), attempts=attempts)
