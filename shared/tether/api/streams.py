"""The app's asyncio Redis client, for reads that wait (a run's live events).

A blocking XREAD on the store's client would hold a worker thread per open
stream; on this client a waiting stream holds only its coroutine. It is made
on first use and closed with the app.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tether.runtime import Runtime


def client(app: FastAPI) -> aioredis.Redis:
    found: aioredis.Redis | None = getattr(app.state, "async_redis", None)
    if found is None:
        found = _connect(app.state.runtime)
        app.state.async_redis = found
    return found


def _connect(runtime: Runtime) -> aioredis.Redis:
    settings = runtime.settings
    options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 2}
    if settings.redis_cluster:
        # A run's log has its run's hash tag: one node answers each read.
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(settings.redis_url, **options))
    return aioredis.Redis.from_url(settings.redis_url, health_check_interval=30, **options)


async def close(app: FastAPI) -> None:
    found: aioredis.Redis | None = getattr(app.state, "async_redis", None)
    if found is not None:
        app.state.async_redis = None
        await found.aclose()
