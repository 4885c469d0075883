"""Personal data: emails, phone numbers, card numbers (Luhn-checked) and IBANs (mod-97).

Detection is pluggable: anything with ``find(text) -> list[PiiSpan]`` is a
PiiDetector (a wrapper of Presidio's AnalyzerEngine, for one); PatternDetector is
the built-in one. A candidate that fails its checksum is not reported, so an order
or invoice number that merely looks like a card number passes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from tether.guardrails.text import counted, map_strings, strings
from tether.guardrails.verdict import GuardContext, GuardrailVerdict

PiiKind = Literal["email", "phone", "card", "iban"]
OnFound = Literal["redact", "block", "escalate"]


@dataclass(frozen=True)
class PiiSpan:
    """One finding: its kind and where it is in the text (start inclusive, end exclusive)."""

    kind: str
    start: int
    end: int


@runtime_checkable
class PiiDetector(Protocol):
    def find(self, text: str) -> list[PiiSpan]: ...


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers carry one)."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616's check: the IBAN, its first four characters moved to the end and
    its letters read as 10..35, is 1 modulo 97."""
    iban = candidate.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A leading + and 8 to 15 digits, or a North American form with its separators: a bare run
# of digits is an order number as often as a phone number, and is left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)"
)
# 13 to 19 digits, in groups separated by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")


class PatternDetector:
    """Regular expressions with checksums: cards pass Luhn, IBANs pass mod-97."""

    def __init__(self, kinds: Sequence[PiiKind] = ("email", "phone", "card", "iban")) -> None:
        self.kinds = tuple(kinds)

    def find(self, text: str) -> list[PiiSpan]:
        found: list[PiiSpan] = []
        if "iban" in self.kinds:
            found += [_span("iban", m) for m in _IBAN.finditer(text) if iban_valid(m.group())]
        if "card" in self.kinds:
            found += [
                _span("card", m)
                for m in _CARD.finditer(text)
                if luhn_valid(re.sub(r"[ -]", "", m.group()))
            ]
        if "email" in self.kinds:
            found += [_span("email", m) for m in _EMAIL.finditer(text)]
        if "phone" in self.kinds:
            found += [_span("phone", m) for m in _PHONE.finditer(text)]
        return _disjoint(found)


def _span(kind: str, match: re.Match[str]) -> PiiSpan:
    return PiiSpan(kind, match.start(), match.end())


def _disjoint(spans: list[PiiSpan]) -> list[PiiSpan]:
    """The spans in text order, each overlapping an earlier-found one dropped (an IBAN's
    digits are no phone number)."""
    kept: list[PiiSpan] = []
    for span in spans:
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def redact(text: str, spans: Sequence[PiiSpan]) -> str:
    """``text`` with each span replaced by ``[REDACTED <kind>]``."""
    for span in sorted(spans, key=lambda s: s.start, reverse=True):
        text = f"{text[: span.start]}[REDACTED {span.kind}]{text[span.end :]}"
    return text


class PiiGuardrail:
    """Finds personal data in a value's strings; redacts it (default), blocks or escalates."""

    def __init__(
        self,
        detector: PiiDetector | None = None,
        *,
        on_found: OnFound = "redact",
        name: str = "pii",
    ) -> None:
        self.detector = detector or PatternDetector()
        self.on_found = on_found
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def check(self, value: Any, context: GuardContext) -> GuardrailVerdict:
        kinds = [s.kind for text in strings(value) for s in self.detector.find(text)]
        if not kinds:
            return GuardrailVerdict.passed()
        found = counted(kinds)
        if self.on_found == "block":
            return GuardrailVerdict.block(f"personal data in {context.where} ({found})")
        if self.on_found == "escalate":
            return GuardrailVerdict.escalate(
                f"personal data in {context.where} ({found}): approve to let it through as it is"
            )
        rewritten = map_strings(value, lambda text: redact(text, self.detector.find(text)))
        return GuardrailVerdict.rewrite(rewritten, f"redacted {found}")
