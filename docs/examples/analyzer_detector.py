"""A personal-data detector backed by an analyzer such as Presidio's (docs/guides/guardrails.md).

from presidio_analyzer import AnalyzerEngine
pii = PiiGuardrail(AnalyzerDetector(AnalyzerEngine()))
"""

from typing import Any, Protocol

from tether.guardrails import PiiSpan


class Analyzer(Protocol):
    """What Presidio's ``AnalyzerEngine`` offers: findings with a type and a span."""

    def analyze(self, text: str, language: str) -> list[Any]: ...


class AnalyzerDetector:
    """A ``PiiDetector``: each finding of the analyzer is a span to redact."""

    def __init__(self, analyzer: Analyzer, language: str = "en") -> None:
        self.analyzer = analyzer
        self.language = language

    def find(self, text: str) -> list[PiiSpan]:
        found = self.analyzer.analyze(text=text, language=self.language)
        return [PiiSpan(r.entity_type.lower(), r.start, r.end) for r in found]
