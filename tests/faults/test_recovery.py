"""A dead worker delays a run by seconds, with default settings, and loses nothing.

The stack here keeps every delivery setting at its default (visibility timeout
600 s, stall threshold 300 s): recovery comes from consumer liveness
(tether.transport.reliable), not from a short timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agents import read_ledger
from tests.integration.helpers import kinds, wait_for, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.transport.celery_app import PLAN_QUEUE
from tether.transport.wire import TaskEvent

RECOVERY_BOUND_S = 30.0


@pytest.fixture(scope="module")
def default_stack(ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = Path(tmp_path_factory.mktemp("recovery-logs"))
    with started_stack(
        DevStack(
            agent_modules=["tests.agents"],
            concurrency=1,
            log_dir=logs,
            env={"LEDGER_DIR": str(ledger_dir)},
        )
    ) as stack:
        yield stack


@pytest.fixture
def drt(default_stack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=default_stack.redis_url))


def kill_group(stack: DevStack, service: str) -> None:
    """What a pod dying looks like: SIGKILL to the worker's whole process group."""
    os.killpg(stack.workers[service].pid, signal.SIGKILL)
    stack.workers[service].wait()


def test_start_message_taken_by_a_planner_that_dies_still_becomes_a_run(
    drt: Runtime, default_stack: DevStack
) -> None:
    """The window kombu leaves open: popped from the queue, not yet recorded, worker gone."""
    broker = redis.Redis.from_url(default_stack.redis_url)
    planner = default_stack.workers["planner"]
    os.killpg(planner.pid, signal.SIGSTOP)
    try:
        # The stopped planner's blocking move is served by Redis all the same: the
        # message leaves the queue for that planner's landing list, and stays there.
        drt.publish_event(TaskEvent(event_id="evt-popped", agent="calculator", input="2 + 3?"))
        wait_for(lambda: broker.llen(PLAN_QUEUE) == 0, what="the planner to take the message")
        landed = sum(
            broker.llen(keys.consumer_landing(c.decode())) for c in broker.hkeys(keys.CONSUMERS)
        )
        assert landed == 1
    finally:
        os.killpg(planner.pid, signal.SIGKILL)
        planner.wait()
    killed = time.monotonic()
    default_stack.start_worker("planner")

    run_id = run_id_for("evt-popped")
    state = wait_status(drt, run_id, "succeeded", timeout_s=RECOVERY_BOUND_S)
    assert time.monotonic() - killed <= RECOVERY_BOUND_S
    assert state.result is not None and "5" in state.result
    assert kinds(drt, run_id).count("run_started") == 1
    assert kinds(drt, run_id).count("run_finished") == 1


def test_executor_killed_mid_tool_recovers_within_seconds_on_default_settings(
    drt: Runtime, default_stack: DevStack
) -> None:
    assert drt.settings.visibility_timeout_s >= 600
    run_id = client.submit("surveyor", "survey the site", runtime=drt)

    def attempts() -> int:
        return sum(1 for line in read_ledger() if line == f"{run_id} survey started")

    wait_for(lambda: attempts() == 1, timeout_s=20, what="the survey to start")
    kill_group(default_stack, "executor")
    killed = time.monotonic()
    default_stack.start_worker("executor")

    state = wait_status(drt, run_id, "succeeded", timeout_s=RECOVERY_BOUND_S + 10)
    recovery_s = time.monotonic() - killed
    assert recovery_s <= RECOVERY_BOUND_S, f"took {recovery_s:.1f}s after SIGKILL"
    assert state.result == 'survey said: {"result": "surveyed"}'
    assert attempts() == 2  # idempotent: run again, once
    assert kinds(drt, run_id).count("run_finished") == 1
