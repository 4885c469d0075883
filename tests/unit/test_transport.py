"""The reliable Redis transport on a real redis-server, through kombu itself."""

from __future__ import annotations

import base64
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from kombu import Connection, Consumer, Message, Producer, Queue
from packaging.requirements import Requirement

from tether.store import keys
from tether.transport import consumers, landing
from tether.transport import reliable as transport
from tether.transport.consumers import recover_dead_consumers
from tether.transport.reliable import DELIVERIES_HEADER, TESTED_KOMBU, RedisTransport

QUEUE = "tether.test"
OTHER_QUEUE = "tether.test.other"


def connect(redis_url: str) -> Connection:
    return Connection(
        redis_url,
        transport=RedisTransport,
        transport_options={"visibility_timeout": 1, "priority_steps": [0]},
    )


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    conn = connect(redis_url)
    yield conn
    conn.release()


def publish(conn: Connection, body: str, queue: str = QUEUE) -> None:
    Producer(conn.channel()).publish(body, exchange="", routing_key=queue, serializer="json")


def take(
    conn: Connection, n: int = 1, consumer: Consumer | None = None, queue: str = QUEUE
) -> tuple[list[Message], Consumer]:
    got: list[Message] = []
    if consumer is None:
        consumer = Consumer(conn, [Queue(queue)], callbacks=[lambda _body, m: got.append(m)])
        consumer.consume()
    else:
        consumer.callbacks = [lambda _body, m: got.append(m)]
    deadline = time.monotonic() + 5 + n / 20
    while len(got) < n and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            continue
    assert len(got) == n, f"{len(got)} of {n} messages arrived"
    return got, consumer


def take_one(conn: Connection) -> tuple[Message, Consumer]:
    got, consumer = take(conn)
    return got[0], consumer


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stall(client: redis.Redis, consumer: Consumer) -> str:
    """As if its worker stopped (SIGSTOP, a GC pause): no heartbeat, then recovered."""
    channel = consumer.channel
    channel.heartbeat._stopped.set()
    stalled: str = channel.consumer_id
    client.delete(keys.consumer_alive(stalled))

    def recovered() -> bool:
        recover_dead_consumers(client, channel.qos)  # or another consumer's sweep does
        return client.hget(keys.CONSUMERS, stalled) is None

    wait_until(recovered, "the stalled consumer's recovery")
    return stalled


def bodies(client: redis.Redis, queue: str = QUEUE) -> list[Any]:
    return [
        json.loads(base64.b64decode(json.loads(raw)["body"])) for raw in client.lrange(queue, 0, -1)
    ]


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
    consumer.channel.heartbeat._stopped.set()  # its heartbeat stops, as with SIGKILL
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


@pytest.mark.parametrize("late", ["ack", "reject", "requeue"])
def test_a_stalled_consumer_waking_up_acts_only_on_its_own_delivery(
    connection: Connection, redis_url: str, late: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(connection, "start run")
    first, stalled_consumer = take_one(connection)
    stall(client, stalled_consumer)
    assert bodies(client) == ["start run"]  # recovered: back on its queue

    other = connect(redis_url)
    try:
        second, taker = take_one(other)
        taker_id = taker.channel.consumer_id
        # The stalled consumer wakes up and finishes with the message it had.
        if late == "ack":
            first.ack()
        else:
            first.reject(requeue=late == "requeue")
        assert bodies(client) == []  # not put back while the other consumer holds it
        assert client.hexists("unacked", second.delivery_tag)
        assert client.smembers(keys.consumer_held(taker_id)) == {second.delivery_tag}

        # The consumer that holds it now dies: the message comes back, once.
        stall(client, taker)
        assert bodies(client) == ["start run"]
    finally:
        other.release()


def test_every_message_a_live_consumer_holds_outlives_the_visibility_timeout(
    connection: Connection, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    producer = Producer(connection.channel())
    for i in range(150):
        producer.publish(f"long job {i}", exchange="", routing_key=QUEUE, serializer="json")
    held, consumer = take(connection, 150)
    time.sleep(1.5)  # every one past the 1 s visibility timeout
    consumer.channel.qos.restore_visible(num=1000, interval=1)
    assert client.llen(QUEUE) == 0  # none handed to anyone else
    assert client.hlen("unacked") == 150
    for message in held:
        message.ack()


def test_a_give_back_racing_the_record_leaves_one_copy_only(
    connection: Connection, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM lands after the "stopping" check and before the record: the shutdown
    thread gives back what has landed while the consumer goes on to record it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    got: list[Message] = []
    consumer = Consumer(connection, [Queue(QUEUE)], callbacks=[lambda _b, m: got.append(m)])
    consumer.consume()
    channel = consumer.channel
    deliver = channel.connection._deliver
    raced: list[bool] = []

    def give_back_first(payload: Any, queue: str) -> None:
        if not raced:
            raced.append(True)
            channel.give_back_landed()  # what stop_consuming's thread does
        deliver(payload, queue)

    monkeypatch.setattr(channel.connection, "_deliver", give_back_first)
    publish(connection, "start run")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # long enough for a second copy to arrive too
        try:
            connection.drain_events(timeout=0.5)
        except TimeoutError:
            continue
    assert raced
    assert [m.payload for m in got] == ["start run"]  # run once, by one worker
    assert client.llen(QUEUE) == 0
    assert client.hlen("unacked") == 1
    got[0].ack()
    assert client.hlen("unacked") == 0


def test_a_consumer_forgotten_while_stalled_registers_again_before_it_lands(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "CONSUMER_DEAD_AFTER_S", 2)
    monkeypatch.setattr(consumers, "HEARTBEAT_S", 0.4)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stalled_conn, sweeper_conn = connect(redis_url), connect(redis_url)
    try:
        # Another worker, consuming another queue, sweeps for dead consumers.
        sweeper = Consumer(sweeper_conn, [Queue(OTHER_QUEUE)])
        sweeper.consume()
        with pytest.raises(TimeoutError):
            sweeper_conn.drain_events(timeout=0.2)

        publish(stalled_conn, "start run")
        _, consumer = take(stalled_conn)
        channel = consumer.channel
        stalled = channel.consumer_id
        channel.heartbeat._stopped.set()  # its heartbeat stops: a stall past CONSUMER_DEAD_AFTER_S
        wait_until(lambda: client.hget(keys.CONSUMERS, stalled) is None, "a recovery")
        assert bodies(client) == ["start run"]

        # It wakes up and takes the message again before its heartbeat thread beats.
        again, _ = take(stalled_conn, consumer=consumer)
        assert client.hget(keys.CONSUMERS, stalled) == QUEUE
        assert client.smembers(keys.consumer_held(stalled)) == {again[0].delivery_tag}
        # Then it dies for good: the message must come back, not lie stranded.
        wait_until(lambda: bodies(client) == ["start run"], "the message to come back")
        assert client.hget(keys.CONSUMERS, stalled) is None
    finally:
        stalled_conn.release()
        sweeper_conn.release()


def test_kombu_is_a_version_the_transport_was_tested_on() -> None:
    """The transport subclasses kombu's internals: an untested kombu must fail here."""
    minor = ".".join(kombu.__version__.split(".")[:2])
    assert minor in TESTED_KOMBU, (
        f"kombu {kombu.__version__} is installed; tether.transport.reliable was tested on kombu "
        f"{', '.join(TESTED_KOMBU)}: test the transport on it, then add it to TESTED_KOMBU "
        "and widen the pin in pyproject.toml"
    )
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    pin = next(r.specifier for r in pins if r.name == "kombu")
    for tested in TESTED_KOMBU:
        assert pin.contains(f"{tested}.0") and pin.contains(f"{tested}.99")
    major, newest = max(tuple(map(int, v.split("."))) for v in TESTED_KOMBU)
    assert not pin.contains(f"{major}.{newest + 1}.0"), f"pyproject lets kombu past {pin}"


FORGED_JSON = [
    json.dumps({"body": "eyJ4IjogMX0=", "headers": {}}),  # JSON without properties
    json.dumps({"body": "x", "properties": {"body_encoding": "base64"}}),  # no routing
    json.dumps(
        {
            "body": "a",  # not base64
            "properties": {
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
            },
        }
    ),
]


def test_an_unparseable_message_is_dead_lettered_and_blocks_nothing_behind_it(
    connection: Connection, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    forged = ["not json at all", *FORGED_JSON]
    for raw in forged:
        client.lpush(QUEUE, raw)  # ahead of the genuine one: a consumer takes the right end
    publish(connection, "start run")

    started = time.monotonic()
    message, consumer = take_one(connection)
    assert message.payload == "start run"
    assert time.monotonic() - started < 5
    consumer_id = consumer.channel.consumer_id
    assert client.llen(QUEUE) == 0
    assert client.llen(keys.consumer_landing(consumer_id)) == 0
    letters = [fields for _, fields in client.xrange(keys.DEAD_STREAM)]
    assert [json.loads(f["kwargs"])["raw"] for f in letters] == forged
    assert {f["task"] for f in letters} == {landing.UNPARSEABLE_TASK}
    assert {f["category"] for f in letters} == {"internal"}
    assert all(QUEUE in f["reason"] for f in letters)
    assert "not JSON" in letters[0]["reason"] and "properties" in letters[1]["reason"]
    message.ack()


def test_an_unparseable_message_read_by_brpop_is_dead_lettered(
    connection: Connection, redis_url: str
) -> None:
    """A channel consuming two queues falls back to kombu's BRPOP, which takes a message
    off its queue before it is parsed: kept as a dead letter, it stops no consumer."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for raw in FORGED_JSON:
        client.lpush(QUEUE, raw)
    publish(connection, "start run")
    consumer = Consumer(connection, [Queue(QUEUE), Queue(OTHER_QUEUE)])
    consumer.consume()
    (message,), _ = take(connection, consumer=consumer)
    assert message.payload == "start run"
    assert consumer.channel.consumer_id is None  # the BRPOP path, not the move
    letters = [fields for _, fields in client.xrange(keys.DEAD_STREAM)]
    assert [json.loads(json.loads(f["kwargs"])["raw"]) for f in letters] == [
        json.loads(raw) for raw in FORGED_JSON
    ]
    assert all(QUEUE in f["reason"] for f in letters)
    assert client.llen(QUEUE) == 0
    message.ack()


def test_a_delivery_read_by_brpop_gets_a_tag_of_its_own(
    connection: Connection, redis_url: str
) -> None:
    """A channel consuming two queues falls back to kombu's BRPOP: a stalled consumer's
    late ack must not erase the record of the consumer that took the message then."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(connection, "start run")
    first, stalled_consumer = take_one(connection)
    stall(client, stalled_consumer)
    assert bodies(client) == ["start run"]

    other = connect(redis_url)
    try:
        taker = Consumer(other, [Queue(QUEUE), Queue(OTHER_QUEUE)])
        taker.consume()
        (second,), _ = take(other, consumer=taker)
        assert taker.channel.consumer_id is None  # the BRPOP path, not the move
        assert second.delivery_tag != first.delivery_tag
        first.ack()  # the stalled consumer wakes up
        assert client.hexists("unacked", second.delivery_tag)
        second.ack()
        assert client.hlen("unacked") == 0
    finally:
        other.release()


def test_the_visible_scan_goes_past_an_orphan_it_may_not_restore(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphaned delivery of a queue this service's Redis user may not write
    (deploy/redis/users.acl) is left to a service that may; the scan restores the rest."""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    user = f"transport-test-{time.monotonic_ns()}"
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=["+secret"],
        commands=["+@all"],
        keys=[QUEUE, "unacked*", "tether:*", "_kombu.*", "*.pidbox"],
        channels=["*"],
    )
    port = admin.connection_pool.connection_kwargs["port"]
    db = admin.connection_pool.connection_kwargs["db"]
    conn = Connection(
        f"redis://{user}:secret@127.0.0.1:{port}/{db}",
        transport=RedisTransport,
        transport_options={"visibility_timeout": 1, "priority_steps": [0]},
    )
    try:
        publish(conn, "mine")
        _, consumer = take_one(conn)  # a consumer: it registers, and scans
        qos = consumer.channel.qos
        old = time.time() - 100
        for tag, queue, score in [("allowed", QUEUE, old), ("forbidden", OTHER_QUEUE, old + 1)]:
            payload = {"body": "", "headers": {}, "properties": {"delivery_tag": tag}}
            admin.hset("unacked", tag, json.dumps([payload, "", queue]))
            admin.zadd("unacked_index", {tag: score})
        # The forbidden one comes first in kombu's scan (newest first).
        qos.restore_visible(num=100, interval=1)
        assert admin.llen(QUEUE) == 1  # the allowed orphan is back on its queue
        assert not admin.hexists("unacked", "allowed")
        assert admin.hexists("unacked", "forbidden")  # left for a service that may write it
        assert admin.llen(OTHER_QUEUE) == 0
    finally:
        conn.release()
        admin.acl_deluser(user)


def test_a_failing_recovery_does_not_stop_the_heartbeat(
    connection: Connection, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "HEARTBEAT_S", 0.1)
    recover = consumers.recover_dead_consumers
    calls: list[int] = []

    def corrupt_once(client: redis.Redis, qos: transport.QoS) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a corrupt unacked payload")
        return recover(client, qos)

    monkeypatch.setattr(consumers, "recover_dead_consumers", corrupt_once)
    publish(connection, "start run")
    message, consumer = take_one(connection)
    wait_until(lambda: len(calls) >= 3, "the heartbeat to go on past the failure", 10)
    assert consumer.channel.heartbeat._thread.is_alive()
    message.ack()
