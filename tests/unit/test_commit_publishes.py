"""A decision commit sends the actions it leaves pending in its own script: the winner
publishes with no round trip of its own, and a commit that loses publishes nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.errors import StaleStateError, TetherError
from tether.planner import outbox
from tether.runtime import Runtime
from tether.store.batch import WriteBatch
from tether.store.versioned import SideWrite, VersionedDocs
from tether.transport import held_publish
from tether.transport.celery_app import TOOLS_QUEUE
from tether.transport.wire import ToolAction


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands of each pipeline sent from here on, by name (a script's own
    commands are not among them)."""
    sent: list[list[str]] = []
    execute = Pipeline.execute

    def recorded(pipe: Pipeline, *args: Any, **kwargs: Any) -> Any:
        sent.append([str(command[0]).upper() for command, _ in pipe.command_stack])
        return execute(pipe, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", recorded)
    return sent


def test_a_commit_sends_its_messages_only_if_it_wins(client: redis.Redis) -> None:
    """Mutant: versioned.lua's PUBLISH loop or LPUSH run before the version check."""
    docs = VersionedDocs(WriteBatch(client))
    events = client.pubsub()
    events.subscribe("events-of-test")
    events.get_message(timeout=1)  # the subscription's confirmation
    sends = [
        SideWrite("LPUSH", "queue-of-test", ("message one",)),
        SideWrite("PUBLISH", "events-of-test", ("sent one",)),
    ]
    assert docs.write("doc-of-test", "{}", 0, side_writes=sends) == 1
    with pytest.raises(StaleStateError):
        docs.write("doc-of-test", "{}", 0, side_writes=sends)
    assert client.lrange("queue-of-test", 0, -1) == ["message one"]
    got = events.get_message(timeout=1)
    assert got is not None and got["data"] == "sent one"
    assert events.get_message(timeout=0.2) is None  # the losing write published nothing
    events.close()


def test_a_tool_call_step_publishes_its_action_inside_its_decision_commit(
    runtime: Runtime, client: redis.Redis, round_trips: list[list[str]]
) -> None:
    """Mutant: tool_calls._commit leaving in_commit off, or publishing again after it."""
    events = client.pubsub()
    events.psubscribe("*celeryev/task.sent")
    events.get_message(timeout=1)
    runtime.store.begin_task()
    try:
        run_id = planner.start(
            runtime, {"event_id": "evt-in-commit", "agent": "calculator", "input": "2+3?"}
        )
    finally:
        runtime.store.end_task()
    assert run_id is not None
    # No LPUSH or PUBLISH of its own: the action left inside the commit's script, which
    # was the task's last round trip.
    assert not {"LPUSH", "PUBLISH"} & {name for trip in round_trips for name in trip}
    assert round_trips[-1][-1] == "EVALSHA"
    (raw,) = client.lrange(TOOLS_QUEUE, 0, -1)
    body = json.loads(raw)
    action = ToolAction.model_validate(json.loads(base64.b64decode(body["body"]))[1]["action"])
    (pending,) = runtime.store.load(run_id).pending_actions
    assert action == pending
    # Its task-sent event went out with it, once.
    sent = events.get_message(timeout=1)
    assert sent is not None
    event = json.loads(base64.b64decode(json.loads(sent["data"])["body"]))
    assert (event["type"], event["uuid"]) == ("task-sent", body["headers"]["id"])
    assert events.get_message(timeout=0.2) is None
    events.close()


def test_capturing_holds_nothing_back_and_sends_nothing(runtime: Runtime) -> None:
    """Mutant: Runtime._send ignoring the capture (the message joins the task's writes)."""
    load_agent_modules(["tests.agents"])
    action = ToolAction(
        action_id="run_x:0:0",
        run_id="run_x",
        agent="calculator",
        step=0,
        tool="add",
        tool_call_id="call_0",
        arguments={"a": 2, "b": 3},
    )
    runtime.store.begin_task()
    try:
        assert outbox.publishes_in_commit(runtime)
        with held_publish.capturing() as captured:
            runtime.send_action(action)
        assert runtime.store.batch.pending == 0
        assert [w.command for w in captured.side_writes] == ["LPUSH", "PUBLISH"]
        assert captured.side_writes[0].key == TOOLS_QUEUE
    finally:
        runtime.store.end_task()
    assert runtime.store.client.llen(TOOLS_QUEUE) == 0


def test_only_a_task_on_the_run_stores_broker_publishes_in_its_commit(redis_url: str) -> None:
    on_store = Runtime(Settings(redis_url=redis_url))
    assert not outbox.publishes_in_commit(on_store)  # outside a task: nothing holds writes
    apart = Runtime(Settings(redis_url=redis_url, broker_url=redis_url))
    apart.store.begin_task()
    try:
        assert not outbox.publishes_in_commit(apart)
        with held_publish.capturing(), pytest.raises(TetherError, match="not the run store"):
            apart.send_step("run_x", 0)
    finally:
        apart.store.end_task()


def test_a_message_a_commit_cannot_send_is_refused_clearly() -> None:
    with pytest.raises(TetherError, match=r"PEXPIRE .*publish it after the commit"):
        held_publish.Captured().defer("pexpire", "tether.tools", 1000)
