"""Executor worker: consumes tether.tools. Run with `tether worker executor`."""

from __future__ import annotations

from typing import Any

from celery import Task

from tether.errors import ActionInFlightError
from tether.executor import actions as executor
from tether.transport import celery_app
from tether.transport.wire import ToolAction
from tether.worker.task import TASK_OPTIONS, parse, runtime, service_app

app = service_app("executor")


@app.task(name=celery_app.EXECUTE, bind=True, **TASK_OPTIONS)
def execute(self: Task, action: dict[str, Any]) -> None:
    parsed = parse(ToolAction, action, celery_app.EXECUTE, {"action": action})
    if parsed is None:
        return
    try:
        executor.execute(runtime(), parsed)
    except ActionInFlightError as exc:
        # Another delivery holds the action; look again once its lock would have lapsed.
        raise self.retry(countdown=exc.retry_after_s, max_retries=None) from exc
