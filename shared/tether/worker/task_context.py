"""What each task carries into its logs and error reports, and how long it waited.

At the start of every task a service runs, the run, step, action and agent it
is about are read from its message and bound to the log context (structlog
contextvars: per thread, and per greenlet under gevent), so every log line and
Sentry report of the task names them; they are cleared when it ends. The
task's wait in its queue is observed at the same moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from celery import Task
from celery.signals import task_postrun, task_prerun

from tether.observability import metrics
from tether.store.state import RunState
from tether.transport.celery_app import QUEUE_OF
from tether.transport.reliable import deliveries

CONTEXT_KEYS = ("run_id", "step", "action_id", "agent", "escalation_id", "event_id")


def describe(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The identifiers a task's keyword arguments name, whichever message they hold.

    Tasks take either plain ids (``run_id``, ``step``) or one or two message
    dicts (an action, observation, escalation, decision or event); a message's
    own ``action`` (an escalation's held tool call) fills in what it lacks.
    """
    found: dict[str, Any] = {}
    sources: list[Mapping[str, Any]] = [kwargs]
    for value in kwargs.values():
        if isinstance(value, Mapping):
            sources.append(value)
            if isinstance(value.get("action"), Mapping):
                sources.append(value["action"])
    for source in sources:
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if key not in found and isinstance(value, str | int) and not isinstance(value, bool):
                found[key] = value
    return found


_service: str | None = None


def begin(task: Task, kwargs: Mapping[str, Any] | None) -> None:
    # The service too: a gevent greenlet starts with an empty context, not the process's.
    service = {"service": _service} if _service else {}
    structlog.contextvars.bind_contextvars(task=task.name, **service, **describe(kwargs or {}))
    request = task.request.__dict__
    queue = QUEUE_OF.get(task.name)
    if queue is not None and deliveries(request) == 1 and not task.request.retries:
        # A redelivery or a retry waited for a death or a countdown, not for a worker.
        metrics.queue_wait(queue, request)


def end() -> None:
    structlog.contextvars.unbind_contextvars(
        "task", "agent_version", "error_category", *CONTEXT_KEYS
    )


def install(service: str) -> None:
    """Connect to Celery's task signals (once per process; later calls do nothing)."""
    global _service
    _service = service
    task_prerun.connect(_prerun, weak=False, dispatch_uid="tether.worker.task_context.prerun")
    task_postrun.connect(_postrun, weak=False, dispatch_uid="tether.worker.task_context.postrun")


def _prerun(task: Task, kwargs: Mapping[str, Any] | None = None, **_: Any) -> None:
    begin(task, kwargs)


def _postrun(**_: Any) -> None:
    end()


def bind_run(state: RunState) -> None:
    """Name the run, step, agent and version in the log context once the state is loaded
    (a task given an event or a bare run id knows them only then)."""
    structlog.contextvars.bind_contextvars(
        run_id=state.run_id, step=state.step, agent=state.agent, agent_version=state.agent_version
    )


def current_run_id() -> str | None:
    """The run the current task is about, once bound (bind_run, or a message naming it).

    Lets code that is handed no run, such as a model client, find per-run data:
    the evaluation harness reads a scenario's scripted turns by it.
    """
    run_id = structlog.contextvars.get_contextvars().get("run_id")
    return run_id if isinstance(run_id, str) else None
