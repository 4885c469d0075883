"""A model client in front of another, as evaluations put one (replay, a gullible model)."""

from __future__ import annotations

from typing import Any

from tether.models.base import ModelClient
from tether.store.state import ChatMessage


class WrappedModel:
    """Named, billed and estimated as ``inner``, so budgets reserve what ``inner`` would.

    A subclass answers (``complete``), in its own way or by asking ``inner``.
    """

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.billed_models = inner.billed_models
        self.system = inner.system

    @property
    def name(self) -> str:
        return self.inner.name

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return self.inner.estimate_tokens(messages, tools)
