"""Length limits: text over ``max_chars`` (a JSON value: its JSON text) blocks, or text
is cut to the limit with a note saying so."""

from __future__ import annotations

import json
from typing import Any, Literal

from tether.errors import ConfigError
from tether.guardrails.verdict import GuardContext, GuardrailVerdict


class LengthLimit:
    def __init__(
        self,
        max_chars: int,
        *,
        on_exceed: Literal["block", "truncate", "escalate"] = "block",
        name: str = "length",
    ) -> None:
        if max_chars < 1:
            raise ConfigError(f"LengthLimit max_chars must be at least 1, got {max_chars}")
        self.max_chars = max_chars
        self.on_exceed = on_exceed
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        size = len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        if size <= self.max_chars:
            return GuardrailVerdict.passed()
        said = f"{context.where} is {size} characters, over the {self.max_chars} allowed"
        if self.on_exceed == "truncate" and isinstance(value, str):
            return GuardrailVerdict.rewrite(
                value[: self.max_chars] + f" [truncated: {size} characters]", said
            )
        if self.on_exceed == "escalate":
            return GuardrailVerdict.escalate(f"{said}: approve to let it through")
        return GuardrailVerdict.block(f"{said}; send less")
