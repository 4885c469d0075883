"""Consumer liveness and recovery: a dead worker's messages back on their queues in seconds.

An unacknowledged message of a dead worker would come back only after kombu's
visibility timeout, which must sit above the longest task, so a dead pod would
stall its runs for minutes. Instead each consumer keeps a heartbeat key alive
(``Heartbeat``); once it lapses, any other worker puts the dead consumer's
landed and held messages back on their queues (``recover_dead_consumers``).

Liveness is judged in Redis time, and only over time Redis was watched: after a
gap in the sweeps (Redis stopped, restarted or cut off longer than the
heartbeat's life), no consumer is judged dead until every one has had a full
window to beat again (consumers.lua). A consumer that has not beaten for that
long re-registers before it lands anything, so nothing it lands lies where no
recovery looks. A registered consumer's messages are never restored by the
visibility timeout, however long they run and however many there are
(``protect_held``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import AbstractContextManager
from typing import Any, Protocol

import redis
from kombu.utils.encoding import bytes_to_str

from tether.observability.logs import log
from tether.store import keys
from tether.store.scripts import Script
from tether.transport.landing import drain_landing

# A consumer renews its heartbeat, and looks for dead consumers, every HEARTBEAT_S;
# one whose heartbeat is missing for CONSUMER_DEAD_AFTER_S of watched Redis time is
# dead, and its messages go back to their queues.
HEARTBEAT_S = 2.0
CONSUMER_DEAD_AFTER_S = 10

CONSUMERS = Script.load("tether.transport", "consumers.lua")
PROTECT_HELD = Script.load("tether.transport", "protect_held.lua")
FORGET_CONSUMER = Script.load("tether.transport", "forget_consumer.lua")


class Restorer(Protocol):
    """What puts a held message back on its queue: kombu's QoS of some channel."""

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None: ...


class Channel(Protocol):
    """The channel a heartbeat keeps alive: its Redis client and its QoS."""

    @property
    def qos(self) -> Restorer: ...

    def conn_or_acquire(
        self, client: redis.Redis | None = None
    ) -> AbstractContextManager[redis.Redis]: ...


def sweep_gap_s() -> float:
    """The longest gap between sweeps after which the watch goes on.

    A live consumer beats every HEARTBEAT_S: while Redis is away for less than
    this, its silence, a beat on either side included, stays under
    CONSUMER_DEAD_AFTER_S and no live consumer's heartbeat lapses.
    """
    return min(CONSUMER_DEAD_AFTER_S / 2, CONSUMER_DEAD_AFTER_S - 2 * HEARTBEAT_S)


def _clock() -> float:
    # Runs on while the process is stopped (SIGSTOP), as Redis's clock does.
    return time.monotonic()


class Heartbeat:
    """One consumer's registration (tether:consumers) and heartbeat key, renewed every
    HEARTBEAT_S by a thread of its own, which also recovers dead consumers: recovery
    needs no other process."""

    def __init__(self, channel: Channel, source: str) -> None:
        self.consumer_id = uuid.uuid4().hex
        self.owner_pid = os.getpid()
        self.source = source
        self._channel = channel
        self._stopped = threading.Event()
        # When the last heartbeat that Redis answered was sent (_clock()).
        self._beat_sent = float("-inf")
        self.beat()
        self._thread = threading.Thread(
            target=self._beat_forever, daemon=True, name="tether-consumer"
        )
        self._thread.start()

    def beat(self) -> None:
        sent = _clock()
        with self._channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.consumer_alive(self.consumer_id), self.source, ex=CONSUMER_DEAD_AFTER_S)
            pipe.hset(keys.CONSUMERS, self.consumer_id, self.source)
            pipe.execute()
        self._beat_sent = max(self._beat_sent, sent)

    def beat_if_lapsing(self) -> None:
        """Register again where the heartbeat may have lapsed (a stall, Redis away) and a
        recovery may have forgotten this consumer: a message it landed and then died with
        would lie where no recovery looks."""
        if _clock() - self._beat_sent >= CONSUMER_DEAD_AFTER_S - HEARTBEAT_S:
            self.beat()

    def _beat_forever(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                self.beat()
                with self._channel.conn_or_acquire() as client:
                    recover_dead_consumers(client, self._channel.qos)
            except redis.RedisError:
                continue  # Redis away: beat again; held messages stay held meanwhile
            except Exception:
                # A recovery that fails (a corrupt record) must not stop the beat: a
                # silent consumer is judged dead and its running messages handed out again.
                log.exception("consumer_heartbeat_recovery_failed", consumer=self.consumer_id)

    def stop(self) -> None:
        """Beat no more and put back what this consumer still holds (its channel closes)."""
        self._stopped.set()
        try:
            with self._channel.conn_or_acquire() as client:
                recover_consumer(client, self._channel.qos, self.consumer_id, own=True)
        except redis.RedisError:
            pass  # its heartbeat lapses and another worker recovers what is left


def registered_consumers(client: redis.Redis) -> list[str]:
    return [bytes_to_str(c) for c in client.hkeys(keys.CONSUMERS)]  # type: ignore[no-untyped-call]  # kombu is untyped


def protect_held(client: redis.Redis, unacked_index_key: str) -> int:
    """Keep every message a registered consumer holds off the visibility timeout.

    One script for them all, however many: a dead consumer's messages go back by
    recovery, in seconds, and a live one's are still running.
    """
    held = [keys.consumer_held(c) for c in registered_consumers(client)]
    if not held:
        return 0
    return int(PROTECT_HELD.run(client, keys=[unacked_index_key, *held], args=[time.time()]))


def recover_dead_consumers(client: redis.Redis, qos: Restorer) -> list[str]:
    """Put every dead consumer's landed and held messages back on their queues."""
    consumers = registered_consumers(client)
    pairs = [
        key for c in consumers for key in (keys.consumer_alive(c), keys.consumer_recovering(c))
    ]
    claimed = CONSUMERS.run(
        client,
        keys=[keys.CONSUMERS_CLOCK, *pairs],
        args=[uuid.uuid4().hex, CONSUMER_DEAD_AFTER_S, sweep_gap_s()],
    )
    recovered = []
    for number in claimed or []:
        consumer = consumers[int(number) - 1]
        try:
            recover_consumer(client, qos, consumer)
        except redis.exceptions.NoPermissionError:
            # This service's Redis user may not write that consumer's queue
            # (deploy/redis/users.acl): nothing moved (the landing list's move to the
            # queue comes first); the claim goes at once, to a worker that may.
            client.delete(keys.consumer_recovering(consumer))
            continue
        recovered.append(consumer)
    return recovered


def recover_consumer(client: redis.Redis, qos: Restorer, consumer: str, own: bool = False) -> None:
    """Return ``consumer``'s messages to their queues and forget it.

    Landed messages were never recorded, so they go back as they were; held
    ones are restored by kombu (which counts one more delivery). A recoverer
    that dies midway leaves the rest for the next, once its claim lapses. A
    consumer that beats again meanwhile (it was only stalled) stays registered.
    """
    drain_landing(client, consumer)
    held = keys.consumer_held(consumer)
    tags = [bytes_to_str(tag) for tag in client.smembers(held)]  # type: ignore[no-untyped-call]  # kombu is untyped
    for tag in tags:
        qos.restore_by_tag(tag, client)
    if tags:
        client.srem(held, *tags)
    FORGET_CONSUMER.run(
        client,
        keys=[
            keys.CONSUMERS,
            keys.consumer_alive(consumer),
            held,
            keys.consumer_recovering(consumer),
        ],
        args=[consumer, "1" if own else "0"],
    )
