"""The per-process handles every service uses: settings, Redis, the run store, Celery."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from celery import Celery
from celery.signals import task_postrun, task_prerun

from tether.config import Settings, get_settings
from tether.errors import TetherError
from tether.observability import tracing
from tether.observability.metrics import PUBLISHED_AT_HEADER
from tether.store.connection import connect
from tether.store.runs import RunStore
from tether.transport import celery_app, held_publish
from tether.transport.wire import Decision, Escalation, Observation, TaskEvent, ToolAction


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def store(self) -> RunStore:
        store = RunStore(
            connect(self.settings.redis_url, self.settings.redis_cluster),
            run_ttl_s=self.settings.run_ttl_s,
        )
        _stores.add(store)
        return store

    @cached_property
    def broker(self) -> redis.Redis:
        """The broker's Redis (its queues): the run store's, unless TETHER_BROKER_URL is set."""
        if self.settings.broker_url is None:
            return self.store.client
        return connect(self.settings.broker_url)

    @cached_property
    def celery(self) -> Celery:
        return celery_app.create_app(self.settings)

    @cached_property
    def broker_is_store(self) -> bool:
        """Whether the broker's queues live in the run store's Redis (no TETHER_BROKER_URL)."""
        return self.settings.broker_url is None and not self.settings.redis_cluster

    def _send(self, task: str, shown: str, *, trace_run: str | None = None, **kwargs: Any) -> None:
        """Publish ``task``; ``trace_run`` names its run where ``kwargs`` do not (tether.observability.tracing)."""
        queue = celery_app.QUEUE_OF[task]
        # ``shown`` is what task events, Flower and worker logs show instead of the
        # payload: shorter to render per message, and no tool arguments in them.
        # The publish time, for the queue-wait histogram and the age of a queue's oldest message.
        # Published in its run's trace context, whoever publishes it (a client, the reconciler).
        with tracing.publishing(trace_run or tracing.message_run_id(task, kwargs)) as traced:
            options: dict[str, Any] = {
                "kwargs": kwargs,
                "kwargsrepr": shown,
                "headers": {PUBLISHED_AT_HEADER: time.time(), **traced},
                # The anonymous exchange needs no declaring (celery_app.direct_route).
                "declare": [],
                **celery_app.direct_route(queue),
            }
            captured = held_publish.captured()
            if captured is not None and not self.broker_is_store:
                raise TetherError(
                    f"{task} was published for a commit to send, but the broker is not the "
                    "run store's Redis; publish it after the commit instead"
                )
            if self.broker_is_store and (captured is not None or self.store.batch.holding):
                # Inside a task, the message goes out with the task's held writes; inside
                # a commit's capture, with the commit (tether.transport.held_publish).
                with (
                    self.celery.producer_or_acquire() as producer,
                    held_publish.publishing_into(captured or self.store.batch),
                    producer.batch(),
                ):
                    self.celery.send_task(task, producer=producer, **options)
                return
            # What the message's consumer may read (the log, settled budgets) goes out first.
            self.store.flush()
            self.celery.send_task(task, **options)

    def publish_event(self, event: TaskEvent) -> None:
        self._send(
            celery_app.START,
            f"event_id={event.event_id} agent={event.agent}",
            event=event.model_dump(mode="json"),
        )

    def send_step(self, run_id: str, step: int) -> None:
        self._send(celery_app.STEP, f"run_id={run_id} step={step}", run_id=run_id, step=step)

    def send_action(self, action: ToolAction) -> None:
        self._send(
            celery_app.EXECUTE,
            f"action_id={action.action_id} tool={action.tool}",
            action=action.model_dump(mode="json"),
        )

    def send_observation(self, observation: Observation) -> None:
        self._send(
            celery_app.OBSERVE,
            f"action_id={observation.action_id} tool={observation.tool} ok={observation.ok}",
            observation=observation.model_dump(mode="json"),
        )

    def send_escalation(self, escalation: Escalation) -> None:
        self._send(
            celery_app.ESCALATE,
            f"escalation_id={escalation.escalation_id} kind={escalation.kind}",
            escalation=escalation.model_dump(mode="json"),
        )

    def send_decision(self, decision: Decision, run_id: str | None = None) -> None:
        self._send(
            celery_app.DECIDE,
            f"escalation_id={decision.escalation_id} verdict={decision.verdict}",
            trace_run=run_id,
            decision=decision.model_dump(mode="json"),
        )

    def send_resume(self, escalation: Escalation, decision: Decision) -> None:
        self._send(
            celery_app.RESUME,
            f"escalation_id={escalation.escalation_id} verdict={decision.verdict}",
            escalation=escalation.model_dump(mode="json"),
            decision=decision.model_dump(mode="json"),
        )


# A store knows where a task begins and ends (RunStore.begin_task): inside one
# it holds back log appends, settlements and published messages until its next
# round trip, and sends whatever is still held when the task ends (a failed task:
# one that returned has sent them already, TetherTask).
_stores: weakref.WeakSet[RunStore] = weakref.WeakSet()


@task_prerun.connect(weak=False)
def _task_begins(**_: Any) -> None:
    for store in list(_stores):
        store.begin_task()


@task_postrun.connect(weak=False)
def _task_ends(**_: Any) -> None:
    for store in list(_stores):
        store.end_task()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime
