"""Stalls in delivery: a stopped consumer process, and Redis away longer than a heartbeat lives.

Each test has a redis-server of its own, and shortens CONSUMER_DEAD_AFTER_S and
the heartbeat to keep it short. A consumer stopped (SIGSTOP) past its heartbeat
is recovered, and when it wakes its ack undoes nothing of the consumer that took
its message meanwhile. Redis shut down and started again from its append-only
file finds every heartbeat key lapsed by its clock, though every consumer is
alive and beats again within a second: none of them is taken for dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from kombu import Connection, Consumer, Message, Producer, Queue

from tether.dev.redis_server import RedisServer
from tether.store import keys
from tether.transport import consumers
from tether.transport.consumers import Heartbeat, recover_dead_consumers
from tether.transport.reliable import RedisTransport

DEAD_AFTER_S = 3
OUTAGE_S = DEAD_AFTER_S + 2
QUEUE = "tether.stall"

# A worker process that takes one message, says which delivery it got, and acks
# it when told (a line on stdin), then exits.
CONSUMER = f"""
import json, sys, time
from kombu import Connection, Consumer, Queue
from tether.transport import consumers
from tether.transport.reliable import RedisTransport
consumers.CONSUMER_DEAD_AFTER_S = {DEAD_AFTER_S}
consumers.HEARTBEAT_S = 0.5
conn = Connection(
    sys.argv[1],
    transport=RedisTransport,
    transport_options={{"visibility_timeout": 600, "priority_steps": [0]}},
)
got = []
consumer = Consumer(conn, [Queue("{QUEUE}")], callbacks=[lambda _b, m: got.append(m)])
consumer.consume()
while not got:
    try:
        conn.drain_events(timeout=0.5)
    except TimeoutError:
        pass
print(json.dumps([consumer.channel.consumer_id, got[0].delivery_tag]), flush=True)
if sys.stdin.readline().strip() == "ack":
    got[0].ack()
    print("acked", flush=True)
"""


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


def start_consumer(url: str) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    consumer, tag = json.loads(process.stdout.readline())
    return process, consumer, tag


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_stopped_consumer_that_wakes_up_acks_only_its_own_delivery(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "CONSUMER_DEAD_AFTER_S", DEAD_AFTER_S)
    monkeypatch.setattr(consumers, "HEARTBEAT_S", 0.5)
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    # This process stands for the other workers: it consumes another queue and sweeps.
    sweeper, _, _ = consume(own_redis.url, "tether.stall.other")
    processes: list[subprocess.Popen[str]] = []
    try:
        Producer(sweeper.channel()).publish(
            "start run", exchange="", routing_key=QUEUE, serializer="json"
        )
        stopped, stopped_id, stopped_tag = start_consumer(own_redis.url)
        processes.append(stopped)
        os.kill(stopped.pid, signal.SIGSTOP)  # mid-task: a GC pause, a frozen VM
        wait_until(lambda: client.llen(QUEUE) == 1, "the stopped consumer's recovery", 20)

        taker, taker_id, taker_tag = start_consumer(own_redis.url)
        processes.append(taker)
        os.kill(stopped.pid, signal.SIGCONT)
        assert stopped.stdin is not None and stopped.stdout is not None
        stopped.stdin.write("ack\n")
        stopped.stdin.flush()
        assert stopped.stdout.readline().strip() == "acked"
        assert stopped.wait(timeout=20) == 0
        # Its ack left the delivery of the consumer that holds the message now.
        assert client.hexists("unacked", taker_tag)
        assert client.smembers(keys.consumer_held(taker_id)) == {taker_tag}

        taker.kill()  # and that one dies: the message comes back, once
        taker.wait()
        wait_until(lambda: client.llen(QUEUE) == 1, "the message to come back", 20)
        assert not client.hexists("unacked", taker_tag)
        # The recovery restores the message, then forgets the consumer: a moment apart.
        wait_until(
            lambda: client.hget(keys.CONSUMERS, taker_id) is None, "the dead one forgotten", 5
        )
        assert stopped_tag != taker_tag and stopped_id != taker_id
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
        sweeper.release()


def test_no_live_consumer_is_taken_for_dead_after_a_redis_outage(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "CONSUMER_DEAD_AFTER_S", DEAD_AFTER_S)
    monkeypatch.setattr(consumers, "HEARTBEAT_S", 0.5)
    # The consumers reconnect only once the test's own sweep has run: that sweep is
    # the first worker back, and the rest come back a moment later.
    cut_off = threading.Event()
    beat = Heartbeat.beat

    def beat_unless_cut_off(heartbeat: Heartbeat) -> None:
        if cut_off.is_set():
            raise redis.ConnectionError("cut off from Redis")
        beat(heartbeat)

    monkeypatch.setattr(Heartbeat, "beat", beat_unless_cut_off)
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
        second_consumer.channel.heartbeat._stopped.set()
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
