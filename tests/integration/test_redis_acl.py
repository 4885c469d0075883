"""The Redis ACL that docker-compose.yml and deploy/k8s/redis.yaml set up lets Tether work.

The ACL line is read from docker-compose.yml itself, so narrowing it there
(dropping a command the workers need) fails here: a real redis-server with that
ACL file and the default user off, real workers logged in as "tether", one run
end to end, and `tether health`.
"""

from __future__ import annotations

import re
import secrets
import subprocess
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


def _acl_line(password: str) -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    script = compose["services"]["redis"]["command"][-1]
    template = re.search(r"printf '([^']*)'", script)
    assert template, script
    k8s = (ROOT / "deploy" / "k8s" / "redis.yaml").read_text()
    assert template.group(1) in k8s, "compose and k8s grant Redis different ACLs"
    return template.group(1).replace("\\n", "\n").replace("%s", password)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = Path(tmp_path_factory.mktemp("acl-redis"))
    password = secrets.token_hex(16)
    (data / "users.acl").write_text(_acl_line(password))
    port = free_port()
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
         "--aclfile", str(data / "users.acl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://tether:{password}@127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.1"], check=False)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_a_run_goes_through_redis_with_the_deploy_acl(
    acl_redis: str, tmp_path: Path
) -> None:
    anonymous = redis.Redis.from_url(acl_redis.replace("tether:", "default:", 1))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    user = redis.Redis.from_url(acl_redis)
    with pytest.raises(redis.ResponseError):
        user.flushall()
    with DevStack(redis_url=acl_redis, agent_modules=["tests.agents"], log_dir=tmp_path) as stack:
        runtime = Runtime(Settings(redis_url=stack.redis_url))
        run_id = client.submit("calculator", "What is 2 + 3?", runtime=runtime)
        state = client.wait(run_id, timeout_s=60, runtime=runtime)
        assert state.status == "succeeded", state.error
        problems, nodes = health.check("planner", runtime.settings, timeout_s=5)
        assert problems == [] and nodes
