"""Prompt-injection markers: text that tries to give the model new orders.

Meant for tool results (a fetched web page, an email, a ticket), where content
written by someone other than the task's sender reaches the model. Markers are
phrases, not proof: escalating (the default) lets a person judge, blocking ends
the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from tether.guardrails.text import strings
from tether.guardrails.verdict import GuardContext, GuardrailVerdict

INJECTION_MARKERS: tuple[str, ...] = (
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+|my\s+)*"
    r"(?:(?:previous|prior|earlier|above|preceding|system|original)\s+)?"
    r"(?:instructions|prompts?|rules|guidelines)\b",
    r"\byou\s+are\s+now\s+(?:a|an|in)\b",
    r"\bnew\s+instructions\s*:",
    r"\b(?:reveal|print|show|repeat)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+)?prompt\b",
    r"\bact\s+as\s+(?:an?\s+)?(?:unrestricted|jailbroken|developer\s+mode)",
    r"<\|im_start\|>|<\|system\|>|\[/?INST\]",
    # Authority claimed from inside the data.
    r"\bsystem\s+(?:notice|override|message)\s*:",
    r"\b(?:no|without)\s+(?:human\s+)?approval\s+(?:is\s+)?(?:needed|required)\b",
    # A forged end of the tool's result and start of another turn.
    r"</?(?:tool_result|tool|assistant|system)>",
)


class InjectionGuardrail:
    def __init__(
        self,
        *,
        on_found: Literal["escalate", "block"] = "escalate",
        markers: Sequence[str] = INJECTION_MARKERS,
        name: str = "prompt_injection",
    ) -> None:
        self.on_found = on_found
        self.markers = [re.compile(m, re.IGNORECASE) for m in markers]
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        hit = next(
            (
                m.group()
                for text in strings(value)
                for p in self.markers
                for m in [p.search(text)]
                if m
            ),
            None,
        )
        if hit is None:
            return GuardrailVerdict.passed()
        reason = f"{context.where} contains a prompt-injection marker ({hit[:60]!r})"
        if self.on_found == "block":
            return GuardrailVerdict.block(f"{reason}; the run was stopped before the model read it")
        return GuardrailVerdict.escalate(
            f"{reason}: approve to let the model read it, reject to end the run"
        )
