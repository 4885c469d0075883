"""Running a place's guardrails in order over one value.

Each guardrail sees the value as the ones before it left it: a rewrite replaces
it, a block or an escalate stops the rest. A guardrail that raises blocks: a
check that could not be made is not a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.guardrails.verdict import (
    GuardContext,
    Guardrail,
    GuardrailFinding,
    GuardrailOutcome,
    GuardrailVerdict,
)
from tether.transport.wire import EventKind, RunEvent

STOPS = (GuardrailOutcome.block, GuardrailOutcome.escalate)


@dataclass
class Screened:
    """A value after its guardrails: as rewritten, each one's finding, and what stopped it."""

    value: Any
    findings: list[GuardrailFinding] = field(default_factory=list)

    @property
    def stop(self) -> GuardrailFinding | None:
        """The block or escalate that stopped the value; None: it goes on (maybe rewritten)."""
        last = self.findings[-1] if self.findings else None
        return last if last is not None and last.outcome in STOPS else None

    @property
    def notable(self) -> list[GuardrailFinding]:
        """The findings other than passes: what the run's state keeps for its stats."""
        return [f for f in self.findings if f.outcome != GuardrailOutcome.passed]


def screen(guardrails: Sequence[Guardrail], value: Any, context: GuardContext) -> Screened:
    """Run ``guardrails`` over ``value`` in order."""
    screened = Screened(value=value)
    for guardrail in guardrails:
        try:
            verdict = guardrail.check(screened.value, context)
        except Exception as exc:
            verdict = GuardrailVerdict.block(
                f"guardrail {guardrail.name!r} failed ({type(exc).__name__}: {exc}), so what it "
                "guards was stopped; fix the guardrail or its dependency"
            )
        if verdict.outcome == GuardrailOutcome.rewrite:
            screened.value = verdict.rewritten
        screened.findings.append(
            GuardrailFinding(
                place=context.place,
                guardrail=guardrail.name,
                outcome=verdict.outcome,
                reason=verdict.reason,
                tool=context.tool,
                tool_call_id=context.tool_call_id,
            )
        )
        if verdict.outcome in STOPS:
            break
    return screened


def log_entries(run_id: str, step: int, findings: Sequence[GuardrailFinding]) -> list[RunEvent]:
    """One ``guardrail`` event-log entry per finding: never the content judged."""
    return [
        RunEvent(
            run_id=run_id,
            kind=EventKind.guardrail,
            step=step,
            data=finding.model_dump(mode="json", exclude_none=True),
        )
        for finding in findings
    ]
