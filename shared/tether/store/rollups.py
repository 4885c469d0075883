"""Rollups: what the runs created in each minute and hour came to, per agent and version,
so stats serve any window by reading a few hashes instead of every run in it.

A run is counted by the commit that ends it (tether.planner.lifecycle.finish), in the
buckets of its creation time, as side writes of that fenced compare-and-set: only the
winning end commit writes them, so a redelivered or raced ending counts nothing twice
(invariants 3 and 6). Feedback is counted by its own commit the same way
(tether.insights.feedback). The figures that need a distribution (steps, tool calls,
cost, latency) are kept as histograms: steps and tool calls exactly (one field per
value), cost and latency in logarithmic buckets ``HIST_PER_DOUBLING`` to a doubling, so a
percentile read back is within about 2% of the exact one.

Each field is ``agent<US>version<US>figure`` (US: the ASCII unit separator), figure one of
``FIGURES``'s forms; cost is counted in nano-USD, since the commit script increments
integers only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import cast

import redis

from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.state import RunState
from tether.store.versioned import SideWrite

MINUTE_S = 60
HOUR_S = 3600
# How long a bucket is kept after its last write: charts and stats reach back this far,
# longer than runs themselves are kept (run_ttl_s).
ROLLUP_TTL_S = 35 * 86400
HIST_PER_DOUBLING = 16
NANO_USD = 1_000_000_000
SEPARATOR = "\x1f"
ZERO_BUCKET = "z"

#: The figures of one agent and version in one bucket (``*``: a value or category).
FIGURES = (
    "ended",  # runs that ended
    "status:*",  # runs that ended in each terminal status
    "steps:*",  # runs that ended after exactly * steps
    "calls:*",  # runs that ended after exactly * tool calls
    "cost:*",  # runs whose cost falls in log bucket * (z: nothing spent)
    "latency:*",  # runs whose creation-to-end seconds fall in log bucket *
    "error:*",  # runs that ended with error category *
    "tokens",  # tokens the ended runs spent
    "cost_nusd",  # nano-USD the ended runs spent
    "escalated",  # ended runs that waited for a human at least once
    "feedback:*",  # feedback recorded with score *
    "feedback_runs",  # runs with at least one feedback
    "guardrail:*",  # guardrail outcomes, * = <place>:<outcome> (tether.guardrails.tally)
    "rate_limited_ms",  # ms the ended runs' calls waited for rate limits (store.ratelimit_waits)
)


def log_bucket(value: float) -> str:
    """The histogram bucket of a non-negative ``value``."""
    if value <= 0:
        return ZERO_BUCKET
    return str(math.floor(math.log2(value) * HIST_PER_DOUBLING))


def bucket_value(bucket: str) -> float:
    """What a log bucket stands for: its geometric middle (0 for the zero bucket)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    return float(2 ** ((int(bucket) + 0.5) / HIST_PER_DOUBLING))


def bucket_start(at: datetime, size_s: int) -> int:
    return int(at.timestamp() // size_s * size_s)


def field(agent: str, version: str, figure: str) -> str:
    return SEPARATOR.join((agent, version, figure))


@lru_cache(maxsize=65536)
def split_field(name: str) -> tuple[str, str, str]:
    agent, version, figure = name.split(SEPARATOR, 2)
    return agent, version, figure


def _increments(state: RunState, counts: Iterable[tuple[str, int]]) -> list[SideWrite]:
    writes: list[SideWrite] = []
    for size_s, granularity in ((MINUTE_S, "m"), (HOUR_S, "h")):
        key = keys.rollup(granularity, bucket_start(state.created_at, size_s))
        writes += [
            SideWrite("HINCRBY", key, (field(state.agent, state.agent_version, f), n))
            for f, n in counts
            if n
        ]
        writes.append(SideWrite("EXPIRE", key, (ROLLUP_TTL_S,)))
    return writes


def spent(batch: WriteBatch, run_id: str) -> dict[str, str]:
    """The run's budget hash: what it has spent (tokens, cost_usd) and its limits.

    Read through the task's held writes, so the settlement of its last model call (held
    back until the next round trip) counts what was used, not what was reserved.
    """
    (budget,) = batch.run(lambda pipe: pipe.hgetall(keys.budget(run_id)))
    return cast(dict[str, str], budget)


def ending_writes(ended: RunState, budget: dict[str, str], escalated: bool) -> list[SideWrite]:
    """The rollup increments of a run's ending, for the end commit's side writes.

    ``budget``: the run's budget hash as the ending read it (tokens and cost spent);
    ``escalated``: the run waited for a human at least once.
    """
    latency = (ended.finished_at or ended.updated_at) - ended.created_at
    cost = float(budget.get("cost_usd") or 0.0)
    counts: list[tuple[str, int]] = [
        ("ended", 1),
        (f"status:{ended.status}", 1),
        (f"steps:{ended.step}", 1),
        (f"calls:{len(ended.completed_actions)}", 1),
        (f"cost:{log_bucket(cost)}", 1),
        (f"latency:{log_bucket(max(0.0, latency.total_seconds()))}", 1),
        ("tokens", int(budget.get("tokens") or 0)),
        ("cost_nusd", round(cost * NANO_USD)),
        ("escalated", 1 if escalated else 0),
        ("rate_limited_ms", int(budget.get("rate_limited_ms") or 0)),
    ]
    if ended.error is not None:
        counts.append((f"error:{ended.error.category}", 1))
    return _increments(ended, counts)


def feedback_writes(state: RunState, score: int) -> list[SideWrite]:
    """The rollup increments of one feedback, for its commit; ``state`` holds it already."""
    first = len(state.feedback) == 1
    return _increments(state, [(f"feedback:{score}", 1), ("feedback_runs", 1 if first else 0)])


Bucket = tuple[str, int]  # (granularity, start)


def read_buckets(
    client: redis.Redis, buckets: Sequence[Bucket], memo: dict[Bucket, dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """The hashes of ``buckets``, in one round trip; those in ``memo`` (read earlier for
    the same page) are not read again, and what is read is added to it."""
    known = {} if memo is None else memo
    wanted = [b for b in dict.fromkeys(buckets) if b not in known]
    if wanted:
        pipe = client.pipeline(transaction=False)
        for granularity, start in wanted:
            pipe.hgetall(keys.rollup(granularity, start))
        known.update(zip(wanted, cast(list[dict[str, str]], pipe.execute()), strict=True))
    return [known[b] for b in buckets]


def cover(start: int, end: int) -> list[tuple[str, int]]:
    """The fewest buckets that cover [start, end), both whole minutes: whole hours
    where they fit, minutes at the edges."""
    if start % MINUTE_S or end % MINUTE_S:
        raise ValueError(f"[{start}, {end}) is not in whole minutes")
    buckets: list[tuple[str, int]] = []
    at = start
    while at < end:
        if at % HOUR_S == 0 and at + HOUR_S <= end:
            buckets.append(("h", at))
            at += HOUR_S
        else:
            buckets.append(("m", at))
            at += MINUTE_S
    return buckets
