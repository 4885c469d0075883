"""Escalation worker: consumes tether.escalations. Run with `tether worker escalation`."""

from __future__ import annotations

from typing import Any

from tether import celery_app, escalations
from tether.messages import Decision, Escalation
from tether.service import TASK_OPTIONS, parse, runtime, service_app

app = service_app("escalation")


@app.task(name=celery_app.ESCALATE, **TASK_OPTIONS)
def open_escalation(escalation: dict[str, Any]) -> None:
    parsed = parse(Escalation, escalation, celery_app.ESCALATE, {"escalation": escalation})
    if parsed is not None:
        escalations.open_escalation(runtime(), parsed)


@app.task(name=celery_app.DECIDE, **TASK_OPTIONS)
def decide(decision: dict[str, Any]) -> None:
    parsed = parse(Decision, decision, celery_app.DECIDE, {"decision": decision})
    if parsed is not None:
        escalations.decide(runtime(), parsed)
