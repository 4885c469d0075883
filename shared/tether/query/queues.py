"""The service queues' depths and the broker consumers reading them."""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel

from tether.runtime import Runtime
from tether.store import keys
from tether.transport.celery_app import QUEUE_OF


class QueueDepth(BaseModel):
    queue: str
    waiting: int


class Consumer(BaseModel):
    """A broker consumer (tether.transport.reliable) and whether its heartbeat is fresh."""

    consumer_id: str
    queues: str
    alive: bool


class QueuesView(BaseModel):
    queues: list[QueueDepth]
    consumers: list[Consumer]


def queues(rt: Runtime) -> QueuesView:
    names = sorted(set(QUEUE_OF.values()))
    broker = rt.broker
    pipe = broker.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    depths = cast(list[int], pipe.execute())
    registered = cast(dict[str, str], broker.hgetall(keys.CONSUMERS))
    ids = sorted(registered)
    pipe = broker.pipeline(transaction=False)
    for consumer_id in ids:
        pipe.exists(keys.consumer_alive(consumer_id))
    alive = cast(list[int], pipe.execute()) if ids else []
    return QueuesView(
        queues=[QueueDepth(queue=n, waiting=int(d)) for n, d in zip(names, depths, strict=True)],
        consumers=[
            Consumer(consumer_id=c, queues=_text(registered[c]), alive=bool(a))
            for c, a in zip(ids, alive, strict=True)
        ],
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
