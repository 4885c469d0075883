"""What /readyz answers, read from a worker's state: its consumer, its shutdown, its Redis.

The readiness check runs against the suite's real Redis and a real Celery
bootsteps Blueprint standing for the consumer's; tests/integration/test_probes.py
probes real workers over HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from celery import bootsteps
from celery.signals import worker_ready
from prometheus_client import CollectorRegistry, Counter

from tether.config import Settings
from tether.dev.redis_server import free_port
from tether.observability import probes
from tether.transport import landing
from tether.worker.readiness import PING_TIMEOUT_S, Readiness


class _Consumer:
    """What the readiness check reads of Celery's Consumer: its blueprint."""

    def __init__(self) -> None:
        self.blueprint = bootsteps.Blueprint()
        self.blueprint.state = bootsteps.RUN


@pytest.fixture
def not_stopping(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """This process's shutdown flag, fresh: setting it leaves other tests alone."""
    event = threading.Event()
    monkeypatch.setattr(landing, "_stopping", event)
    return event


def test_ready_only_once_the_consumer_started_and_while_it_runs(
    redis_url: str, not_stopping: threading.Event
) -> None:
    check = Readiness("executor", Settings(redis_url=redis_url))
    assert check.problems() == ["the executor worker's consumer has not started yet"]
    consumer = _Consumer()
    worker_ready.send(sender=consumer)
    assert check.problems() == []
    consumer.blueprint.state = bootsteps.CLOSE
    assert check.problems() == ["the executor worker's consumer is stopping"]


def test_not_ready_once_the_worker_is_shutting_down(
    redis_url: str, not_stopping: threading.Event
) -> None:
    check = Readiness("planner", Settings(redis_url=redis_url))
    worker_ready.send(sender=_Consumer())
    not_stopping.set()
    assert check.problems() == ["the planner worker is shutting down and takes no more messages"]


def test_not_ready_within_its_timeout_when_redis_or_the_broker_is_away(
    redis_url: str, not_stopping: threading.Event
) -> None:
    # A broker that takes the connection and never answers: only a timeout ends the PING.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        check = Readiness("escalation", Settings(redis_url=redis_url, broker_url=mute))
        worker_ready.send(sender=_Consumer())
        started = time.monotonic()
        (problem,) = check.problems()
        assert time.monotonic() - started < PING_TIMEOUT_S * 2
    assert problem.startswith("broker did not answer a PING within 1 s")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    away = Readiness("escalation", Settings(redis_url=nowhere))
    worker_ready.send(sender=_Consumer())
    assert [p.split(" (")[0] for p in away.problems()] == ["redis did not answer a PING within 1 s"]


def _call(app: probes.WSGIApp, path: str) -> tuple[str, dict[str, str], str]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body: Iterable[bytes] = app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response)
    return answer["status"], answer["headers"], b"".join(body).decode()


def test_the_probe_routes_answer_beside_the_metrics() -> None:
    registry = CollectorRegistry()
    Counter("probe_test_total", "a counter", registry=registry).inc()
    problems: list[str] = []
    app = probes.probe_app(registry, lambda: problems)
    assert _call(app, "/healthz")[::2] == ("200 OK", "alive\n")
    assert _call(app, "/readyz")[::2] == ("200 OK", "ready\n")
    problems.append("redis did not answer")
    status, headers, body = _call(app, "/readyz")
    assert (status, body) == ("503 Service Unavailable", "not ready: redis did not answer\n")
    assert headers["Cache-Control"] == "no-store"
    assert "probe_test_total 1.0" in _call(app, "/metrics")[2]


def test_a_readiness_check_that_raises_reads_as_not_ready() -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    status, _, body = _call(probes.probe_app(CollectorRegistry(), broken), "/readyz")
    assert status.startswith("503") and "boom" in body
