"""kombu's Redis transport, made to lose no message and to notice a dead worker in seconds.

A consumer of one of Tether's queues moves each message into a landing list of
its own and records it from there (tether.transport.landing), gives each
delivery a tag of its own (tether.transport.delivery), and keeps a heartbeat
by which another worker recovers its messages once it dies
(tether.transport.consumers). This module fits those into kombu's Redis
channel and QoS.

The move needs a single source list, so it is used when a channel consumes one
of Tether's queues alone, with one priority step (every Tether service does);
otherwise the channel falls back to kombu's BRPOP.

This subclasses kombu's Redis channel and QoS internals (the BRPOP read, the
restore, the unacked index), which change between kombu's minor versions: the
package pins kombu to ``TESTED_KOMBU``, and a test fails on any other.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tether.observability.logs import log
from tether.store import keys
from tether.transport import consumers, held_publish, landing
from tether.transport.delivery import (
    DELIVERIES_HEADER,
    MalformedMessageError,
    Message,
    count_restore,
    deliveries,
)
from tether.transport.landing import stop_consuming

# What the workers and tests import from here: the transport's public face.
__all__ = [
    "DELIVERIES_HEADER",
    "TESTED_KOMBU",
    "RedisTransport",
    "ReliableChannel",
    "deliveries",
    "stop_consuming",
]

# The kombu minor versions whose internals this module was tested against.
TESTED_KOMBU = ("5.7",)

# Set while this thread (greenlet) runs the visibility timeout's scan.
_visible_scan = threading.local()


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
        with self.channel.conn_or_acquire() as client:
            recorded = landing.record_landed(
                client,
                consumer,
                landed,
                (self.unacked_index_key, self.unacked_key),
                delivery_tag,
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            )
        if not recorded:
            # The shutdown's give-back (or a recovery) put it back on its queue first.
            raise landing.GivenBack()
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
        if self.channel.consumer_id is None:
            # Only a consumer of Tether's queues protects and restores: a client that
            # publishes or waits for a reply (the CLI, Flower, `tether health`) may not
            # write kombu's unacked records under its Redis user (deploy/redis/users.acl).
            return
        with self.channel.conn_or_acquire() as client:
            consumers.protect_held(client, self.unacked_index_key)
        _visible_scan.on = True
        try:
            super().restore_visible(start, num, interval)
        finally:
            _visible_scan.on = False

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        if not getattr(_visible_scan, "on", False):
            super().restore_by_tag(tag, client, leftmost)
            return
        try:
            super().restore_by_tag(tag, client, leftmost)
        except redis.exceptions.NoPermissionError:
            # An orphan of a queue this service's Redis user may not write
            # (deploy/redis/users.acl): nothing moved (one transaction); a service that
            # may write it restores it. kombu's scan stops at the first error but a
            # connection error, so the other orphans would wait for that service too.
            log.debug("visible_restore_not_permitted", tag=tag)


class ReliableChannel(kombu_redis.Channel):
    """A Redis channel that lands messages in a list of its own before it records them.

    It also keeps one client for the commands it sends: kombu builds a new
    redis.Redis (with its table of ~170 response callbacks) for every publish
    and every ack, a fifth of the CPU of a publish; a client is a stateless
    handle on the channel's connection pool, so one serves every thread and
    greenlet alike.
    """

    QoS = QoS
    Message = Message
    _shared_client: redis.Redis | None = None
    heartbeat: consumers.Heartbeat | None = None
    _landing_source: str | None = None
    _landed: landing.Landed | None = None
    counting_deliveries = True

    @property
    def consumer_id(self) -> str | None:
        """This channel's consumer, once it lands messages (its heartbeat started)."""
        return self.heartbeat.consumer_id if self.heartbeat is not None else None

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
            or not sources[0].startswith(landing.LANDED_QUEUES)
            or self.global_keyprefix
        ):
            self._landing_source = None
            super()._brpop_start(timeout)
            return
        if landing.stopping():
            return
        if self.heartbeat is None:
            landing.consuming(self)
            self.heartbeat = consumers.Heartbeat(self, sources[0])
        else:
            self.heartbeat.beat_if_lapsing()
        self._landing_source = sources[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(
            "BLMOVE",
            sources[0],
            keys.consumer_landing(self.heartbeat.consumer_id),
            "RIGHT",
            "LEFT",
            self.brpop_timeout if timeout is None else timeout,
        )

    def _brpop_read(self, **options: Any) -> bool:
        source = self._landing_source
        if source is None:
            try:
                return cast(bool, super()._brpop_read(**options))
            except MalformedMessageError as exc:
                # BRPOP took it off its queue already: kept here, it blocks nothing.
                self._dead_letter(None, "/".join(sorted(self.active_queues)), exc)
                raise Empty() from exc
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._landed = item
            if landing.stopping():
                # Back to the head of its queue at once, as it was: another worker
                # takes it now, and no delivery is counted for a message never run.
                self._return_landed(source)
                raise Empty()
            queue = bytes_to_str(source).rsplit(self.sep, 1)[0]
            try:
                try:
                    payload = loads(bytes_to_str(item))
                except ValueError as exc:
                    raise MalformedMessageError(f"a message that is not JSON ({exc})") from exc
                self.connection._deliver(payload, queue)
            except MalformedMessageError as exc:
                self._dead_letter(self.take_landed(), queue, exc)
                raise Empty() from exc
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

    def take_landed(self) -> landing.Landed | None:
        landed, self._landed = self._landed, None
        return landed

    def _dead_letter(
        self, landed: landing.Landed | None, queue: str, error: MalformedMessageError
    ) -> None:
        with self.conn_or_acquire() as client:
            landing.dead_letter(client, self.consumer_id, landed, queue, error)

    def _return_landed(self, queue: str | None) -> None:
        landed = self.take_landed()
        if landed is None or self.consumer_id is None:
            return
        with self.conn_or_acquire() as client:
            landing.return_landed(client, self.consumer_id, landed, queue)

    def give_back_landed(self) -> None:
        """Put every message on this consumer's landing list back on its queue."""
        if self.heartbeat is None or self.heartbeat.owner_pid != os.getpid():
            return
        with self.conn_or_acquire() as client:
            landing.drain_landing(client, self.heartbeat.consumer_id)

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        if self.counting_deliveries:
            count_restore(payload)
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

    def close(self) -> None:
        # kombu restores what this channel still holds while it closes; then it is gone.
        super().close()
        # A forked pool process inherits the channel, not the consumer behind it.
        if self.heartbeat is not None and self.heartbeat.owner_pid == os.getpid():
            self.heartbeat.stop()


class RedisTransport(kombu_redis.Transport):
    Channel = ReliableChannel
