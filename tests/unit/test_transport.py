"""The reliable Redis transport on a real redis-server, through kombu itself."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Consumer, Message, Producer, Queue

from tether import keys
from tether.transport import DELIVERIES_HEADER, RedisTransport, recover_dead_consumers

QUEUE = "tether.test"


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    conn = Connection(
        redis_url,
        transport=RedisTransport,
        transport_options={"visibility_timeout": 1, "priority_steps": [0]},
    )
    yield conn
    conn.release()


def publish(conn: Connection, body: str) -> None:
    Producer(conn.channel()).publish(body, exchange="", routing_key=QUEUE, serializer="json")


def take_one(conn: Connection) -> tuple[Message, Consumer]:
    got: list[Message] = []
    consumer = Consumer(conn, [Queue(QUEUE)], callbacks=[lambda _body, m: got.append(m)])
    consumer.consume()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            continue
    assert got, "no message arrived"
    return got[0], consumer


def test_a_taken_message_is_held_by_its_consumer_until_acknowledged(
    connection: Connection, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(connection, "hello")
    message, consumer = take_one(connection)
    channel = consumer.channel
    consumer_id = channel.consumer_id
    assert consumer_id is not None
    assert client.hget(keys.CONSUMERS, consumer_id) == QUEUE
    assert client.exists(keys.consumer_alive(consumer_id))
    assert client.llen(keys.consumer_landing(consumer_id)) == 0  # recorded: off the landing list
    assert client.smembers(keys.consumer_held(consumer_id)) == {message.delivery_tag}
    assert client.hexists("unacked", message.delivery_tag)

    message.ack()
    assert client.smembers(keys.consumer_held(consumer_id)) == set()
    assert not client.hexists("unacked", message.delivery_tag)


def test_a_live_consumers_message_outlives_the_visibility_timeout(
    connection: Connection, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(connection, "long job")
    message, consumer = take_one(connection)
    time.sleep(1.5)  # past the 1 s visibility timeout
    consumer.channel.qos.restore_visible(num=100, interval=1)
    assert client.llen(QUEUE) == 0  # not handed to anyone else
    assert client.hexists("unacked", message.delivery_tag)
    message.ack()


def test_a_dead_consumers_landed_and_held_messages_go_back_to_the_queue(
    connection: Connection, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(connection, "held")
    held, consumer = take_one(connection)
    publish(connection, "landed")
    dead = consumer.channel.consumer_id
    assert dead is not None
    # The dead consumer had also taken a second message and not recorded it yet.
    client.lmove(QUEUE, keys.consumer_landing(dead), "RIGHT", "LEFT")
    consumer.channel._stopped.set()  # its heartbeat stops, as with SIGKILL
    client.delete(keys.consumer_alive(dead))

    recovered = recover_dead_consumers(client, consumer.channel.qos)
    assert recovered == [dead]
    back = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
    bodies = sorted(json.loads(base64.b64decode(m["body"])) for m in back)
    assert len(back) == 2, back
    deliveries = {m["headers"].get(DELIVERIES_HEADER, 1) for m in back}
    assert deliveries == {1, 2}  # the held one was delivered once already; the landed one never
    assert not client.hexists("unacked", held.delivery_tag)
    assert client.hget(keys.CONSUMERS, dead) is None
    assert client.exists(keys.consumer_landing(dead), keys.consumer_held(dead)) == 0
    assert bodies == ["held", "landed"]
