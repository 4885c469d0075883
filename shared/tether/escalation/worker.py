"""Escalation worker: consumes tether.escalations. Run with `tether worker escalation`."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from tether.escalation import operators, records
from tether.escalation.webhooks import Notifier
from tether.transport import celery_app
from tether.transport.wire import Decision, Escalation
from tether.worker.task import TASK_OPTIONS, parse, runtime, service_app

app = service_app("escalation")
operators.check(runtime().settings)
_notifier: list[Notifier] = []


@worker_ready.connect(weak=False)
def _start_notifier(**_: Any) -> None:
    """Deliver escalation notifications to the webhooks (TETHER_WEBHOOK_URLS), if any."""
    rt = runtime()
    if rt.settings.webhooks and not _notifier:
        _notifier.append(Notifier(rt.store.client, rt.settings).start())


@worker_shutdown.connect(weak=False)
def _stop_notifier(**_: Any) -> None:
    for notifier in _notifier:
        notifier.stop()


@app.task(name=celery_app.ESCALATE, **TASK_OPTIONS)
def open_escalation(escalation: dict[str, Any]) -> None:
    parsed = parse(Escalation, escalation, celery_app.ESCALATE, {"escalation": escalation})
    if parsed is not None:
        records.open_escalation(runtime(), parsed)


@app.task(name=celery_app.DECIDE, **TASK_OPTIONS)
def decide(decision: dict[str, Any]) -> None:
    parsed = parse(Decision, decision, celery_app.DECIDE, {"decision": decision})
    if parsed is not None:
        records.decide(runtime(), parsed)
