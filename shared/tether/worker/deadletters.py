"""Dead letters: messages that could not be parsed or failed past their retries.

Each is kept in the stream tether:dead with its task, its arguments and why,
so an operator can read it (`tether dead list|show`) and, once the cause is
fixed, put it back on its queue (`tether dead replay`). Handlers are
idempotent, so a replay is as safe as a redelivery.

A message refused as forged (``refuse``: what it claims is not what Redis
holds) is kept here too, so an operator can see what was sent; replaying it
only refuses it again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, cast

import redis
from celery import current_task
from pydantic import BaseModel

from tether.observability import metrics, sentry
from tether.observability.logs import log
from tether.runtime import Runtime
from tether.store import keys
from tether.store.scripts import Script
from tether.transport.celery_app import QUEUE_OF, direct_route
from tether.transport.wire import ErrorCategory, EventKind, utcnow

MAXLEN = 100_000
DEADLETTERS = Script.load("tether.worker", "deadletters.lua")


class DeadLetter(BaseModel):
    id: str
    task: str
    kwargs: dict[str, Any]
    reason: str
    category: ErrorCategory
    at: str
    run_id: str | None = None


def _run_id(kwargs: dict[str, Any]) -> str | None:
    for value in kwargs.values():
        if isinstance(value, dict) and isinstance(value.get("run_id"), str):
            return str(value["run_id"])
    run_id = kwargs.get("run_id")
    return run_id if isinstance(run_id, str) else None


def write(
    client: redis.Redis,
    fields: dict[str, str],
    guard: Literal["seen", "landed"],
    guard_key: str,
    guard_arg: object,
) -> Any:
    """Write a dead letter of ``fields`` unless its guard refuses (deadletters.lua says
    how each guards it): the entry's id, or None where it was refused."""
    return DEADLETTERS.run(
        client,
        keys=[guard_key, keys.DEAD_STREAM],
        args=[guard, guard_arg, MAXLEN, *(item for pair in fields.items() for item in pair)],
    )


def record(
    rt: Runtime,
    task: str,
    kwargs: dict[str, Any],
    reason: str,
    category: ErrorCategory,
    message_id: str | None = None,
    *,
    log_run: bool = True,
    run_id: str | None = None,
) -> str | None:
    """Keep a message that will not run again; with ``message_id``, once per message.

    Returns the entry's id, or None when that message already has its dead letter.
    ``log_run``: note it in the event log of the run it names (False where that run
    does not exist: a log of its own would make one up). ``run_id``: the run it
    belongs to, where its arguments do not name it (a decision names its escalation).
    """
    run_id = run_id or _run_id(kwargs)
    fields = {
        "task": task,
        "kwargs": json.dumps(kwargs, default=str),
        "reason": reason[:4096],
        "category": str(category),
        "at": utcnow().isoformat(),
        **({"run_id": run_id} if run_id else {}),
    }
    seen = keys.dead_letter_seen(message_id or uuid.uuid4().hex)
    entry_id = write(rt.store.client, fields, "seen", seen, rt.store.run_ttl_s)
    if entry_id is None:
        return None
    # Counted and reported here, where the letter was written for the first time.
    metrics.DEAD_LETTERS.labels(task, category).inc()
    sentry.report_dead_letter(task, reason, category, run_id)
    if run_id is not None and log_run:
        rt.store.log.append(
            run_id,
            EventKind.dead_letter,
            -1,
            task=task,
            reason=reason,
            category=category,
            id=entry_id,
        )
    return str(entry_id)


def refuse(
    rt: Runtime,
    task: str,
    kwargs: dict[str, Any],
    reason: str,
    detail: str,
    *,
    run_id: str | None = None,
    step: int = -1,
) -> None:
    """Refuse a message whose claim the state in Redis does not back: nothing of it runs.

    A message is a claim, not an order (invariant 7): a worker that finds the
    claim false calls this instead of acting. ``reason`` is a short fixed word
    (the metric's label), ``detail`` says what did not match. The refusal is
    logged (``forged_message_refused``), dead-lettered, counted in
    ``tether_forged_messages_total`` and written to the event log of the run it
    names where that run exists; a redelivery of the same message is logged
    again but neither counted nor dead-lettered twice.
    """
    log.warning("forged_message_refused", queue=task, reason=reason, detail=detail, run_id=run_id)
    exists = run_id is not None and rt.store.status(run_id) is not None
    entry_id = record(
        rt,
        task,
        kwargs,
        f"forged message refused ({reason}): {detail}; nothing of it ran",
        ErrorCategory.policy_denied,
        _message_id(),
        log_run=exists,
        run_id=run_id,
    )
    if entry_id is None:
        return  # this very message was refused before: a redelivery
    metrics.forged_message_refused(task, reason)
    if exists and run_id is not None:
        rt.store.log.append(
            run_id,
            EventKind.forged_message_refused,
            step,
            queue=task,
            reason=reason,
            detail=detail,
            dead_letter=entry_id,
        )


def _message_id() -> str | None:
    """The id of the Celery message being handled, if any: its redeliveries share it."""
    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


def _parse(entry_id: str, fields: dict[str, str]) -> DeadLetter:
    kwargs = json.loads(fields["kwargs"])
    return DeadLetter(
        id=entry_id,
        task=fields["task"],
        kwargs=kwargs,
        reason=fields["reason"],
        category=ErrorCategory(fields["category"]),
        at=fields["at"],
        run_id=fields.get("run_id") or _run_id(kwargs),
    )


def list_dead(rt: Runtime, count: int = 50) -> list[DeadLetter]:
    entries = cast(
        list[tuple[str, dict[str, str]]], rt.store.client.xrevrange(keys.DEAD_STREAM, count=count)
    )
    return [_parse(entry_id, fields) for entry_id, fields in entries]


def get(rt: Runtime, entry_id: str) -> DeadLetter | None:
    entries = cast(
        list[tuple[str, dict[str, str]]],
        rt.store.client.xrange(keys.DEAD_STREAM, min=entry_id, max=entry_id),
    )
    return _parse(*entries[0]) if entries else None


def replay(rt: Runtime, entry_id: str) -> DeadLetter | None:
    """Put a dead letter back on its queue, once: it leaves the stream before it is sent.

    Two operators replaying the same letter at once send it once; handlers are
    idempotent, so a replay is as safe as a redelivery, and it starts with a
    fresh delivery count.
    """
    letter = get(rt, entry_id)
    if letter is None:
        return None
    queue = QUEUE_OF.get(letter.task)
    if queue is None:
        return None
    if not rt.store.client.xdel(keys.DEAD_STREAM, entry_id):
        return None  # another replay took it first
    rt.celery.send_task(letter.task, kwargs=letter.kwargs, **direct_route(queue))
    if letter.run_id is not None:
        rt.store.log.append(
            letter.run_id, EventKind.dead_letter_replayed, -1, task=letter.task, id=entry_id
        )
    return letter
