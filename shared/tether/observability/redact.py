"""Secrets out of everything Tether writes down: logs, the event log, Sentry reports.

One redactor per process, built from the settings: the model API key's own
value, the shapes API keys and bearer tokens take, and the operator's own
patterns (TETHER_REDACT_PATTERNS). Every writer goes through it, so a secret
pattern added once is honoured everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tether.config import Settings, get_settings

REDACTED = "[redacted]"

# OpenAI-style keys (sk-..., sk-proj-...) and HTTP bearer tokens.
BUILTIN_PATTERNS = (
    r"sk-[A-Za-z0-9_\-]{16,}",
    r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*",
)
# Placeholder key values that are no secret, and would redact ordinary words.
_NOT_SECRET = {"", "unset", "none", "dummy", "test"}


class Redactor:
    """Replaces every secret match in strings, and in the strings nested in data, with
    ``[redacted]``."""

    def __init__(self, literals: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        parts = [re.escape(s) for s in literals if s.lower() not in _NOT_SECRET]
        parts += [*BUILTIN_PATTERNS, *patterns]
        self._regex = re.compile("|".join(f"(?:{p})" for p in parts))

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        return cls(literals=[settings.model_api_key], patterns=settings.redact_patterns)

    def found(self, text: str) -> bool:
        return self._regex.search(text) is not None

    def text(self, text: str) -> str:
        return self._regex.sub(REDACTED, text)

    def value(self, value: Any) -> Any:
        """``value`` with its strings redacted, containers rebuilt only where needed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value


_redactor: Redactor | None = None


def configure(settings: Settings) -> Redactor:
    """Build this process's redactor from ``settings`` (workers call it at start)."""
    global _redactor
    _redactor = Redactor.from_settings(settings)
    return _redactor


def get_redactor() -> Redactor:
    return _redactor if _redactor is not None else configure(get_settings())


def redact(value: Any) -> Any:
    return get_redactor().value(value)
