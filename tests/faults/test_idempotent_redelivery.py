"""An idempotent tool's worker killed mid-call, on real workers with default settings:
the redelivered action runs again without waiting for a lease (the fast path takes
none), at most twice, and its observation counts once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import read_ledger
from tests.faults.test_recovery import kill_group
from tests.integration.helpers import kinds, wait_for, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import ToolAction


@pytest.fixture(scope="module")
def stack(ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = Path(tmp_path_factory.mktemp("fast-path-logs"))
    with started_stack(
        DevStack(
            agent_modules=["tests.agents"],
            concurrency=1,
            log_dir=logs,
            env={"LEDGER_DIR": str(ledger_dir)},
        )
    ) as running:
        yield running


def test_a_killed_idempotent_call_runs_at_most_twice_and_counts_once(stack: DevStack) -> None:
    rt = Runtime(Settings(redis_url=stack.redis_url))
    run_id = client.submit("surveyor", "survey the site", runtime=rt)

    def attempts() -> int:
        return sum(1 for line in read_ledger() if line == f"{run_id} survey started")

    wait_for(lambda: attempts() == 1, timeout_s=30, what="the survey to start")
    state = rt.store.load(run_id)
    (action,) = state.pending_actions
    assert isinstance(action, ToolAction) and action.idempotent
    # Mid-call on the fast path: no lease was taken for it.
    assert rt.store.client.exists(keys.action_lock(action.action_id)) == 0
    kill_group(stack, "executor")
    stack.start_worker("executor")

    done = wait_status(rt, run_id, "succeeded", timeout_s=60)
    assert done.result == 'survey said: {"result": "surveyed"}'
    assert attempts() == 2  # run again once, never more
    stored = rt.store.results.get(action.action_id)
    assert stored is not None and stored.ok
    assert done.completed_actions == [stored]
    assert rt.store.budgets.usage(run_id).tool_calls == 1
    assert kinds(rt, run_id).count("tool_call") == 1
    assert kinds(rt, run_id).count("observation") == 1
    assert rt.store.client.exists(keys.action_lock(action.action_id)) == 0
