"""Executor worker: consumes tether.tools. Run with `tether worker executor`."""

from __future__ import annotations

from typing import Any

from tether import celery_app, executor
from tether.messages import ToolAction
from tether.service import RETRY_TRANSIENT, parse, runtime, service_app

app = service_app("executor")


@app.task(name=celery_app.EXECUTE, **RETRY_TRANSIENT)
def execute(action: dict[str, Any]) -> None:
    parsed = parse(ToolAction, action, celery_app.EXECUTE)
    if parsed is not None:
        executor.execute(runtime(), parsed)
