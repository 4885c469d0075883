"""What every model client takes and returns."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from tether.state import ChatMessage, ToolCall


class ModelResponse(BaseModel):
    """One completion: either tool calls, or text, or (malformed) neither."""

    model_config = ConfigDict(frozen=True)

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 1

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@runtime_checkable
class ModelClient(Protocol):
    """What the planner calls. A client may also name its ``system``, the GenAI
    semconv's gen_ai.system its spans carry (model_system)."""

    @property
    def name(self) -> str: ...

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        """One chat completion offering ``tools``; raises ModelError when it cannot.

        ``deadline`` (epoch seconds) bounds retries: none starts after it.
        """
        ...

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        """An upper bound on the call's tokens, input and output, reserved from the budget beforehand.

        It must never be below what the call then reports: budgets trust it to
        refuse a call that could overspend (see prices.prompt_token_bound).
        A client may also list ``billed_models``, the models whose prices its
        calls are billed at (none for a free one); otherwise its name is.
        """
        ...


def model_system(model: ModelClient) -> str:
    """The GenAI system a client speaks (its ``system`` attribute; else its class, lowercased)."""
    return str(getattr(model, "system", type(model).__name__.lower()))
