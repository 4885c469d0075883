"""`tether health SERVICE`, as the compose healthchecks and the Kubernetes probes run it."""

from __future__ import annotations

import os
import subprocess
import sys

from tether.config import Settings
from tether.dev.redis_server import free_port
from tether.dev.stack import SERVICES, DevStack
from tether.worker import health


def _health(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, COLUMNS="300", TETHER_REDIS_URL=redis_url)
    env.pop("TETHER_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_each_service_of_the_stack_is_healthy(stack: DevStack) -> None:
    # The command as the probes run it, once; the check itself for each service.
    done = _health("planner", "--timeout", "5", redis_url=stack.redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "planner-" in done.stdout
    for service in SERVICES:
        problems, nodes = health.check(service, Settings(redis_url=stack.redis_url))
        assert problems == [] and nodes and all(n.startswith(f"{service}-") for n in nodes)


def test_unhealthy_without_redis_says_why() -> None:
    done = _health("planner", "--timeout", "1", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert "redis" in done.stdout and "did not answer" in done.stdout


def test_unhealthy_when_no_worker_of_that_service_answers(stack: DevStack) -> None:
    # Redis answers and workers are up, but none on that host: the probe of a pod
    # whose worker died while others live elsewhere must fail.
    problems, nodes = health.check(
        "executor", Settings(redis_url=stack.redis_url), host="elsewhere", timeout_s=1.0
    )
    assert nodes == []
    assert any("no executor worker matching executor-*@elsewhere" in p for p in problems)
    done = _health("nosuch", redis_url=stack.redis_url)
    assert done.returncode == 1 and "unknown service" in done.stdout
