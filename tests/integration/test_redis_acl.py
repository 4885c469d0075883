"""The Redis ACL that docker-compose.yml and deploy/k8s's Redis set up lets Tether work.

The Redis container's own start script is run here, taken from
docker-compose.yml (tests/unit/test_deploy_k8s.py checks that k8s runs
the same one on the same deploy/redis/users.acl): it writes the ACL file out
with the passwords from the environment and starts a real redis-server on it.
Then real workers, each logged in as its own user, take one run end to end,
and `tether health` passes as each of them. Narrowing a user's rights below
what its service does fails here (and in test_redis_tls.py, over TLS). Widening
them fails here too: each user is refused, with NOPERM, the administrative
commands (in any letter case) and the writes to other services' queues and keys
that a stolen password of that user must not open.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import yaml

from tether import client
from tether.config import Settings
from tether.dev.redis_server import find_redis_server, free_port
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys
from tether.store.scripts import Script
from tether.transport import consumers
from tether.worker import health

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


# A run, an action and an escalation of it, as the services name their keys.
RUN = "run_0123456789abcdef0123"
ACTION = f"act_{RUN}_1_0"
ESCALATION = f"esc_{RUN}_1_0"

# What nobody may run, whatever the letter case: Redis administration and commands
# that wipe, block or reconfigure the server. (SHUTDOWN is checked in the file only.)
ADMIN = [
    ("flushall",),
    ("FlushAll",),
    ("FLUSHDB",),
    ("flushdb", "ASYNC"),
    ("keys", "*"),
    ("Config", "Get", "*"),
    ("CONFIG", "SET", "appendonly", "no"),
    ("Acl", "List"),
    ("acl", "setuser", "default", "on"),
    ("client", "list"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("script", "flush"),
    ("function", "flush"),
    ("save",),
    ("BgSave",),
    ("replicaof", "no", "one"),
    ("swapdb", "0", "1"),
    ("rename", "tether.plan", "gone"),
]
# Per user, writes to queues and keys of other services: each a door that a stolen
# password of that service must not open.
CROSSING = {
    "planner": [
        ("SET", keys.action_result(ACTION), "{}"),  # a tool result it did not run
        ("HSET", keys.memory("agent", "subject"), "k", "v"),
        ("SET", keys.notified(ESCALATION, "escalation_opened", "t"), "1"),
        ("SET", keys.eval_scenario(RUN), "{}"),
    ],
    "executor": [
        # Decisions travel on tether.escalations: the executor cannot send one.
        ("LPUSH", "tether.escalations", "{}"),
        ("rpush", "tether.escalations", "{}"),
        ("LMOVE", "tether.tools", "tether.escalations", "LEFT", "RIGHT"),
        # Nor write what a resume or re-run is checked against.
        ("SET", keys.escalation(ESCALATION), "{}"),
        ("Del", keys.escalation(ESCALATION)),
        ("ZADD", keys.PENDING_ESCALATIONS, "1", ESCALATION),
        ("HSET", keys.run(RUN), "status", "succeeded"),
        ("SET", keys.run(RUN), "{}"),
        ("RPUSH", keys.run_messages(RUN), "{}"),
        ("SET", keys.autonomy("agent", "tool"), "x"),
        ("XADD", keys.NOTIFICATIONS, "*", "event", "{}"),
        ("XADD", keys.REJECTED_STREAM, "*", "event", "{}"),
        ("RPUSH", keys.thread_queue("t"), "event"),
        ("SET", keys.eval_scenario(RUN), "{}"),
    ],
    "escalation": [
        ("LPUSH", "tether.tools", "{}"),  # a tool action
        ("lmove", "tether.escalations", "tether.tools", "LEFT", "RIGHT"),
        ("SET", keys.action_result(ACTION), "{}"),  # a tool result
        ("HSET", keys.run(RUN), "status", "succeeded"),
        ("RPUSH", keys.run_completed(RUN), "{}"),
        ("HSET", keys.memory("agent", "subject"), "k", "v"),
        ("RPUSH", keys.thread_queue("t"), "event"),
        ("XADD", keys.REJECTED_STREAM, "*", "event", "{}"),
        ("ZADD", keys.RUN_INDEX, "1", RUN),
    ],
    "operator": [
        ("LPUSH", "planner-1@host.celery.pidbox", "{}"),  # a worker's control queue
        ("SET", "elsewhere", "x"),
    ],
    "flower": [
        ("GET", keys.run(RUN)),
        ("LPUSH", "tether.plan", "{}"),
        ("LPUSH", "tether.tools", "{}"),
        ("LPUSH", "tether.escalations", "{}"),
        ("SET", keys.escalation(ESCALATION), "{}"),
    ],
    "monitor": [
        ("GET", keys.run(RUN)),
        ("LPUSH", "tether.plan", "{}"),
        ("LRANGE", "tether.plan", "0", "-1"),  # lengths only, not the messages
        ("PUBLISH", "/0.celery.pidbox", "{}"),
    ],
}
# Tether's own scripts go by SHA (tether.store.scripts): a script sent as text is
# one the code never sends, from a client that may have been stolen.
BY_SHA_ONLY = ("planner", "executor", "escalation", "operator")
TEXT_SCRIPTS = [("EVAL", "return 1", "0"), ("eval_ro", "return 1", "0")]
REFUSED = (
    [(user, command) for user in USERS for command in ADMIN]
    + [(user, command) for user, commands in CROSSING.items() for command in commands]
    + [(user, command) for user in BY_SHA_ONLY for command in TEXT_SCRIPTS]
)


@pytest.mark.parametrize(
    ("user", "command"), REFUSED, ids=[f"{u}-{' '.join(c)[:40]}" for u, c in REFUSED]
)
def test_each_user_is_refused_what_its_service_must_not_do(
    acl_redis: int, passwords: dict[str, str], user: str, command: tuple[str, ...]
) -> None:
    connection = redis.Redis(port=acl_redis, username=user, password=passwords[user])
    with pytest.raises(redis.exceptions.NoPermissionError):
        connection.execute_command(*command)


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("executor", keys.escalation(ESCALATION)),
        ("executor", keys.run(RUN)),
        ("escalation", keys.action_result(ACTION)),
    ],
)
def test_a_script_gets_no_more_than_its_caller(
    acl_redis: int, passwords: dict[str, str], user: str, key: str
) -> None:
    connection = redis.Redis(port=acl_redis, username=user, password=passwords[user])
    writes = Script("test_redis_acl/set.lua", "return redis.call('SET', KEYS[1], '{}')")
    with pytest.raises(redis.ResponseError, match=r"can't run this command|permission|NOPERM"):
        writes.run(connection, keys=[key])  # loaded (SCRIPT LOAD is allowed), then refused


DANGEROUS = [
    "flushall",
    "flushdb",
    "keys",
    "config",
    "debug",
    "acl",
    "client",
    "shutdown",
    "monitor",
    "save",
    "bgsave",
    "bgrewriteaof",
    "replicaof",
    "slaveof",
    "swapdb",
    "script|flush",
    "function",
    "module",
    "sync",
    "psync",
    "migrate",
    "restore",
    "failover",
    "cluster|reset",
    "cluster|addslots",
    "rename",
]


def test_the_file_grants_no_administrative_command_in_any_case() -> None:
    for line in (ROOT / "deploy" / "redis" / "users.acl").read_text().splitlines():
        if not line.startswith("user ") or line.split()[2] == "off":
            continue
        user, words = line.split()[1], [w.lower() for w in line.split()[2:]]
        granted = {w[1:] for w in words if w.startswith("+")}
        assert not {c for c in granted if c.startswith("@")}, f"{user} is granted a category"
        assert not granted & set(DANGEROUS), (user, granted & set(DANGEROUS))
        assert not {"allcommands", "allkeys", "allchannels", "~*", "&*", "nopass"} & set(words)
    rules = {
        line.split()[1]: line.split()
        for line in (ROOT / "deploy" / "redis" / "users.acl").read_text().splitlines()
        if line.startswith("user ")
    }
    # Each service writes the queues it publishes to, and reads the others' lengths.
    assert "~tether.escalations" not in rules["executor"]
    assert "%R~tether.escalations" in rules["executor"]
    assert "~tether.tools" not in rules["escalation"]
    assert "%R~tether.tools" in rules["escalation"]


def test_a_dead_consumer_of_a_queue_a_worker_may_not_write_goes_to_one_that_may(
    acl_redis: int, passwords: dict[str, str]
) -> None:
    def as_user(user: str) -> redis.Redis:
        return redis.Redis(port=acl_redis, username=user, password=passwords[user])

    operator = as_user("operator")
    # An escalation worker died with a message landed: no heartbeat, still registered.
    dead = "dead-escalation-consumer"
    operator.delete(keys.CONSUMERS_CLOCK, "tether.escalations")  # a fresh watch
    operator.hset(keys.CONSUMERS, dead, "tether.escalations")
    operator.rpush(keys.consumer_landing(dead), '{"decision": 1}')
    no_qos = cast(Any, None)  # nothing held: only the landing list goes back
    try:
        # The executor's sweep claims it, may not write its queue, and lets it go at once.
        assert consumers.recover_dead_consumers(as_user("executor"), no_qos) == []
        assert operator.lrange(keys.consumer_landing(dead), 0, -1) == [b'{"decision": 1}']
        assert not operator.exists(keys.consumer_recovering(dead))
        # An escalation worker's sweep puts the message back on its queue.
        assert consumers.recover_dead_consumers(as_user("escalation"), no_qos) == [dead]
        assert operator.lrange("tether.escalations", 0, -1) == [b'{"decision": 1}']
        assert operator.hget(keys.CONSUMERS, dead) is None
    finally:
        operator.delete("tether.escalations", keys.consumer_landing(dead))
        operator.hdel(keys.CONSUMERS, dead)
