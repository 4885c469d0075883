"""The Redis ACL that docker-compose.yml and deploy/k8s/redis.yaml set up lets Tether work.

The Redis container's own start script is run here, taken from
docker-compose.yml (tests/unit/test_deploy_manifests.py checks that k8s runs
the same one on the same deploy/redis/users.acl): it writes the ACL file out
with the passwords from the environment and starts a real redis-server on it.
Then real workers, each logged in as its own user, take one run end to end,
and `tether health` passes as each of them. Narrowing a user's rights below
what its service does fails here (and in test_redis_tls.py, over TLS).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tether import client, health
from tether.config import Settings
from tether.devstack import DevStack
from tether.redis_server import find_redis_server, free_port
from tether.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
USERS = ("planner", "executor", "escalation", "operator", "flower", "monitor")
SERVICES = ("planner", "executor", "escalation")


def _start_script(data: Path, port: int) -> str:
    """docker-compose.yml's Redis command, its paths moved into ``data``."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    script = str(compose["services"]["redis"]["command"][-1]).replace("$$", "$")
    script = script.replace("/etc/redis/users.acl", str(ROOT / "deploy" / "redis" / "users.acl"))
    script = script.replace("/tmp/users.acl", str(data / "users.acl"))
    script = script.replace("exec redis-server", f"exec {find_redis_server()}")
    # Later options win: a free port on loopback, files in ``data``, nothing saved.
    return script + f" --port {port} --bind 127.0.0.1 --dir {data} --save ''"


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {user: secrets.token_hex(16) for user in USERS}


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[int]:
    # The container's start script is what is under test: without awk it cannot run.
    assert shutil.which("awk"), "install awk (Debian: mawk) to run the Redis start script"
    data = Path(tmp_path_factory.mktemp("acl-redis"))
    port = free_port()
    env = {**os.environ, **{f"REDIS_{u.upper()}_PASSWORD": p for u, p in passwords.items()}}
    process = subprocess.Popen(
        ["sh", "-c", _start_script(data, port)],
        env=env,
        cwd=data,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(
        port=port, username="monitor", password=passwords["monitor"], socket_connect_timeout=0.2
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "the Redis start script failed"
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_the_start_script_refuses_a_missing_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env["REDIS_PLANNER_PASSWORD"] = "x"
    done = subprocess.run(
        ["sh", "-c", _start_script(tmp_path, free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "REDIS_EXECUTOR_PASSWORD is not set" in done.stderr


def test_a_run_goes_through_redis_with_the_deploy_acl(
    acl_redis: int, passwords: dict[str, str], tmp_path: Path
) -> None:
    def url(user: str) -> str:
        return f"redis://{user}:{passwords[user]}@127.0.0.1:{acl_redis}/0"

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis, username="default", password="x").ping()
    with pytest.raises(redis.ResponseError):
        redis.Redis.from_url(url("operator")).flushall()
    with DevStack(
        redis_url=url("operator"),
        service_urls={service: url(service) for service in SERVICES},
        agent_modules=["tests.agents"],
        log_dir=tmp_path,
    ) as stack:
        runtime = Runtime(Settings(redis_url=stack.redis_url))
        run_id = client.submit("calculator", "What is 2 + 3?", runtime=runtime)
        state = client.wait(run_id, timeout_s=60, runtime=runtime)
        assert state.status == "succeeded", state.error
        for service in SERVICES:
            problems, nodes = health.check(service, Settings(redis_url=url(service)), timeout_s=5)
            assert problems == [] and nodes, (service, problems)
    monitor = redis.Redis.from_url(url("monitor"))
    assert monitor.llen("tether.plan") == 0
