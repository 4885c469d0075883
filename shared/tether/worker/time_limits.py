"""The soft time limit under Celery's gevent pool, which drops it.

Under prefork, Celery raises SoftTimeLimitExceeded in a task that runs past
its soft limit, and the task ends as it chooses (the planner fails the step
cleanly). The gevent pool takes the soft limit and ignores it
(celery/concurrency/gevent.py enforces only the hard one, with a
gevent.Timeout that kills the task mid-way and requeues its message). A
planner runs gevent by default, so here each task's greenlet gets a
gevent.Timeout that raises SoftTimeLimitExceeded at its soft limit.

Like the pool's own hard limit, it interrupts a greenlet only where it yields
(socket I/O, sleeps, locks), which is where a planner step spends its time;
a greenlet spinning on the CPU is bounded by nothing short of the process.
"""

from __future__ import annotations

from typing import Any

import gevent
from celery import Task
from celery.concurrency import get_implementation
from celery.concurrency.gevent import TaskPool as GeventPool
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_init


def enforce_soft_time_limit_under_gevent() -> None:
    """Arm a soft time limit in every task a gevent worker of this process runs."""
    worker_init.connect(_on_worker_init, weak=False)


def _on_worker_init(sender: Any, **_: Any) -> None:
    if issubclass(get_implementation(sender.pool_cls), GeventPool):
        task_prerun.connect(_arm, weak=False)
        task_postrun.connect(_disarm, weak=False)


def soft_limit_s(task: Task) -> float | None:
    """The task's soft limit: from its message where the publisher set one, else its own."""
    _, soft = task.request.timelimit or (None, None)
    limit = soft or task.soft_time_limit
    return float(limit) if limit else None


# One task at a time runs in a greenlet, so the greenlet names the armed limit.
_armed: dict[int, gevent.Timeout] = {}


def _arm(task_id: str, task: Task, **_: Any) -> None:
    limit = soft_limit_s(task)
    if limit is None:
        return
    exc = SoftTimeLimitExceeded(
        f"soft time limit ({limit:g}s) exceeded for {task.name}[{task_id}] under the gevent pool"
    )
    _armed[id(gevent.getcurrent())] = gevent.Timeout.start_new(limit, exc)


def _disarm(**_: Any) -> None:
    timeout = _armed.pop(id(gevent.getcurrent()), None)
    if timeout is not None:
        timeout.close()
