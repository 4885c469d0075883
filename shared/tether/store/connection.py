"""The Redis client every part of the store talks through."""

from __future__ import annotations

from typing import cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tether.store.cluster_client import RidingCluster


def connect(url: str, cluster: bool = False) -> redis.Redis:
    """A client that rides out a Redis restart or failover of up to about a minute.

    Every write Tether makes is safe to repeat (versioned commits, idempotent
    reservations, SET NX results), so retrying a command whose reply was lost
    is harmless. With ``cluster``, ``url`` names any node of a Redis Cluster and
    the client finds the rest (TETHER_REDIS_CLUSTER), riding out a node's restart
    the same way (tether.store.cluster_client).
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30)
    if cluster:
        # The store's calls are written against redis.Redis; RedisCluster answers them
        # alike (slot by slot), which is what the cast says.
        return cast(
            redis.Redis,
            RidingCluster.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=30,
                retry=retry,
            ),
        )
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
