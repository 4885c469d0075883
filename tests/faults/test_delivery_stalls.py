"""Redis away longer than a heartbeat lives: no live consumer is taken for dead.

A redis-server of this test's own is shut down past CONSUMER_DEAD_AFTER_S
(shortened here, with the heartbeat, to keep the test short) and started again
from its append-only file: every heartbeat key has lapsed by Redis's clock when
it comes back, though every consumer is alive and beats again within a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Consumer, Message, Producer, Queue

from tether import keys, transport
from tether.redis_server import RedisServer
from tether.transport import RedisTransport, recover_dead_consumers

DEAD_AFTER_S = 3
OUTAGE_S = DEAD_AFTER_S + 2


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


def consume(url: str, queue: str) -> tuple[Connection, Message, Consumer]:
    conn = Connection(
        url,
        transport=RedisTransport,
        transport_options={"visibility_timeout": 600, "priority_steps": [0]},
    )
    Producer(conn.channel()).publish("run", exchange="", routing_key=queue, serializer="json")
    got: list[Message] = []
    consumer = Consumer(conn, [Queue(queue)], callbacks=[lambda _b, m: got.append(m)])
    consumer.consume()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            continue
    assert got, f"nothing arrived on {queue}"
    return conn, got[0], consumer


def test_no_live_consumer_is_taken_for_dead_after_a_redis_outage(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "CONSUMER_DEAD_AFTER_S", DEAD_AFTER_S)
    monkeypatch.setattr(transport, "HEARTBEAT_S", 0.5)
    # The consumers reconnect only once the test's own sweep has run: that sweep is
    # the first worker back, and the rest come back a moment later.
    cut_off = threading.Event()
    beat = transport.ReliableChannel._beat

    def beat_unless_cut_off(channel: transport.ReliableChannel, source: str) -> None:
        if cut_off.is_set():
            raise redis.ConnectionError("cut off from Redis")
        beat(channel, source)

    monkeypatch.setattr(transport.ReliableChannel, "_beat", beat_unless_cut_off)
    first_conn, first, first_consumer = consume(own_redis.url, "tether.stall.a")
    second_conn, second, second_consumer = consume(own_redis.url, "tether.stall.b")
    live = {first_consumer.channel.consumer_id, second_consumer.channel.consumer_id}
    try:
        time.sleep(1.0)  # both consumers beat and sweep a few times
        cut_off.set()
        own_redis.stop()
        time.sleep(OUTAGE_S)
        own_redis.start()
        client = redis.Redis.from_url(own_redis.url, decode_responses=True)
        assert set(client.hkeys(keys.CONSUMERS)) == live  # kept in the append-only file
        assert client.exists(*(keys.consumer_alive(c) for c in live)) == 0  # lapsed meanwhile

        # The first worker back sweeps at once: everyone it finds silent was cut off too.
        assert recover_dead_consumers(client, first_consumer.channel.qos) == []
        cut_off.clear()
        time.sleep(DEAD_AFTER_S + 1)  # a full window: the consumers beat again
        assert set(client.hkeys(keys.CONSUMERS)) == live
        assert client.hlen("unacked") == 2  # both still running, nothing handed out again
        assert client.llen("tether.stall.a") == client.llen("tether.stall.b") == 0

        # The watch goes on: a consumer that really stops is still recovered in seconds.
        second_consumer.channel._stopped.set()
        deadline = time.monotonic() + DEAD_AFTER_S + 10
        while client.llen("tether.stall.b") == 0:
            assert time.monotonic() < deadline, "the stopped consumer was not recovered"
            time.sleep(0.2)
        assert client.hexists("unacked", first.delivery_tag)
        assert not client.hexists("unacked", second.delivery_tag)
        first.ack()
    finally:
        first_conn.release()
        second_conn.release()
