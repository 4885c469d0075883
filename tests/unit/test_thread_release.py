"""A busy thread leaves the busy index only while nothing is queued on it."""

from __future__ import annotations

from typing import Any, cast

import redis

from tether.memory import threads
from tether.runtime import Runtime
from tether.store import keys


class _AdmittedDuringRemoval:
    """The store's client, with an event admitted to the thread right after the removal
    from the busy index: on a Redis Cluster the two lie in different slots."""

    def __init__(self, client: redis.Redis, thread_id: str) -> None:
        self._client = client
        self._thread_id = thread_id

    def zrem(self, key: str, *members: str) -> Any:
        removed = self._client.zrem(key, *members)
        self._client.rpush(keys.thread_queue(self._thread_id), "evt-late")
        return removed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_thread_admitted_to_while_it_is_released_stays_busy(runtime: Runtime) -> None:
    client = runtime.store.client
    thread = "t-release"
    client.zadd(keys.THREADS_BUSY, {thread: 1.0})

    racing = cast(redis.Redis, _AdmittedDuringRemoval(client, thread))
    assert threads._released(racing, thread) is False
    assert client.zscore(keys.THREADS_BUSY, thread) is not None

    assert threads._released(client, thread) is False  # its event is still queued
    client.delete(keys.thread_queue(thread))
    assert threads._released(client, thread) is True
    assert client.zscore(keys.THREADS_BUSY, thread) is None
