"""Planner worker: consumes tether.plan. Run with `tether worker planner`."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready

from tether import planner
from tether.transport import celery_app
from tether.transport.wire import Decision, Escalation, Observation
from tether.worker.task import TASK_OPTIONS, TetherTask, parse, runtime, service_app

app = service_app("planner")


class StartTask(TetherTask):
    """A start that will not run again leaves its event recorded as rejected (invariant 1)."""

    def gave_up(self, kwargs: dict[str, Any], reason: str) -> None:
        if "event" in kwargs:
            planner.intake.record_unstarted(runtime(), kwargs["event"], reason)


@worker_ready.connect(weak=False)
def _reconcile(**_: Any) -> None:
    planner.Reconciler(runtime()).start()


@app.task(name=celery_app.START, **{**TASK_OPTIONS, "base": StartTask})
def start(event: Any) -> None:
    planner.start(runtime(), event)


@app.task(name=celery_app.STEP, **TASK_OPTIONS)
def step(run_id: str, step: int) -> None:
    planner.plan(runtime(), run_id, step)


@app.task(name=celery_app.OBSERVE, **TASK_OPTIONS)
def observe(observation: dict[str, Any]) -> None:
    parsed = parse(Observation, observation, celery_app.OBSERVE, {"observation": observation})
    if parsed is not None:
        planner.observe(runtime(), parsed)


@app.task(name=celery_app.RESUME, **TASK_OPTIONS)
def resume(escalation: dict[str, Any], decision: dict[str, Any]) -> None:
    kwargs = {"escalation": escalation, "decision": decision}
    parsed_escalation = parse(Escalation, escalation, celery_app.RESUME, kwargs)
    parsed_decision = parse(Decision, decision, celery_app.RESUME, kwargs)
    if parsed_escalation is not None and parsed_decision is not None:
        planner.resume(runtime(), parsed_escalation, parsed_decision)
