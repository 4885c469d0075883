"""Messages held back by a rate limit, by when they are due to be published again.

A step or a tool action that must wait for a limit is not slept in its worker: its
message ends, and its place here (``DEFERRED``, scored by Redis's clock) says when to
send it again. Whoever takes a due entry (one script: one taker) publishes it,
through the outbox (tether.planner.ratelimited). Taking an entry moves it
``CLAIM_S`` on rather than off the set, and it leaves once sent: a taker that
dies in between leaves it to another publisher seconds later (invariant 5), not to the
reconciler's stall threshold; sending it twice is harmless (invariant 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis
from redis.cluster import RedisCluster

from tether.store import keys
from tether.store.scripts import Script

DEFERRED = Script.load("tether.store", "deferred.lua")
# How long a taken entry is another publisher's to leave alone: its taker sends it
# within milliseconds, and one that died has it sent again this much later.
CLAIM_S = 5.0


def step_entry(run_id: str, step: int) -> str:
    return f"{run_id} step {step}"


def action_entry(run_id: str, action_id: str) -> str:
    return f"{run_id} action {action_id}"


def parse_entry(entry: str) -> tuple[str, str, str]:
    """(run id, "step" or "action", the step number or the action id)."""
    run_id, kind, what = entry.split(" ", 2)
    return run_id, kind, what


def defer(client: redis.Redis | RedisCluster, entry: str, due: float) -> None:
    client.zadd(keys.DEFERRED, {entry: due})


def peek(client: redis.Redis | RedisCluster) -> tuple[float, float | None]:
    """Redis's clock now and when the first entry is due (None: none waits), in one round trip."""
    if isinstance(client, RedisCluster):  # a cluster's pipeline routes by key: TIME has none
        seconds, micros = client.time()
        first = client.zrange(keys.DEFERRED, 0, 0, withscores=True)
    else:
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(keys.DEFERRED, 0, 0, withscores=True)
        (seconds, micros), first = pipe.execute()
    return seconds + micros / 1_000_000, (float(first[0][1]) if first else None)


def take_due(client: redis.Redis | RedisCluster, now: float, limit: int = 500) -> list[str]:
    """The entries due at ``now``, each taken by this caller alone until ``now + CLAIM_S``;
    call ``sent`` for each once it is published (or found not to be waited for)."""
    return cast(
        list[str],
        DEFERRED.run(client, keys=[keys.DEFERRED], args=["take", now, repr(now + CLAIM_S), limit]),
    )


def sent(client: redis.Redis | RedisCluster, entry: str, taken_at: float) -> None:
    """``entry``, taken at ``taken_at``, is dealt with: off the set unless deferred again."""
    DEFERRED.run(client, keys=[keys.DEFERRED], args=["sent", entry, repr(taken_at + CLAIM_S)])


def waiting(client: redis.Redis | RedisCluster, entries: Sequence[str]) -> list[float | None]:
    """When each of ``entries`` is due; None for one not held back."""
    if not entries:
        return []
    return client.zmscore(keys.DEFERRED, list(entries))
