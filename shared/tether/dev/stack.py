"""The embedded stack: a Redis it owns plus the three services as subprocesses.

`tether dev`, the demo and the integration tests all run it, so what the
tests exercise is exactly what a newcomer starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import redis
from celery import Celery

from tether.config import Settings
from tether.dev.lifetime import die_with_parent
from tether.dev.redis_server import RedisServer
from tether.errors import ConfigError
from tether.transport.celery_app import create_app

SERVICES = ("planner", "executor", "escalation")


class DevStack:
    def __init__(
        self,
        *,
        redis_url: str | None = None,
        agent_modules: Iterable[str] = (),
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        flower_port: int | None = None,
        redis: RedisServer | None = None,
        metrics_ports: dict[str, int] | None = None,
        service_urls: dict[str, str] | None = None,
        broker_url: str | None = None,
    ) -> None:
        """Use the Redis at ``redis_url``, else start ``redis`` (default: a new RedisServer).

        ``metrics_ports`` gives a service its own /metrics port (TETHER_METRICS_PORT):
        services on one host cannot share one. ``service_urls`` gives a service its
        own TETHER_REDIS_URL, e.g. its own Redis ACL user; ``redis_url`` is then
        what this process (and any service not named) uses. ``broker_url`` puts the
        broker on a Redis of its own (as a Redis Cluster for run state needs).
        """
        self.redis = None if redis_url else (redis or RedisServer())
        self._redis_url = redis_url
        self.agent_modules = list(agent_modules)
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.log_dir = log_dir
        self.flower_port = flower_port
        self.metrics_ports = dict(metrics_ports or {})
        self.service_urls = dict(service_urls or {})
        self.broker_url = broker_url
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.flower: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        if self._redis_url:
            return self._redis_url
        assert self.redis is not None
        return self.redis.url

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TETHER_REDIS_URL": self.redis_url,
                "TETHER_AGENT_MODULES": json_list(self.agent_modules),
                "TETHER_WORKER_CONCURRENCY": str(self.concurrency),
            }
        )
        if self.broker_url:
            env["TETHER_BROKER_URL"] = self.broker_url
        env.update(self.extra_env)
        root = str(Path.cwd())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return env

    def _output(self, name: str) -> int | IO[bytes]:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return (self.log_dir / f"{name}.log").open("ab")

    def start_worker(self, service: str) -> subprocess.Popen[bytes]:
        out = self._output(service)
        env = self.env()
        if service in self.metrics_ports:
            env["TETHER_METRICS_PORT"] = str(self.metrics_ports[service])
        if service in self.service_urls:
            env["TETHER_REDIS_URL"] = self.service_urls[service]
        process = subprocess.Popen(
            [sys.executable, "-m", "tether.cli.main", "worker", service],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.workers[service] = process
        return process

    def start(self, timeout_s: float = 60.0) -> DevStack:
        if self.redis is not None:
            self.redis.start()
        for service in SERVICES:
            self.start_worker(service)
        if self.flower_port:
            self.flower = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "--broker",
                    self.broker_url or self.redis_url,
                    "flower",
                    f"--port={self.flower_port}",
                    "--address=127.0.0.1",
                ],
                # Flower 2 serves its HTTP API (/api/workers, /api/tasks) only with
                # auth configured or this set. The dev stack binds it to loopback,
                # so anyone who can reach it already runs on this machine.
                env={**self.env(), "FLOWER_UNAUTHENTICATED_API": "true"},
                stdout=self._output("flower"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self.wait_ready(SERVICES, timeout_s)
        return self

    def celery(self) -> Celery:
        return create_app(Settings(redis_url=self.redis_url, broker_url=self.broker_url))

    def wait_ready(self, services: Iterable[str], timeout_s: float) -> None:
        wanted = set(services)
        app = self.celery()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.workers.items():
                if process.poll() is not None:
                    raise ConfigError(
                        f"the {name} worker exited at start (code {process.returncode}); "
                        f"see {self.log_dir or 'its output'} for why"
                    )
            try:
                replies = app.control.ping(timeout=0.5) or []
            except redis.ConnectionError:
                # kombu keeps connections across apps; one made before a Redis restart
                # fails once, and is replaced on the next try.
                continue
            up = {next(iter(r)).split("@")[0].split("-")[0] for r in replies}
            if wanted <= up:
                return
        raise ConfigError(f"workers {sorted(wanted)} did not all answer within {timeout_s:g}s")

    def stop(self) -> None:
        processes = [p for p in (*self.workers.values(), self.flower) if p is not None]
        for process in processes:
            if process.poll() is None:
                # The main process only, as Kubernetes does: it lets its pool
                # finish the tasks in hand, where SIGTERM kills a pool process mid-task.
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.workers.clear()
        self.flower = None
        if self.redis is not None:
            self.redis.cleanup()

    def __enter__(self) -> DevStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def json_list(values: list[str]) -> str:
    import json

    return json.dumps(values)
