"""/healthz and /readyz on each real worker's metrics port, as Kubernetes probes them.

Three worker processes (the planner on gevent, as deploy/k8s runs it) on a
Redis of their own. Alive and ready while Redis answers; when Redis goes away,
/readyz answers 503 naming it while /healthz stays 200 (the pod leaves the
Service but is not restarted); when Redis is back, each is ready again.
/metrics is still served on the same port.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from tests.stacks import stop_in_background
from tether.dev.stack import SERVICES, DevStack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path``; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    ports = {service: _free_port() for service in SERVICES}
    stack = DevStack(
        agent_modules=["examples.support_desk.agent"],
        concurrency=1,
        env={"TETHER_PLANNER_POOL": "gevent", "TETHER_PLANNER_CONCURRENCY": "8"},
        log_dir=tmp_path_factory.mktemp("probes") / "logs",
        metrics_ports=ports,
    )
    try:
        stack.start()
        yield stack
    finally:
        stop_in_background(stack)


def _all_ready(stack: DevStack) -> bool:
    return all(get(port, "/readyz")[0] == 200 for port in stack.metrics_ports.values())


def test_each_worker_is_alive_and_ready_while_redis_answers(probed: DevStack) -> None:
    wait_for(lambda: _all_ready(probed), timeout_s=30, what="every worker's /readyz to be 200")
    for service, port in probed.metrics_ports.items():
        assert get(port, "/healthz") == (200, "alive\n"), service
        assert get(port, "/readyz") == (200, "ready\n"), service
        status, body = get(port, "/metrics")
        assert status == 200, service
        if service == "escalation":  # the one that serves the figures read from Redis
            assert "# TYPE tether_queue_depth gauge" in body, body


def test_readyz_fails_while_redis_is_down_and_healthz_does_not(
    probed: DevStack, tmp_path: Path
) -> None:
    assert probed.redis is not None
    wait_for(lambda: _all_ready(probed), timeout_s=30, what="every worker's /readyz to be 200")
    probed.redis.stop()
    try:
        for service, port in probed.metrics_ports.items():
            started = time.monotonic()
            status, body = get(port, "/readyz")
            # The probe answers within its own timeout, not the store's minute of retries.
            assert time.monotonic() - started < 4, service
            assert status == 503, (service, body)
            assert body.startswith("not ready: ") and "redis did not answer a PING" in body, body
            assert get(port, "/healthz") == (200, "alive\n"), service
    finally:
        probed.redis.start()
    wait_for(
        lambda: _all_ready(probed), timeout_s=60, what="/readyz to be 200 after Redis came back"
    )
    for process in probed.workers.values():
        assert process.poll() is None, "a worker exited while Redis was away"
