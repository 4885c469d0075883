"""Guardrails: checks of what goes into a run and what comes out of it.

A guardrail (verdict.py) looks at one value at one place (the task's input, a tool
call's arguments, a tool's result, the final answer) and passes it, blocks the run
(it ends rejected), escalates it to a person (EscalationKind.guardrail) or rewrites
it. runner.py runs a place's guardrails in order. Built in: personal data (pii.py),
credentials (secrets.py), prompt-injection markers (injection.py), length limits
(length.py) and a model's judgement, paid from the run's budget (model_check.py,
charge.py). The planner and the executor call them (tether.planner.guarding,
tether.executor.calls); this package imports neither.
"""

from tether.guardrails.injection import InjectionGuardrail
from tether.guardrails.length import LengthLimit
from tether.guardrails.model_check import ModelGuardrail
from tether.guardrails.pii import PatternDetector, PiiDetector, PiiGuardrail, PiiSpan
from tether.guardrails.secrets import SecretsGuardrail
from tether.guardrails.verdict import (
    GuardContext,
    Guardrail,
    GuardrailFinding,
    GuardrailOutcome,
    GuardrailPlace,
    GuardrailVerdict,
)

__all__ = [
    "GuardContext",
    "Guardrail",
    "GuardrailFinding",
    "GuardrailOutcome",
    "GuardrailPlace",
    "GuardrailVerdict",
    "InjectionGuardrail",
    "LengthLimit",
    "ModelGuardrail",
    "PatternDetector",
    "PiiDetector",
    "PiiGuardrail",
    "PiiSpan",
    "SecretsGuardrail",
]
