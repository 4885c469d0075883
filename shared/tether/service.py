"""What every service worker does at start: logging, Sentry, metrics, agents."""

from __future__ import annotations

from typing import Any, TypeVar

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_init
from pydantic import BaseModel, ValidationError

from tether import deadletters
from tether.agents import load_agent_modules
from tether.errors import StaleStateError
from tether.messages import ErrorCategory
from tether.runtime import Runtime, get_runtime
from tether.telemetry import configure, log, serve_metrics

M = TypeVar("M", bound=BaseModel)


class TetherTask(Task):  # type: ignore[misc]
    """Every service task: a message that fails past its retries becomes a dead letter."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        reason = f"{type(exc).__name__}: {exc} (after {self.request.retries} retries)"
        deadletters.record(get_runtime(), self.name, dict(kwargs or {}), reason, _category(exc))
        log.error("dead_letter", task=self.name, task_id=task_id, reason=reason)


def _category(exc: BaseException) -> ErrorCategory:
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return ErrorCategory.timeout
    return ErrorCategory.internal


# Every handler is safe to run twice, so a message whose commit kept losing its
# race is simply run again; past the retries it fails into the dead-letter
# stream. Redis faults are not retried by republishing (that needs the Redis
# that just failed): the client rides them out, and past that the message,
# still unacknowledged, comes back after the visibility timeout.
TASK_OPTIONS: dict[str, Any] = {
    "base": TetherTask,
    "autoretry_for": (StaleStateError,),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 10,
}


def service_app(service: str) -> Celery:
    rt = get_runtime()
    configure(rt.settings, service)

    @worker_init.connect(weak=False)
    def _load_agents(**_: Any) -> None:
        agents = load_agent_modules(rt.settings.agent_modules)
        log.info("worker_ready", service=service, agents=sorted(agents))
        if rt.settings.metrics_port:
            serve_metrics(rt.settings.metrics_port)

    return rt.celery


def runtime() -> Runtime:
    return get_runtime()


def parse(model: type[M], payload: Any, task: str, kwargs: dict[str, Any]) -> M | None:
    """A message as its model, or None after dead-lettering the task's ``kwargs`` whole."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        reason = f"{task} got a malformed {model.__name__}: {exc.errors()[0]['msg']}"
        deadletters.record(get_runtime(), task, kwargs, reason, ErrorCategory.internal)
        log.error("message_rejected", task=task, reason=reason)
        return None
