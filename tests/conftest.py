"""Fixtures: a redis-server the suite starts itself, and the embedded stack on it.

Nothing here touches a Redis the suite did not start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agents import CALCULATOR_TURNS
from tests.stacks import STOPPING
from tether.config import Settings
from tether.dev.redis_server import RedisServer
from tether.dev.stack import DevStack
from tether.models import from_turns
from tether.runtime import Runtime
from tether.store.connection import connect
from tether.testing.openai_server import ScriptedOpenAIServer

UNIT_DB = 1


@pytest.fixture(scope="session", autouse=True)
def _stacks_stopped() -> Iterator[None]:
    """Set up first, torn down last: every stack started_stack stopped in the background is gone."""
    yield
    for thread, _ in STOPPING:
        thread.join(60)
    assert not [t for t, _ in STOPPING if t.is_alive()], "a stack did not stop within 60 s"
    failures = [exc for _, errors in STOPPING for exc in errors]
    if failures:
        raise failures[0]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the suite's own server, for tests that need no workers."""
    url = f"redis://127.0.0.1:{redis_server.port}/{UNIT_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def runtime(redis_url: str) -> Runtime:
    return Runtime(Settings(redis_url=redis_url))


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    """A client of the unit tests' clean database, as the run store connects."""
    return connect(redis_url)


@pytest.fixture(scope="session")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where test tools write their side effects; the tests read the same files."""
    path = Path(tmp_path_factory.mktemp("ledger"))
    os.environ["LEDGER_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def openai_server() -> Iterator[ScriptedOpenAIServer]:
    """An OpenAI-compatible endpoint on loopback, reached through the real openai client."""
    with ScriptedOpenAIServer(from_turns(CALCULATOR_TURNS)) as server:
        yield server


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer,
    openai_server: ScriptedOpenAIServer,
    ledger_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevStack]:
    """Real planner, executor and escalation worker processes on the suite's Redis."""
    logs = Path(tmp_path_factory.mktemp("worker-logs"))
    env = {
        "SUPPORT_DESK_DB": str(logs / "support.sqlite3"),
        "LEDGER_DIR": str(ledger_dir),
        "FAKE_OPENAI_URL": openai_server.base_url,
    }
    with DevStack(
        redis_url=redis_server.url,
        agent_modules=["tests.agents", "tests.escalation_agents", "examples.support_desk.agent"],
        log_dir=logs,
        env=env,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def stack_runtime(stack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=stack.redis_url))
