"""Dead letters: messages that could not be parsed or failed past their retries.

Each is kept in the stream tether:dead with its task, its arguments and why,
so an operator can read it (`tether dead list|show`) and, once the cause is
fixed, put it back on its queue (`tether dead replay`). Handlers are
idempotent, so a replay is as safe as a redelivery.
"""

from __future__ import annotations

import json
import uuid
from importlib.resources import files
from typing import Any, cast

from pydantic import BaseModel

from tether import keys, metrics, sentry
from tether.celery_app import QUEUE_OF, direct_route
from tether.messages import ErrorCategory, utcnow
from tether.runtime import Runtime

MAXLEN = 100_000
SCRIPT = files("tether").joinpath("deadletters.lua").read_text()


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


def record(
    rt: Runtime,
    task: str,
    kwargs: dict[str, Any],
    reason: str,
    category: ErrorCategory,
    message_id: str | None = None,
) -> str | None:
    """Keep a message that will not run again; with ``message_id``, once per message.

    Returns the entry's id, or None when that message already has its dead letter.
    """
    fields = {
        "task": task,
        "kwargs": json.dumps(kwargs, default=str),
        "reason": reason[:4096],
        "category": str(category),
        "at": utcnow().isoformat(),
    }
    seen = keys.dead_letter_seen(message_id or uuid.uuid4().hex)
    entry_id = rt.store.client.eval(
        SCRIPT,
        2,
        seen,
        keys.DEAD_STREAM,
        rt.store.run_ttl_s,
        MAXLEN,
        *(item for pair in fields.items() for item in pair),
    )
    if entry_id is None:
        return None
    run_id = _run_id(kwargs)
    # Counted and reported here, where the letter was written for the first time.
    metrics.DEAD_LETTERS.labels(task, category).inc()
    sentry.report_dead_letter(task, reason, category, run_id)
    if run_id is not None:
        rt.store.log(
            run_id, "dead_letter", -1, task=task, reason=reason, category=category, id=entry_id
        )
    return str(entry_id)


def _parse(entry_id: str, fields: dict[str, str]) -> DeadLetter:
    kwargs = json.loads(fields["kwargs"])
    return DeadLetter(
        id=entry_id,
        task=fields["task"],
        kwargs=kwargs,
        reason=fields["reason"],
        category=ErrorCategory(fields["category"]),
        at=fields["at"],
        run_id=_run_id(kwargs),
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
        rt.store.log(letter.run_id, "dead_letter_replayed", -1, task=letter.task, id=entry_id)
    return letter
