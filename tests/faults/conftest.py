"""A stack of its own for fault tests: its own Redis (so it can be restarted),
a fault-injecting model endpoint, and delivery timings short enough that a
killed worker's messages come back within seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import calculator_script
from tests.stacks import started_stack
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.testing.openai_server import ScriptedOpenAIServer

VISIBILITY_S = 8
STALLED_AFTER_S = 10  # past the hard time limit and the visibility timeout, as it must be


@pytest.fixture(scope="session")
def fault_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(calculator_script, retry_after_s=0.2, slow_s=2.0) as server:
        yield server


# Package-scoped: its workers stop (in the background) once the fault tests are done.
@pytest.fixture(scope="package")
def fault_stack(
    fault_server: ScriptedOpenAIServer, ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    logs = Path(tmp_path_factory.mktemp("fault-logs"))
    env = {
        "FAULT_OPENAI_URL": fault_server.base_url,
        "LEDGER_DIR": str(ledger_dir),
        "TETHER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "TETHER_UNACKED_RESTORE_INTERVAL_S": "1",
        "TETHER_TASK_SOFT_TIME_LIMIT_S": "5",
        "TETHER_TASK_TIME_LIMIT_S": "6",
        "TETHER_RUN_STALLED_AFTER_S": str(STALLED_AFTER_S),
        "TETHER_RECONCILE_INTERVAL_S": "1",
    }
    with started_stack(
        DevStack(agent_modules=["tests.agents"], concurrency=1, log_dir=logs, env=env)
    ) as stack:
        yield stack


@pytest.fixture
def frt(fault_stack: DevStack, fault_server: ScriptedOpenAIServer) -> Iterator[Runtime]:
    fault_server.schedule.clear()
    fault_server.fault_rate = 0.0
    yield Runtime(Settings(redis_url=fault_stack.redis_url))
    fault_server.schedule.clear()
