"""Credentials: cloud keys, API tokens, private key blocks, bearer tokens.

A secret in a run's input, a tool's arguments or result, or its answer would be
stored in Redis, shown to the model and logged; by default it blocks the run,
or it is redacted (``on_found="redact"``) or held for a person.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from tether.guardrails.text import counted, map_strings, strings
from tether.guardrails.verdict import GuardContext, GuardrailVerdict

SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "aws_access_key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "openai_key": re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"),
    "github_token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "slack_token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "private_key": re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
        re.DOTALL,
    ),
    "bearer_token": re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}=*", re.IGNORECASE),
}


def find_secrets(text: str) -> list[str]:
    """The kinds of secret in ``text``, one entry per occurrence."""
    return [kind for kind, pattern in SECRET_PATTERNS.items() for _ in pattern.finditer(text)]


def redact_secrets(text: str) -> str:
    for kind, pattern in SECRET_PATTERNS.items():
        text = pattern.sub(f"[REDACTED {kind}]", text)
    return text


class SecretsGuardrail:
    def __init__(
        self,
        *,
        on_found: Literal["block", "redact", "escalate"] = "block",
        name: str = "secrets",
    ) -> None:
        self.on_found = on_found
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        kinds = [kind for text in strings(value) for kind in find_secrets(text)]
        if not kinds:
            return GuardrailVerdict.passed()
        found = counted(kinds)
        if self.on_found == "redact":
            return GuardrailVerdict.rewrite(map_strings(value, redact_secrets), f"redacted {found}")
        if self.on_found == "escalate":
            return GuardrailVerdict.escalate(
                f"a credential in {context.where} ({found}): approve to let it through as it is"
            )
        return GuardrailVerdict.block(
            f"a credential in {context.where} ({found}); credentials must not reach the model or "
            "the run's records: rotate it, and send the task without it"
        )
