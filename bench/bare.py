"""Bare Celery hops: the floor Tether is measured against.

The same Celery settings as Tether's services (tether.transport.celery_app.create_app:
acks_late, prefetch 1, JSON, task events), on the same Redis. ``bench.hop``
sends the next hop by name to the other queue until the chain is done, so a
chain of 2N+1 hops mirrors an N-step run (start, then execute + observe per
step), each queue served by its own worker process, like planner and executor.

Run a worker with ``celery -A bench.bare worker -Q bench.a`` (the harness does).
"""

from __future__ import annotations

import time

import redis
from kombu.entity import Exchange, Queue

from tether.config import get_settings
from tether.transport.celery_app import create_app, direct_route

QUEUES = ("bench.a", "bench.b")
HOP = "bench.hop"
DONE = "bench:done"

settings = get_settings()
app = create_app(settings, name="bench-bare")
app.conf.task_queues = [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES]
app.conf.task_default_queue = QUEUES[0]
_redis: redis.Redis | None = None


def send_hop(celery_app: object, chain: str, remaining: int, side: int) -> None:
    celery_app.send_task(  # type: ignore[attr-defined]
        HOP,
        kwargs={"chain": chain, "remaining": remaining, "side": side},
        **direct_route(QUEUES[side]),
    )


@app.task(name=HOP)
def hop(chain: str, remaining: int, side: int) -> None:
    global _redis
    if remaining <= 1:
        if _redis is None:
            _redis = redis.Redis.from_url(settings.redis_url)
        _redis.lpush(DONE, f"{chain} {time.time():.6f}")
        return
    send_hop(app, chain, remaining - 1, 1 - side)
