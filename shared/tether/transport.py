"""kombu's Redis transport, made to lose no message and to notice a dead worker in seconds.

kombu pops a message (BRPOP) and only then records it as unacknowledged: a
worker killed in between loses the message for good. And an unacknowledged
message of a dead worker comes back only after the visibility timeout, which
must sit above the longest task, so a dead pod stalls its runs for minutes.

Here a consumer moves each message (BLMOVE) into a landing list of its own, and
records it as unacknowledged, in its held set, and off the landing list in one
MULTI. Each consumer keeps a heartbeat key alive; once it lapses, any other
worker puts the dead consumer's landed and held messages back on their queues
(``recover_dead_consumers``). A live consumer's messages are never restored by
the visibility timeout, however long they run. A message put back after its
consumer died counts one more delivery in its headers (``tether_deliveries``),
for the delivery cap.

The move needs a single source list, so it is used when a channel consumes one
of Tether's queues alone, with one priority step (every Tether service does);
otherwise the channel falls back to kombu's BRPOP.

Once its worker starts shutting down (``stop_consuming``), a consumer moves no
more messages, and puts what its last move brought straight back on its queue:
Celery would hold it, unstarted, until every running task had finished.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.resources import files
from queue import Empty
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tether import held_publish, keys

# A consumer renews its heartbeat, and looks for dead consumers, every HEARTBEAT_S;
# one whose heartbeat is missing for CONSUMER_DEAD_AFTER_S is dead, and its
# messages go back to their queues.
HEARTBEAT_S = 2.0
CONSUMER_DEAD_AFTER_S = 10
DELIVERIES_HEADER = "tether_deliveries"
# Only the services' own queues: a client waiting on a reply queue (a ping, an
# inspect) takes no heartbeat that would outlive its short-lived consumer.
LANDED_QUEUES = "tether."

CLAIM_SCRIPT = files("tether").joinpath("consumers.lua").read_text()

RETURN_SCRIPT = files("tether").joinpath("return_landed.lua").read_text()

_stopping = threading.Event()
_consuming: weakref.WeakSet[ReliableChannel] = weakref.WeakSet()


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


def deliveries(headers: dict[str, Any] | None) -> int:
    """How many times a message has been handed to a worker (1 on its first delivery)."""
    value = (headers or {}).get(DELIVERIES_HEADER)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 1


class QoS(kombu_redis.QoS):
    channel: ReliableChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        landed = self.channel.take_landed()
        if landed is None:
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        consumer = self.channel.consumer_id
        assert consumer is not None  # a channel lands messages only once it has an id
        with self.pipe_or_acquire() as pipe:
            # One MULTI: the message is unacknowledged, held and off the landing list together.
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(
                self.unacked_key,
                delivery_tag,
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            )
            pipe.sadd(keys.consumer_held(consumer), delivery_tag)
            pipe.lrem(keys.consumer_landing(consumer), 1, landed)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as pipe:
            pipe = super()._remove_from_indices(delivery_tag, pipe)
            if self.channel.consumer_id is not None:
                pipe.srem(keys.consumer_held(self.channel.consumer_id), delivery_tag)
            return pipe

    def restore_unacked(self, client: redis.Redis | None = None) -> None:
        # Messages given back at a clean shutdown were never run: no delivery to count.
        self.channel.counting_deliveries = False
        try:
            super().restore_unacked(client)
        finally:
            self.channel.counting_deliveries = True

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        with self.channel.conn_or_acquire() as client:
            live = live_consumers(client)
            ceil = time.time() - self.visibility_timeout
            overdue = client.zrange(
                self.unacked_index_key, 0, ceil, byscore=True, offset=0, num=100
            )
            for tag in overdue or []:
                tag = bytes_to_str(tag)
                if any(client.sismember(keys.consumer_held(c), tag) for c in live):
                    # Held by a live worker: still running, however long; look again later.
                    client.zadd(self.unacked_index_key, {tag: time.time()}, xx=True)
        super().restore_visible(start, num, interval)


class ReliableChannel(kombu_redis.Channel):
    """A Redis channel that lands messages in a list of its own before it records them.

    It also keeps one client for the commands it sends: kombu builds a new
    redis.Redis (with its table of ~170 response callbacks) for every publish
    and every ack, a fifth of the CPU of a publish; a client is a stateless
    handle on the channel's connection pool, so one serves every thread and
    greenlet alike.
    """

    QoS = QoS
    _shared_client: redis.Redis | None = None
    consumer_id: str | None = None
    _landing_source: str | None = None
    _landed: bytes | str | None = None
    counting_deliveries = True
    _heartbeat: threading.Thread | None = None
    _stopped: threading.Event | None = None
    _owner_pid: int | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        if self._shared_client is None:
            self._shared_client = self._create_client()
        yield self._shared_client

    # publishing ------------------------------------------------------------------

    @property
    def supports_batch_publish(self) -> bool:
        return held_publish.target() is not None or bool(super().supports_batch_publish)

    def create_publish_batch(self, max_size: int) -> Any:
        writes = held_publish.target()
        if writes is None:
            return super().create_publish_batch(max_size)
        return held_publish.HeldPublishes(self, writes)

    # consuming -------------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        sources = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        if (
            len(set(sources)) != 1
            or not sources[0].startswith(LANDED_QUEUES)
            or self.global_keyprefix
        ):
            self._landing_source = None
            super()._brpop_start(timeout)
            return
        if _stopping.is_set():
            return
        self._start_heartbeat(sources[0])
        assert self.consumer_id is not None
        self._landing_source = sources[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(
            "BLMOVE",
            sources[0],
            keys.consumer_landing(self.consumer_id),
            "RIGHT",
            "LEFT",
            self.brpop_timeout if timeout is None else timeout,
        )

    def _brpop_read(self, **options: Any) -> bool:
        source = self._landing_source
        if source is None:
            return cast(bool, super()._brpop_read(**options))
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._landed = item
            if _stopping.is_set():
                # Back to the head of its queue at once, as it was: another worker
                # takes it now, and no delivery is counted for a message never run.
                self._return_landed(source)
                raise Empty()
            queue = bytes_to_str(source).rsplit(self.sep, 1)[0]
            try:
                self.connection._deliver(loads(bytes_to_str(item)), queue)
            except BaseException:
                self._return_landed(source)
                raise
            if self._landed is not None:
                # Taken without acknowledgement tracking: nothing left to keep.
                self._return_landed(None)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def take_landed(self) -> bytes | str | None:
        landed, self._landed = self._landed, None
        return landed

    def _return_landed(self, queue: str | None) -> None:
        landed = self.take_landed()
        if landed is None or self.consumer_id is None:
            return
        landing = keys.consumer_landing(self.consumer_id)
        with self.conn_or_acquire() as client:
            if queue is None:
                client.lrem(landing, 1, landed)  # type: ignore[arg-type]
            else:
                client.eval(RETURN_SCRIPT, 2, landing, queue, landed)

    def give_back_landed(self) -> None:
        """Put every message on this consumer's landing list back on its queue."""
        if self._owner_pid != os.getpid() or self.consumer_id is None:
            return
        landing = keys.consumer_landing(self.consumer_id)
        with self.conn_or_acquire() as client:
            source = client.hget(keys.CONSUMERS, self.consumer_id)
            if source is not None:
                while client.lmove(landing, bytes_to_str(source), "LEFT", "RIGHT") is not None:
                    pass

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        headers = payload.get("headers") if isinstance(payload, dict) else None
        if isinstance(headers, dict) and self.counting_deliveries:
            headers[DELIVERIES_HEADER] = deliveries(headers) + 1
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

    # liveness --------------------------------------------------------------------

    def _start_heartbeat(self, source: str) -> None:
        if self._heartbeat is not None:
            return
        self.consumer_id = uuid.uuid4().hex
        self._owner_pid = os.getpid()
        self._stopped = threading.Event()
        _consuming.add(self)
        self._beat(source)
        self._heartbeat = threading.Thread(
            target=self._beat_forever, args=(source,), daemon=True, name="tether-consumer"
        )
        self._heartbeat.start()

    def _beat(self, source: str) -> None:
        assert self.consumer_id is not None
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.consumer_alive(self.consumer_id), source, ex=CONSUMER_DEAD_AFTER_S)
            pipe.hset(keys.CONSUMERS, self.consumer_id, source)
            pipe.execute()

    def _beat_forever(self, source: str) -> None:
        # Every consumer also looks for dead ones: recovery needs no other process.
        assert self._stopped is not None
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                self._beat(source)
                with self.conn_or_acquire() as client:
                    recover_dead_consumers(client, self.qos)
            except redis.RedisError:
                continue  # Redis away: beat again; held messages stay held meanwhile

    def close(self) -> None:
        # kombu restores what this channel still holds while it closes; then it is gone.
        super().close()
        # A forked pool process inherits the channel, not the consumer behind it.
        if self._owner_pid != os.getpid():
            return
        if self._stopped is not None and self.consumer_id is not None:
            self._stopped.set()
            try:
                with self.conn_or_acquire() as client:
                    recover_consumer(client, self.qos, self.consumer_id, own=True)
            except redis.RedisError:
                pass  # its heartbeat lapses and another worker recovers what is left


class RedisTransport(kombu_redis.Transport):
    Channel = ReliableChannel


def live_consumers(client: redis.Redis) -> list[str]:
    consumers = [bytes_to_str(c) for c in client.hkeys(keys.CONSUMERS)]
    alive = client.exists(*(keys.consumer_alive(c) for c in consumers)) if consumers else 0
    if alive == len(consumers):
        return consumers
    return [c for c in consumers if client.exists(keys.consumer_alive(c))]


def recover_dead_consumers(client: redis.Redis, qos: QoS) -> list[str]:
    """Put every dead consumer's landed and held messages back on their queues."""
    recovered = []
    for consumer in [bytes_to_str(c) for c in client.hkeys(keys.CONSUMERS)]:
        claimed = client.eval(
            CLAIM_SCRIPT,
            2,
            keys.consumer_alive(consumer),
            keys.consumer_recovering(consumer),
            "1",
            CONSUMER_DEAD_AFTER_S,
        )
        if claimed:
            recover_consumer(client, qos, consumer)
            recovered.append(consumer)
    return recovered


def recover_consumer(client: redis.Redis, qos: QoS, consumer: str, own: bool = False) -> None:
    """Return ``consumer``'s messages to their queues and forget it.

    Landed messages were never recorded, so they go back as they were; held
    ones are restored by kombu (which counts one more delivery). A recoverer
    that dies midway leaves the rest for the next, once its claim lapses.
    """
    source = client.hget(keys.CONSUMERS, consumer)
    landing = keys.consumer_landing(consumer)
    if source is not None:
        while client.lmove(landing, bytes_to_str(source), "LEFT", "RIGHT") is not None:
            pass
    for tag in client.smembers(keys.consumer_held(consumer)):
        qos.restore_by_tag(bytes_to_str(tag), client)
    pipe = client.pipeline()
    pipe.delete(keys.consumer_held(consumer), keys.consumer_recovering(consumer))
    if own:
        pipe.delete(keys.consumer_alive(consumer))
    pipe.hdel(keys.CONSUMERS, consumer)
    pipe.execute()
