"""The landing list: where a consumer moves each message before it records it.

kombu pops a message (BRPOP) and only then records it as unacknowledged: a
worker killed in between loses the message for good. Here a consumer moves each
message (BLMOVE) into a landing list of its own, and records it as
unacknowledged, in its held set, and off the landing list in one script
(record_landed.lua), which records nothing when the message is no longer on the
landing list (a shutdown's give-back took it first: one message is back on its
queue or in a worker's hands, never both).

A landed message that cannot be parsed (not JSON, no ``properties``, a body that
does not decode) is taken off the landing list and kept, raw, in the dead-letter
stream: put back, it would be taken again at once and block its queue.

Once its worker starts shutting down (``stop_consuming``), a consumer moves no
more messages, and puts what its last move brought straight back on its queue:
Celery would hold it, unstarted, until every running task had finished.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import weakref
from contextlib import suppress
from queue import Empty
from typing import Any, Protocol

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from tether.observability.logs import log
from tether.store import keys
from tether.store.scripts import Script
from tether.transport.delivery import MalformedMessageError
from tether.transport.wire import ErrorCategory, utcnow

# Only the services' own queues: a client waiting on a reply queue (a ping, an
# inspect) takes no heartbeat that would outlive its short-lived consumer.
LANDED_QUEUES = "tether."
# How much of an unparseable message its dead letter keeps.
RAW_KEPT_CHARS = 16_384
UNPARSEABLE_TASK = "(unparseable)"

RECORD_LANDED = Script.load("tether.transport", "record_landed.lua")
RETURN_LANDED = Script.load("tether.transport", "return_landed.lua")

Landed = bytes | str


class GivenBack(Empty):
    """A landed message was put back on its queue before this consumer recorded it."""


def record_landed(
    client: redis.Redis,
    consumer: str,
    landed: Landed,
    unacked: tuple[str, str],
    delivery_tag: str,
    restore_from: str,
) -> bool:
    """Record ``landed`` as ``consumer``'s unacknowledged delivery, off its landing list.

    ``unacked``: kombu's unacked index and hash; ``restore_from``: what kombu restores
    the message from. False: the message was no longer there (a give-back took it).
    """
    index_key, hash_key = unacked
    return bool(
        RECORD_LANDED.run(
            client,
            keys=[
                keys.consumer_landing(consumer),
                index_key,
                hash_key,
                keys.consumer_held(consumer),
            ],
            # kombu scores its unacked index with the worker's clock.
            args=[landed, delivery_tag, time.time(), restore_from],
        )
    )


def return_landed(client: redis.Redis, consumer: str, landed: Landed, queue: str | None) -> None:
    """Put ``landed`` back at the head of ``queue``; with no queue, only drop it from the
    landing list (kombu took it without acknowledgement tracking)."""
    landing = keys.consumer_landing(consumer)
    if queue is None:
        client.lrem(landing, 1, landed)  # type: ignore[arg-type]
    else:
        RETURN_LANDED.run(client, keys=[landing, queue], args=[landed])


def drain_landing(client: redis.Redis, consumer: str) -> None:
    """Move every message on ``consumer``'s landing list back to the head of its queue,
    in order."""
    source = client.hget(keys.CONSUMERS, consumer)
    if source is None:
        return
    landing = keys.consumer_landing(consumer)
    while client.lmove(landing, bytes_to_str(source), "LEFT", "RIGHT") is not None:  # type: ignore[no-untyped-call]  # kombu is untyped
        pass


def dead_letter(
    client: redis.Redis,
    consumer: str | None,
    landed: Landed | None,
    queue: str,
    error: MalformedMessageError,
) -> None:
    """Keep a message that cannot be parsed as a dead letter, raw.

    ``landed``: the message as it lies on ``consumer``'s landing list, which it leaves
    in the same step; None where kombu's BRPOP already took it off its queue.
    """
    if landed is None:
        raw = dumps(error.payload)  # type: ignore[no-untyped-call]  # kombu is untyped
    elif isinstance(landed, bytes):
        raw = landed.decode(errors="replace")
    else:
        raw = landed
    reason = f"unparseable message on {queue}: {error.what}"
    fields: dict[Any, Any] = {
        "task": UNPARSEABLE_TASK,
        "kwargs": json.dumps({"raw": raw[:RAW_KEPT_CHARS]}),
        "reason": reason[:4096],
        "category": str(ErrorCategory.internal),  # as service.parse files a malformed one
        "at": utcnow().isoformat(),
    }
    # Loaded here, not at import: kombu loads the transport early in a worker's start,
    # and the dead letters sit above it (they import the runtime).
    from tether.observability import metrics
    from tether.worker import deadletters

    if landed is None:
        entry = client.xadd(keys.DEAD_STREAM, fields, maxlen=deadletters.MAXLEN, approximate=True)
    else:
        assert consumer is not None  # only a consumer lands messages
        entry = deadletters.write(client, fields, "landed", keys.consumer_landing(consumer), landed)
    if entry is None:
        return  # a give-back or a recovery took it first: whoever takes it next keeps it
    metrics.DEAD_LETTERS.labels(UNPARSEABLE_TASK, ErrorCategory.internal).inc()
    log.warning(
        "unparseable_message_dead_lettered",
        queue=queue,
        reason=error.what,
        dead_letter=bytes_to_str(entry),  # type: ignore[no-untyped-call]  # kombu is untyped
        size=len(raw),
    )


class Landing(Protocol):
    def give_back_landed(self) -> None: ...


_stopping = threading.Event()
_consuming: weakref.WeakSet[Landing] = weakref.WeakSet()


def stopping() -> bool:
    """Whether this process's worker is shutting down (it lands no more messages)."""
    return _stopping.is_set()


def consuming(channel: Landing) -> None:
    """Give back what ``channel`` landed once this process stops consuming."""
    _consuming.add(channel)


def stop_consuming() -> None:
    """Take no more messages in this process, and give back what has landed.

    Its worker is shutting down. Called from a signal handler, so the Redis
    commands go to a thread (a greenlet under gevent): the interrupted code may
    hold the client's lock.
    """
    if _stopping.is_set():
        return
    _stopping.set()
    monkey = sys.modules.get("gevent.monkey")  # loaded where the pool is gevent's
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        # Thread.start() waits for the thread to start, which gevent's hub, running
        # this handler, must not (BlockingSwitchOutError); a greenlet is only scheduled.
        gevent.spawn(_give_back_landed)
    else:
        threading.Thread(target=_give_back_landed, daemon=True, name="tether-stop").start()


def _give_back_landed() -> None:
    # What a failure leaves goes back when the channel closes, or by recovery.
    for channel in list(_consuming):
        with suppress(redis.RedisError):
            channel.give_back_landed()
