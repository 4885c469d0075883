"""What every model client takes and returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from tether.store.state import ChatMessage, ToolCall

# The OpenAI chat completions ``response_format`` field, sent as given.
ResponseFormat = dict[str, Any]


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
    """What the planner calls, and what budgets, prices and traces read off a client."""

    @property
    def name(self) -> str: ...

    @property
    def system(self) -> str:
        """The GenAI semconv's gen_ai.system its spans carry ("openai", "tether.scripted")."""
        ...

    @property
    def billed_models(self) -> Sequence[str]:
        """The models whose prices its calls are billed at: none for a free client.

        Cost budgets are reserved at the dearest of them, and refused where one has no
        price (tether.models.prices), so a client that can fall back names each model.
        """
        ...

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        """One chat completion offering ``tools``; raises ModelError when it cannot.

        ``deadline`` (epoch seconds) bounds retries: none starts after it.
        ``response_format`` (the OpenAI request field, e.g. ``{"type": "json_schema",
        "json_schema": {...}}``) asks for a final answer in that shape; the planner still
        validates what comes back (tether.agent.output).
        """
        ...

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        """An upper bound on the call's tokens, input and output, reserved from the budget beforehand.

        It must never be below what the call then reports: budgets trust it to
        refuse a call that could overspend (see prices.prompt_token_bound, which
        counts with the model's own tokenizer where tether.models.tokens ships it).
        """
        ...
