"""SIGTERM: a worker finishes what it runs, takes nothing new, and gives the rest back at once.

What Kubernetes (and `docker stop`) does to a pod: SIGTERM to the worker's main
process, SIGKILL once the grace period is over. Here the worker is SIGTERMed
mid-tool and mid-model-call while more messages are published for it; a second
worker of the same service is started at once, as a new pod would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
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
from tether.transport.celery_app import PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.consumers import CONSUMER_DEAD_AFTER_S
from tether.transport.delivery import deliveries

# Once the test opens a tool's or model call's gate (tests.shutdown_agents), the worker
# finishing it exits within this: its commit, Celery's warm shutdown and the pool's, while
# the new worker starts beside it on a loaded machine (CI took 5.1 s once).
EXITS_WITHIN_S = 10.0
# Well under CONSUMER_DEAD_AFTER_S: what a SIGTERMed worker did not run must not
# wait for its heartbeat to lapse.
BACK_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def shutdown_stack(
    ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    logs = Path(tmp_path_factory.mktemp("shutdown-logs"))
    env = {"LEDGER_DIR": str(ledger_dir), "SHUTDOWN_GATES": str(gates(shutdown_logs=logs))}
    with started_stack(
        DevStack(agent_modules=["tests.shutdown_agents"], concurrency=2, log_dir=logs, env=env)
    ) as stack:
        yield stack


@pytest.fixture
def srt(shutdown_stack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=shutdown_stack.redis_url))


def gates(shutdown_logs: Path) -> Path:
    """The folder of the gates the agents' tool and model calls wait on."""
    folder = shutdown_logs / "gates"
    folder.mkdir(exist_ok=True)
    return folder


def open_gates(stack: DevStack, names: list[str]) -> float:
    """Let those calls finish; returns when."""
    assert stack.log_dir is not None
    for name in names:
        (gates(stack.log_dir) / name).touch()
    return time.monotonic()


def consumer_of(broker: redis.Redis, queue: str) -> str:
    """The one consumer registered on ``queue`` (each service here has one worker)."""
    consumers: dict[bytes, bytes] = broker.hgetall(keys.CONSUMERS)  # type: ignore[assignment]
    found = [c.decode() for c, source in consumers.items() if source.decode() == queue]
    assert len(found) == 1, f"consumers of {queue}: {found}"
    return found[0]


def held(broker: redis.Redis, consumer: str) -> int:
    return int(broker.scard(keys.consumer_held(consumer)))


def queued_deliveries(broker: redis.Redis, queue: str) -> list[int]:
    return [deliveries(json.loads(m).get("headers")) for m in broker.lrange(queue, 0, -1)]


def sigterm(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM to the main process only, as the kubelet sends it; returns when it was sent."""
    os.kill(process.pid, signal.SIGTERM)
    return time.monotonic()


def assert_gone(broker: redis.Redis, consumer: str) -> None:
    assert not broker.hexists(keys.CONSUMERS, consumer)
    assert not broker.exists(
        keys.consumer_alive(consumer), keys.consumer_landing(consumer), keys.consumer_held(consumer)
    )


def drains_then_exits(
    stack: DevStack,
    service: str,
    queue: str,
    old: subprocess.Popen[bytes],
    consumer: str,
    holding: int,
    release: list[str],
) -> float:
    """The SIGTERMed ``service`` worker holds only its ``holding`` messages in hand while
    two late ones wait on ``queue``, their work held until this opens the ``release``
    gates; then, a new worker up, it exits within EXITS_WITHIN_S; returns when it exited."""
    broker = redis.Redis.from_url(stack.redis_url)
    time.sleep(1.0)  # a worker that still consumed would have taken one by now
    assert old.poll() is None, "it exited before the work in its hands was done"
    assert broker.llen(queue) == 2
    assert held(broker, consumer) == holding
    assert broker.llen(keys.consumer_landing(consumer)) == 0
    assert queued_deliveries(broker, queue) == [1, 1]

    stack.start_worker(service)
    released = open_gates(stack, release)
    assert old.wait(timeout=EXITS_WITHIN_S + 10) == 0
    exited = time.monotonic()
    took = exited - released
    assert took < EXITS_WITHIN_S, f"exited {took:.1f}s after its work was done"
    # Gone at once, not when its heartbeat lapses: nothing of it left to recover.
    assert_gone(broker, consumer)
    # Its SIGTERM handler ran without an error (under gevent, starting a thread there
    # raised BlockingSwitchOutError, and the landed messages waited for recovery).
    assert stack.log_dir is not None
    assert "BlockingSwitchOutError" not in (stack.log_dir / f"{service}.log").read_text()
    return exited


def test_executor_sigtermed_mid_tool_finishes_it_once_and_leaves_the_rest_to_others(
    srt: Runtime, shutdown_stack: DevStack
) -> None:
    broker = redis.Redis.from_url(shutdown_stack.redis_url)
    dead_before = broker.xlen(keys.DEAD_STREAM)
    old = shutdown_stack.workers["executor"]
    # One tool running on a two-process executor: it has room to take more.
    running = [client.submit("settler", "settle 0", runtime=srt)]

    def started(run_id: str) -> bool:
        return f"{run_id} settle started" in read_ledger()

    wait_for(lambda: all(started(r) for r in running), timeout_s=20, what="the tool to start")
    old_consumer = consumer_of(broker, TOOLS_QUEUE)
    sigterm(old)
    # Published while it drains: a draining executor must leave them on the queue.
    late = [client.submit("settler", f"late {i}", runtime=srt) for i in range(2)]
    wait_for(
        lambda: broker.llen(TOOLS_QUEUE) == 2 and old.poll() is None,
        timeout_s=10,
        what="the late actions to wait on the queue while it drains",
    )
    # The running tool is all it holds.
    exited = drains_then_exits(
        shutdown_stack, "executor", TOOLS_QUEUE, old, old_consumer, 1, running + late
    )

    for run_id in running + late:
        state = wait_status(srt, run_id, "succeeded", timeout_s=25)
        assert state.result == "settled"
    took = time.monotonic() - exited
    assert took < CONSUMER_DEAD_AFTER_S + 10  # the new worker's start included

    ledger = Counter(read_ledger())
    for run_id in running + late:
        assert ledger[f"{run_id} settle started"] == 1
        assert ledger[f"{run_id} settle done"] == 1
        assert kinds(srt, run_id).count("tool_call") == 1
    assert broker.xlen(keys.DEAD_STREAM) == dead_before
    wait_for(lambda: broker.llen(TOOLS_QUEUE) == 0, timeout_s=5, what="an empty tools queue")


def test_planner_sigtermed_mid_model_call_commits_each_step_once(
    srt: Runtime, shutdown_stack: DevStack
) -> None:
    broker = redis.Redis.from_url(shutdown_stack.redis_url)
    dead_before = broker.xlen(keys.DEAD_STREAM)
    old = shutdown_stack.workers["planner"]
    thinking = {
        client.submit("ponderer", f"ponder {i}", runtime=srt): f"ponder {i}" for i in range(2)
    }

    def in_call(label: str) -> bool:
        return f"{label} model started 0" in read_ledger()

    wait_for(lambda: all(in_call(x) for x in thinking.values()), timeout_s=20, what="model calls")
    old_consumer = consumer_of(broker, PLAN_QUEUE)
    sigterm(old)
    late = {client.submit("ponderer", f"late {i}", runtime=srt): f"late {i}" for i in range(2)}
    wait_for(
        lambda: broker.llen(PLAN_QUEUE) == 2 and old.poll() is None,
        timeout_s=10,
        what="the late events to wait on the queue while it drains",
    )
    # Both model calls are all it holds.
    release = [*thinking.values(), *late.values()]
    drains_then_exits(shutdown_stack, "planner", PLAN_QUEUE, old, old_consumer, 2, release)
    ledger = Counter(read_ledger())
    for label in thinking.values():
        # The call in flight at SIGTERM returned, in the worker that made it.
        assert ledger[f"{label} model done 0"] == 1

    for run_id in [*thinking, *late]:
        state = wait_status(srt, run_id, "succeeded", timeout_s=30)
        assert state.result == "jotted"
    ledger = Counter(read_ledger())
    for run_id, label in [*thinking.items(), *late.items()]:
        assert ledger[f"{label} model started 0"] == 1
        assert ledger[f"{label} model started 1"] == 1
        assert ledger[f"{run_id} jot"] == 1
        trace = Counter(kinds(srt, run_id))
        assert trace["model_call"] == 2 and trace["decision"] == 2
        assert trace["run_started"] == 1 and trace["run_finished"] == 1
    assert broker.xlen(keys.DEAD_STREAM) == dead_before
    wait_for(lambda: broker.llen(PLAN_QUEUE) == 0, timeout_s=5, what="an empty plan queue")
