"""A CLI command that runs for minutes (tether eval) is refused at once where Redis cannot
be used, yet rides out a Redis restart midway as a worker does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tether import runtime as runtime_module
from tether.cli import connection
from tether.config import Settings, get_settings
from tether.dev.redis_server import RedisServer
from tether.runtime import Runtime


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    with RedisServer(appendonly=False) as started:
        monkeypatch.setenv("TETHER_REDIS_URL", started.url)
        get_settings.cache_clear()
        monkeypatch.setattr(runtime_module, "_runtime", Runtime(Settings(redis_url=started.url)))
        monkeypatch.setattr(connection, "_checked", None)
        yield started
    get_settings.cache_clear()


def _restart_after(server: RedisServer, down_s: float) -> threading.Thread:
    server.stop()

    def start() -> None:
        time.sleep(down_s)
        server.start()

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_a_lasting_command_rides_out_a_redis_restart(server: RedisServer) -> None:
    rt = connection.lasting_runtime()
    rt.store.client.set("before", "1")
    restarted = _restart_after(server, 1.0)
    try:
        assert rt.store.client.set("after", "1")  # waits for the restarted Redis
    finally:
        restarted.join()


def test_a_short_command_still_fails_at_once(server: RedisServer) -> None:
    rt = connection.runtime()
    rt.store.client.ping()
    restarted = _restart_after(server, 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(redis.ConnectionError):
            rt.store.client.set("after", "1")
        assert time.monotonic() - started < 1.0
    finally:
        restarted.join()


def test_a_process_that_swaps_its_runtime_reads_the_one_it_has_now(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = connection.runtime()
    with RedisServer(appendonly=False) as other:
        swapped = Runtime(Settings(redis_url=other.url))
        monkeypatch.setattr(runtime_module, "_runtime", swapped)
        assert connection.runtime() is swapped is not first
        connection.runtime().store.client.set("here", "1")
        assert redis.Redis.from_url(other.url).get("here") == b"1"
        assert first.store.client.get("here") is None
