"""Publishing: a message lands on its queue, and inside a task it leaves with the task's writes."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import pytest
import redis

from tether import runtime as runtime_module
from tether.config import Settings
from tether.runtime import Runtime
from tether.transport import celery_app, held_publish
from tether.transport.wire import EventKind
from tether.worker.task import TetherTask


def test_publish_lands_after_redis_lost_its_bindings(runtime: Runtime) -> None:
    runtime.send_step("run_a", 0)
    assert runtime.store.client.llen("tether.plan") == 1

    # What a Redis restarted without its data looks like to a long-lived publisher.
    runtime.store.client.flushdb()
    runtime.send_step("run_a", 1)

    assert runtime.store.client.llen("tether.plan") == 1


def _queued(runtime: Runtime, queue: str) -> list[dict[str, Any]]:
    """The Celery messages on ``queue``, oldest first, as a worker decodes them."""
    raw = runtime.store.client.lrange(queue, 0, -1)
    return [json.loads(m) for m in reversed(raw)]


def _kwargs(message: dict[str, Any]) -> dict[str, Any]:
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == []
    return dict(kwargs)


def test_a_message_published_inside_a_task_leaves_with_the_tasks_next_round_trip(
    runtime: Runtime,
) -> None:
    events = runtime.store.client.pubsub()
    events.psubscribe("*celeryev/task.sent")
    events.get_message(timeout=1)  # the subscription's confirmation
    runtime.store.begin_task()
    try:
        runtime.store.log.append(
            "run_a", EventKind.observation, 0, text="written before the publish"
        )
        runtime.send_step("run_a", 4)
        # Nothing has left yet: the log entry and the message are held together.
        assert runtime.store.client.llen("tether.plan") == 0
        assert runtime.store.client.xlen("tether:run:{run_a}:log") == 0

        runtime.store.flush()

        (message,) = _queued(runtime, "tether.plan")
        assert message["headers"]["task"] == celery_app.STEP
        assert _kwargs(message) == {"run_id": "run_a", "step": 4}
        assert message["properties"]["delivery_info"]["routing_key"] == "tether.plan"
        # What the consumer may read went out first, in the same round trip.
        assert runtime.store.client.xlen("tether:run:{run_a}:log") == 1
        sent = events.get_message(timeout=2)
        assert sent is not None
        body = json.loads(base64.b64decode(json.loads(sent["data"])["body"]))
        assert (body["type"], body["uuid"]) == ("task-sent", message["headers"]["id"])
    finally:
        runtime.store.end_task()
        events.close()


def test_a_message_leaves_at_once_outside_a_task_or_through_a_broker_of_its_own(
    runtime: Runtime, redis_url: str
) -> None:
    runtime.send_step("run_a", 1)
    assert runtime.store.client.llen("tether.plan") == 1

    # A broker named apart from the run store (TETHER_BROKER_URL), even the same
    # Redis: Celery publishes at once, as it would to a Redis of its own.
    apart = Runtime(Settings(redis_url=redis_url, broker_url=redis_url))
    assert not apart.broker_is_store
    apart.store.begin_task()
    try:
        apart.send_step("run_a", 2)
        assert apart.store.client.llen("tether.plan") == 2
    finally:
        apart.store.end_task()


def test_a_tasks_held_messages_leave_before_the_task_returns(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "_runtime", runtime)
    queue_lengths: list[int] = []

    @runtime.celery.task(base=TetherTask, name="tests.publishes_a_step", shared=False)
    def publishes_a_step() -> None:
        runtime.send_step("run_b", 1)
        queue_lengths.append(runtime.store.client.llen("tether.plan"))

    runtime.store.begin_task()
    try:
        publishes_a_step()
        # Sent inside the task's body: before Celery would acknowledge its message.
        assert queue_lengths == [0]
        assert runtime.store.batch.pending == 0
        assert [_kwargs(m) for m in _queued(runtime, "tether.plan")] == [
            {"run_id": "run_b", "step": 1}
        ]
    finally:
        runtime.store.end_task()


def test_a_held_publish_batch_outside_a_task_sends_at_once(runtime: Runtime) -> None:
    # Nothing would send held writes later outside a task: the batch's end sends them.
    with (
        runtime.celery.producer_or_acquire() as producer,
        held_publish.publishing_into(runtime.store.batch),
        producer.batch(),
    ):
        runtime.celery.send_task(
            celery_app.STEP,
            kwargs={"run_id": "run_c", "step": 0},
            producer=producer,
            **celery_app.direct_route("tether.plan"),
        )
        assert runtime.store.client.llen("tether.plan") == 0
    assert [_kwargs(m) for m in _queued(runtime, "tether.plan")] == [{"run_id": "run_c", "step": 0}]


def test_a_task_whose_held_messages_cannot_be_sent_fails(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failing, the task's message is not acknowledged (task_acks_on_failure_or_timeout
    # is off) and comes back: its handler publishes again, so no message is lost.
    monkeypatch.setattr(runtime_module, "_runtime", runtime)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    unreachable = redis.Redis(port=dead_port, socket_connect_timeout=0.5, retry=None)

    @runtime.celery.task(base=TetherTask, name="tests.publishes_then_loses_redis", shared=False)
    def publishes_then_loses_redis() -> None:
        runtime.send_step("run_d", 1)
        monkeypatch.setattr(runtime.store.batch, "client", unreachable)

    runtime.store.begin_task()
    try:
        with pytest.raises(redis.ConnectionError):
            publishes_then_loses_redis()
    finally:
        monkeypatch.undo()
        runtime.store.end_task()
    assert runtime.store.client.llen("tether.plan") == 0
