"""kombu's Redis transport, made to lose no message and to notice a dead worker in seconds.

kombu pops a message (BRPOP) and only then records it as unacknowledged: a
worker killed in between loses the message for good. And an unacknowledged
message of a dead worker comes back only after the visibility timeout, which
must sit above the longest task, so a dead pod stalls its runs for minutes.

Here a consumer moves each message (BLMOVE) into a landing list of its own, and
records it as unacknowledged, in its held set, and off the landing list in one
script, which records nothing when the message is no longer on the landing list
(a shutdown's give-back took it first: one message is back on its queue or in a
worker's hands, never both). Each delivery gets a delivery tag of its own, on
either read (the move or kombu's BRPOP), so a consumer's ack, reject or restore
acts only on its own delivery: a stalled consumer whose message went to another
one meanwhile undoes nothing when it wakes.

A landed message that cannot be parsed (not JSON, no ``properties``, a body that
does not decode) is taken off the landing list and kept, raw, in the dead-letter
stream: put back, it would be taken again at once and block its queue.

Each consumer keeps a heartbeat key alive; once it lapses, any other worker
puts the dead consumer's landed and held messages back on their queues
(``recover_dead_consumers``). Liveness is judged in Redis time, and only over
time Redis was watched: after a gap in the sweeps (Redis stopped, restarted or
cut off longer than the heartbeat's life), no consumer is judged dead until
every one has had a full window to beat again. A consumer that has not beaten
for that long re-registers before it lands anything, so nothing it lands lies
where no recovery looks. A registered consumer's messages are never restored by
the visibility timeout, however long they run and however many there are. A
message put back after its consumer died counts one more delivery in its
headers (``tether_deliveries``), for the delivery cap.

The move needs a single source list, so it is used when a channel consumes one
of Tether's queues alone, with one priority step (every Tether service does);
otherwise the channel falls back to kombu's BRPOP.

Once its worker starts shutting down (``stop_consuming``), a consumer moves no
more messages, and puts what its last move brought straight back on its queue:
Celery would hold it, unstarted, until every running task had finished.

This subclasses kombu's Redis channel and QoS internals (the BRPOP read, the
restore, the unacked index), which change between kombu's minor versions: the
package pins kombu to ``TESTED_KOMBU``, and a test fails on any other.
"""

from __future__ import annotations

import json
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
from tether.errors import TetherError
from tether.messages import ErrorCategory, utcnow
from tether.telemetry import log

# The kombu minor versions whose internals this module was tested against.
TESTED_KOMBU = ("5.7",)

# A consumer renews its heartbeat, and looks for dead consumers, every HEARTBEAT_S;
# one whose heartbeat is missing for CONSUMER_DEAD_AFTER_S of watched Redis time is
# dead, and its messages go back to their queues.
HEARTBEAT_S = 2.0
CONSUMER_DEAD_AFTER_S = 10
DELIVERIES_HEADER = "tether_deliveries"
# Only the services' own queues: a client waiting on a reply queue (a ping, an
# inspect) takes no heartbeat that would outlive its short-lived consumer.
LANDED_QUEUES = "tether."


def _lua(name: str) -> str:
    return files("tether").joinpath(name).read_text()


CLAIM_SCRIPT = _lua("consumers.lua")
RETURN_SCRIPT = _lua("return_landed.lua")
RECORD_SCRIPT = _lua("record_landed.lua")
PROTECT_SCRIPT = _lua("protect_held.lua")
FORGET_SCRIPT = _lua("forget_consumer.lua")
DEADLETTER_SCRIPT = _lua("deadletter_landed.lua")
# How much of an unparseable message its dead letter keeps.
RAW_KEPT_CHARS = 16_384
UNPARSEABLE_TASK = "(unparseable)"


def _script(client: redis.Redis, text: str) -> Any:
    # redis-py's Script: sent by SHA1, loaded again where Redis lost it.
    return client.register_script(text)


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


class GivenBack(Empty):
    """A landed message was put back on its queue before this consumer recorded it."""


class MalformedMessageError(TetherError):
    """A message on a queue is not one kombu can deliver: it can never run."""

    def __init__(self, what: str, payload: Any = None) -> None:
        super().__init__(
            f"{what}; it can never run: kept as a dead letter (`tether dead list`), "
            "find who wrote it to the queue"
        )
        self.what = what
        self.payload = payload


class Message(virtual.Message):
    """kombu's message, with a delivery tag of this delivery's own.

    kombu's tag comes from the message itself, and a message put back keeps it:
    a stalled consumer's late ack would erase the record of the consumer that took
    the message after it. Every read (the move, kombu's BRPOP, a basic_get) makes
    its message here, so every delivery gets a fresh tag.
    """

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        properties = payload.get("properties") if isinstance(payload, dict) else None
        if not isinstance(properties, dict):
            raise MalformedMessageError("a message without kombu's properties", payload)
        delivery = properties.get("delivery_info")
        if not isinstance(delivery, dict) or not {"exchange", "routing_key"} <= delivery.keys():
            raise MalformedMessageError("a message without its exchange and routing key", payload)
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:  # a body that does not decode
            raise MalformedMessageError(f"a message kombu cannot read ({exc!r})", payload) from exc
        # In the payload too: it is what kombu records, and restores.
        self.delivery_tag = properties["delivery_tag"] = uuid.uuid4().hex


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
        recorded = self.channel.script(RECORD_SCRIPT)(
            keys=[
                keys.consumer_landing(consumer),
                self.unacked_index_key,
                self.unacked_key,
                keys.consumer_held(consumer),
            ],
            args=[
                landed,
                delivery_tag,
                time.time(),
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            ],
        )
        if not recorded:
            # The shutdown's give-back (or a recovery) put it back on its queue first.
            raise GivenBack()
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
            protect_held(client, self.unacked_index_key)
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
    _shared_client: redis.Redis | None = None
    consumer_id: str | None = None
    _landing_source: str | None = None
    _landed: bytes | str | None = None
    counting_deliveries = True
    _heartbeat: threading.Thread | None = None
    _stopped: threading.Event | None = None
    _owner_pid: int | None = None
    # When the last heartbeat that Redis answered was sent (_clock()).
    _beat_sent: float = float("-inf")
    _scripts: dict[str, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        if self._shared_client is None:
            self._shared_client = self._create_client()
        yield self._shared_client

    def script(self, text: str) -> Any:
        """A Lua script on the channel's client, registered once."""
        if self._scripts is None:
            self._scripts = {}
        registered = self._scripts.get(text)
        if registered is None:
            with self.conn_or_acquire() as client:
                registered = self._scripts[text] = _script(client, text)
        return registered

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
        if _clock() - self._beat_sent >= CONSUMER_DEAD_AFTER_S - HEARTBEAT_S:
            # Its heartbeat may have lapsed (a stall, Redis away) and a recovery may have
            # forgotten it: registered again before it lands anything, or a message it
            # landed and then died with would lie where no recovery looks.
            self._beat(sources[0])
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
            if _stopping.is_set():
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

    def take_landed(self) -> bytes | str | None:
        landed, self._landed = self._landed, None
        return landed

    def _dead_letter(
        self, landed: bytes | str | None, queue: str, error: MalformedMessageError
    ) -> None:
        """Keep a message that cannot be parsed as a dead letter, raw.

        ``landed``: the message as it lies on this consumer's landing list, which it
        leaves in the same step; None where kombu's BRPOP already took it off its queue.
        """
        if landed is None:
            raw = dumps(error.payload)
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
        from tether import deadletters, metrics  # they need the app, which loads this module

        if landed is None:
            with self.conn_or_acquire() as client:
                entry = client.xadd(
                    keys.DEAD_STREAM, fields, maxlen=deadletters.MAXLEN, approximate=True
                )
        else:
            assert self.consumer_id is not None  # only a consumer lands messages
            entry = self.script(DEADLETTER_SCRIPT)(
                keys=[keys.consumer_landing(self.consumer_id), keys.DEAD_STREAM],
                args=[landed, deadletters.MAXLEN, *(v for pair in fields.items() for v in pair)],
            )
        if entry is None:
            return  # a give-back or a recovery took it first: whoever takes it next keeps it
        metrics.DEAD_LETTERS.labels(UNPARSEABLE_TASK, ErrorCategory.internal).inc()
        log.warning(
            "unparseable_message_dead_lettered",
            queue=queue,
            reason=error.what,
            dead_letter=bytes_to_str(entry),
            size=len(raw),
        )

    def _return_landed(self, queue: str | None) -> None:
        landed = self.take_landed()
        if landed is None or self.consumer_id is None:
            return
        landing = keys.consumer_landing(self.consumer_id)
        with self.conn_or_acquire() as client:
            if queue is None:
                client.lrem(landing, 1, landed)  # type: ignore[arg-type]
            else:
                self.script(RETURN_SCRIPT)(keys=[landing, queue], args=[landed])

    def give_back_landed(self) -> None:
        """Put every message on this consumer's landing list back on its queue."""
        if self._owner_pid != os.getpid() or self.consumer_id is None:
            return
        landing = keys.consumer_landing(self.consumer_id)
        with self.conn_or_acquire() as client:
            _drain_landing(client, landing, client.hget(keys.CONSUMERS, self.consumer_id))

    Message = Message

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
        sent = _clock()
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.consumer_alive(self.consumer_id), source, ex=CONSUMER_DEAD_AFTER_S)
            pipe.hset(keys.CONSUMERS, self.consumer_id, source)
            pipe.execute()
        self._beat_sent = max(self._beat_sent, sent)

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
            except Exception:
                # A recovery that fails (a corrupt record) must not stop the beat: a
                # silent consumer is judged dead and its running messages handed out again.
                log.exception("consumer_heartbeat_recovery_failed", consumer=self.consumer_id)

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


def registered_consumers(client: redis.Redis) -> list[str]:
    return [bytes_to_str(c) for c in client.hkeys(keys.CONSUMERS)]


def protect_held(client: redis.Redis, unacked_index_key: str) -> int:
    """Keep every message a registered consumer holds off the visibility timeout.

    One script for them all, however many: a dead consumer's messages go back by
    recovery, in seconds, and a live one's are still running.
    """
    held = [keys.consumer_held(c) for c in registered_consumers(client)]
    if not held:
        return 0
    return int(_script(client, PROTECT_SCRIPT)(keys=[unacked_index_key, *held], args=[time.time()]))


def recover_dead_consumers(client: redis.Redis, qos: QoS) -> list[str]:
    """Put every dead consumer's landed and held messages back on their queues."""
    consumers = registered_consumers(client)
    pairs = [
        key for c in consumers for key in (keys.consumer_alive(c), keys.consumer_recovering(c))
    ]
    claimed = _script(client, CLAIM_SCRIPT)(
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


def recover_consumer(client: redis.Redis, qos: QoS, consumer: str, own: bool = False) -> None:
    """Return ``consumer``'s messages to their queues and forget it.

    Landed messages were never recorded, so they go back as they were; held
    ones are restored by kombu (which counts one more delivery). A recoverer
    that dies midway leaves the rest for the next, once its claim lapses. A
    consumer that beats again meanwhile (it was only stalled) stays registered.
    """
    landing = keys.consumer_landing(consumer)
    _drain_landing(client, landing, client.hget(keys.CONSUMERS, consumer))
    held = keys.consumer_held(consumer)
    tags = [bytes_to_str(tag) for tag in client.smembers(held)]
    for tag in tags:
        qos.restore_by_tag(tag, client)
    if tags:
        client.srem(held, *tags)
    _script(client, FORGET_SCRIPT)(
        keys=[
            keys.CONSUMERS,
            keys.consumer_alive(consumer),
            held,
            keys.consumer_recovering(consumer),
        ],
        args=[consumer, "1" if own else "0"],
    )


def _drain_landing(client: redis.Redis, landing: str, source: bytes | str | None) -> None:
    """Move every message on a landing list back to the head of its queue, in order."""
    if source is None:
        return
    while client.lmove(landing, bytes_to_str(source), "LEFT", "RIGHT") is not None:
        pass
