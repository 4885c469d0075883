"""Processes the harness starts and stops: worker stacks, bare Celery workers, the model server.

Everything here runs against the harness's own redis-server (never one on 6379)
and is stopped by process group, only for processes the harness started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from tether.config import Settings
from tether.dev.lifetime import die_with_parent
from tether.dev.stack import DevStack
from tether.transport.celery_app import create_app

AGENT_MODULES = ["bench.agents"]


def _spawn(
    argv: Sequence[str], env: dict[str, str], log: Path | None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    out: Any = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    return subprocess.Popen(
        list(argv),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),
        cwd=cwd,
    )


def stop_all(processes: Iterable[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    processes = [p for p in processes if p is not None]
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Workers:
    """Celery worker processes started by the harness, named so ping can find them.

    ``tether worker SERVICE`` for Tether's services (as DevStack does, but with a
    pool and concurrency per service), or ``celery -A bench.bare worker`` for
    the bare hops, with exactly the arguments ``tether worker`` passes.
    """

    def __init__(
        self,
        redis_url: str,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        tree: Path | None = None,
        broker_url: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.broker_url = broker_url
        self.log_dir = log_dir
        stack = DevStack(
            redis_url=redis_url, agent_modules=AGENT_MODULES, env=env or {}, broker_url=broker_url
        )
        self.base_env = stack.env()
        # Another checkout's code (bench.compare): its library and services, this harness.
        self.tree = tree
        if tree is not None:
            here = Path(__file__).resolve().parent.parent
            self.base_env["PYTHONPATH"] = os.pathsep.join(
                [str(tree / "shared"), str(tree), str(here)]
            )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def tether(
        self, service: str, *, pool: str = "prefork", concurrency: int = 2, tag: str = ""
    ) -> None:
        name = f"{service}{tag}"
        env = dict(
            self.base_env, TETHER_WORKER_CONCURRENCY=str(concurrency), TETHER_WORKER_POOL=pool
        )
        argv = [
            sys.executable,
            "-m",
            "tether.cli.main",
            "worker",
            service,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
        ]
        self.processes[name] = _spawn(argv, env, self._log(name), self.tree)

    def bare(
        self, queue: str, *, concurrency: int = 2, pool: str = "prefork", app: str = "bench.bare"
    ) -> None:
        """A worker of ``app``'s hops (bench.bare, or bench.floor's), named ``bare_QUEUE``
        or ``floor_QUEUE``."""
        name = f"{app.rsplit('.', 1)[-1]}_{queue}"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queue,
            "-n",
            f"bare{queue.replace('.', '')}-{os.getpid()}@{socket.gethostname()}",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        self.processes[name] = _spawn(argv, dict(self.base_env), self._log(name))

    def _log(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        app = create_app(
            Settings(redis_url=self.redis_url, broker_url=self.broker_url), name="bench-ping"
        )
        wanted = len(self.processes)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"worker {name} exited at start ({process.returncode})")
            replies = app.control.ping(timeout=0.5) or []
            if len(replies) >= wanted:
                return
        raise RuntimeError(f"only some of {sorted(self.processes)} answered within {timeout_s:g}s")

    def pids(self, prefix: str) -> list[int]:
        return [p.pid for n, p in self.processes.items() if n.startswith(prefix)]

    def stop(self) -> None:
        stop_all(self.processes.values())
        self.processes.clear()


class ModelServer:
    """bench.model_server in its own process; ``url`` once it listens."""

    def __init__(self, latency_s: float, env: dict[str, str], log: Path | None = None) -> None:
        self.latency_s = latency_s
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> ModelServer:
        url_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-model-{os.getpid()}.url"
        url_file.unlink(missing_ok=True)
        self.process = _spawn(
            [
                sys.executable,
                "-m",
                "bench.model_server",
                "--latency",
                str(self.latency_s),
                "--url-file",
                str(url_file),
            ],
            self.env,
            self.log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if url_file.exists() and url_file.read_text():
                self.url = url_file.read_text()
                url_file.unlink()
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("the model server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_all([self.process])
            self.process = None


class CpuMeter:
    """CPU seconds used by groups of process trees between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]], flat: Iterable[str] = ()) -> None:
        self.groups = groups
        self.flat = set(flat)  # groups measured without their children (the driver)
        self._start: dict[str, float] = {}

    def _tree_cpu(self, name: str) -> float:
        total = 0.0
        for pid in self.groups[name]:
            try:
                root = psutil.Process(pid)
                tree = [root] if name in self.flat else [root, *root.children(recursive=True)]
                for proc in tree:
                    times = proc.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def start(self) -> CpuMeter:
        self._start = {name: self._tree_cpu(name) for name in self.groups}
        self._t0 = time.perf_counter()
        return self

    def seconds(self) -> dict[str, float]:
        """CPU seconds each group used since start()."""
        return {name: self._tree_cpu(name) - self._start.get(name, 0.0) for name in self.groups}

    def stop(self) -> dict[str, float]:
        """Each group's share of one core over the interval (1.0 = one core busy)."""
        elapsed = max(1e-9, time.perf_counter() - self._t0)
        return {name: round(used / elapsed, 3) for name, used in self.seconds().items()}
