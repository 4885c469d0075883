"""Is this worker ready to take messages? The answer behind /readyz.

Ready means: its Celery consumer has started and is not stopping (a worker
that got SIGTERM takes no more messages, so it leaves the Service at once),
and the Redis it keeps run state in, and the broker when that is another one,
answer a PING within a second. Read by the metrics server's thread
(tether.observability.probes) in the worker's own process: no new process,
one round trip per Redis.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import bootsteps
from celery.signals import worker_ready

from tether.config import Settings
from tether.transport import landing

PING_TIMEOUT_S = 1.0


class Readiness:
    """The readiness check of one worker process (see the module's docstring)."""

    def __init__(self, service: str, settings: Settings) -> None:
        self.service = service
        self._consumer: Any = None
        self._targets = {"redis": (settings.redis_url, settings.redis_cluster)}
        if settings.broker_url and settings.broker_url != settings.redis_url:
            self._targets["broker"] = (settings.broker_url, False)
        self._clients: dict[str, Any] = {}
        worker_ready.connect(self._consumer_started, weak=False)

    def _client(self, name: str) -> Any:
        # Clients of its own, with no retries: a probe must answer within its own
        # timeout, and the store's clients ride out outages for up to a minute.
        # Made at the first probe, not at start: a cluster client connects when made.
        if name not in self._clients:
            url, cluster = self._targets[name]
            options: dict[str, Any] = {
                "socket_timeout": PING_TIMEOUT_S,
                "socket_connect_timeout": PING_TIMEOUT_S,
            }
            made = redis.RedisCluster.from_url if cluster else redis.Redis.from_url
            self._clients[name] = made(url, **options)
        return self._clients[name]

    def _consumer_started(self, sender: Any = None, **_: Any) -> None:
        self._consumer = sender

    def problems(self) -> list[str]:
        """What keeps this worker from being ready; empty when it is ready."""
        found: list[str] = []
        consumer = self._consumer
        if consumer is None:
            found.append(f"the {self.service} worker's consumer has not started yet")
        elif consumer.blueprint.state != bootsteps.RUN:
            found.append(f"the {self.service} worker's consumer is stopping")
        if landing.stopping():
            found.append(f"the {self.service} worker is shutting down and takes no more messages")
        for name in self._targets:
            try:
                self._client(name).ping()
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                found.append(
                    f"{name} did not answer a PING within {PING_TIMEOUT_S:g} s ({exc}); "
                    "check that it runs and that this pod may reach it"
                )
        return found
