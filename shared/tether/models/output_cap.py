"""The cap on an answer's tokens that every request carries, and what it lets a call be
estimated at before it is made."""

from __future__ import annotations

from typing import Any

from tether.config import get_settings
from tether.models.prices import prompt_token_bound
from tether.store.state import ChatMessage


class OutputCapped:
    """A client that caps every answer at ``max_output_tokens`` (the one it was given,
    else TETHER_MODEL_MAX_OUTPUT_TOKENS), so a call costs at most its prompt's bound plus
    that cap."""

    _max_output_tokens: int | None = None

    @property
    def max_output_tokens(self) -> int:
        # Read when used, not when agent modules are imported, so the setting is current.
        if self._max_output_tokens is not None:
            return self._max_output_tokens
        return get_settings().model_max_output_tokens

    @property
    def tokenizer_model(self) -> str | None:
        """The model whose tokenizer bounds its prompts (tether.models.tokens); None: one
        token per UTF-8 byte, which holds whatever the tokenizer."""
        return None

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        # The output half is real because every request caps the answer at it.
        prompt = prompt_token_bound(messages, tools, self.tokenizer_model)
        return prompt + self.max_output_tokens
