"""What every service worker does at start: logging, Sentry, metrics, agents."""

from __future__ import annotations

from typing import Any, TypeVar

from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_init, worker_shutting_down
from pydantic import BaseModel, ValidationError

from tether.agent.definition import load_agent_modules
from tether.errors import StaleStateError, validation_problems
from tether.observability import metrics, tracing
from tether.observability.logs import configure, log
from tether.runtime import Runtime, get_runtime
from tether.store.connection import connect
from tether.transport.reliable import deliveries, stop_consuming
from tether.transport.wire import ErrorCategory
from tether.worker import deadletters, gevent_poll, readiness, task_context, time_limits

M = TypeVar("M", bound=BaseModel)


class TetherTask(Task):  # type: ignore[misc]
    """Every service task: capped deliveries, and a dead letter for what will not run again."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        delivered = deliveries(self.request.__dict__)
        cap = get_runtime().settings.max_deliveries
        if delivered > cap:
            # Each delivery past the first means its worker died or its hard time
            # limit killed it mid-way: running it again would only do that again.
            reason = (
                f"delivered {delivered} times, over TETHER_MAX_DELIVERIES ({cap}): each time "
                "its worker died or its hard time limit (TETHER_TASK_TIME_LIMIT_S) stopped it; "
                "fix the cause, then `tether dead replay` it"
            )
            if deadletters.record(
                get_runtime(), self.name, kwargs, reason, ErrorCategory.internal, self.request.id
            ):
                log.error("dead_letter", task=self.name, task_id=self.request.id, reason=reason)
            self.gave_up(kwargs, reason)
            return None
        result = super().__call__(*args, **kwargs)
        # The messages it published are held writes (tether.transport.held_publish): they leave
        # before the task counts as done, and a failure to send them fails the task.
        get_runtime().store.flush()
        return result

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded | WorkerLostError):
            # Celery puts the message back on its queue (one more delivery): it is
            # still live, so it is no dead letter unless it reaches the delivery cap.
            log.warning("message_requeued", task=self.name, task_id=task_id, reason=repr(exc))
            return
        reason = f"{type(exc).__name__}: {exc} (after {self.request.retries} retries)"
        deadletters.record(
            get_runtime(), self.name, dict(kwargs or {}), reason, _category(exc), task_id
        )
        log.error("dead_letter", task=self.name, task_id=task_id, reason=reason)
        self.gave_up(dict(kwargs or {}), reason)

    def gave_up(self, kwargs: dict[str, Any], reason: str) -> None:
        """Its message is a dead letter and runs no more: what else must be recorded of it."""


def _category(exc: BaseException) -> ErrorCategory:
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return ErrorCategory.timeout
    return ErrorCategory.internal


# Every handler is safe to run twice, so a message whose commit kept losing its
# race, or that ran past its soft time limit (a stalled or paused worker's clock
# runs on), is simply run again; past the retries it fails into the dead-letter
# stream. Redis faults are not retried by republishing (that needs the Redis
# that just failed): the client rides them out, and past that the message,
# still unacknowledged, comes back after the visibility timeout.
TASK_OPTIONS: dict[str, Any] = {
    "base": TetherTask,
    "autoretry_for": (StaleStateError, SoftTimeLimitExceeded),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 10,
}


def service_app(service: str) -> Celery:
    rt = get_runtime()
    configure(rt.settings, service)
    tracing.setup(rt.settings, service)
    task_context.install(service)
    time_limits.enforce_soft_time_limit_under_gevent()
    gevent_poll.install_at_worker_init()

    @worker_init.connect(weak=False)
    def _load_agents(**_: Any) -> None:
        agents = load_agent_modules(rt.settings.agent_modules)
        log.info("worker_ready", service=service, agents=sorted(agents))
        port = rt.settings.metrics_port
        if port:
            # Figures read from Redis are served by one service, or they would be summed.
            # Clients of their own, made before the pool forks: not the store's.
            settings = rt.settings
            serves = service == "escalation"
            metrics.serve(
                port,
                redis_state=connect(settings.redis_url, settings.redis_cluster) if serves else None,
                broker=connect(settings.broker_url) if serves and settings.broker_url else None,
                readiness=readiness.Readiness(service, settings).problems,
            )

    @worker_shutting_down.connect(weak=False)
    def _stop_consuming(**_: Any) -> None:
        # Sent from the SIGTERM handler: Celery then finishes the tasks it runs,
        # but would go on taking messages meanwhile and hold them unstarted.
        stop_consuming()

    return rt.celery


def runtime() -> Runtime:
    return get_runtime()


def parse(model: type[M], payload: Any, task: str, kwargs: dict[str, Any]) -> M | None:
    """A message as its model, or None after dead-lettering the task's ``kwargs`` whole."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = validation_problems(exc, whole="(message)")
        reason = f"{task} got a malformed {model.__name__}: {problems}"
        deadletters.record(get_runtime(), task, kwargs, reason, ErrorCategory.internal)
        log.error("message_rejected", task=task, reason=reason)
        return None
