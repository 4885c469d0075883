"""Shared rate limits and deferred messages on a Redis Cluster: each script's keys share
one slot (an endpoint's or a tool's hash tag; the deferred set is one key)."""

from __future__ import annotations

import pytest

from tether.config import Settings
from tether.dev.redis_server import LocalCluster
from tether.runtime import Runtime
from tether.store import deferred
from tether.store.ratelimits import RateLimit, RateLimits, model_limiter, tool_limiter


def test_limits_pauses_and_deferred_entries_work_on_a_redis_cluster(redis_url: str) -> None:
    with LocalCluster(nodes=3) as cluster:
        settings = Settings(redis_url=cluster.url, redis_cluster=True, broker_url=redis_url)
        client = Runtime(settings).store.client
        limits = RateLimits(client)
        model = model_limiter("http://h:1/v1", "m", RateLimit(requests=1, tokens=100, burst=1.0))
        first = limits.acquire(model, "run_a:0", tokens=10)
        second = limits.acquire(model, "run_b:0", tokens=10)
        assert first.wait_s == 0 and second.wait_s > 0 and second.new
        assert limits.acquire(model, "run_b:0", tokens=10).start == second.start  # same turn
        limits.settle(model, "run_a:0", tokens_unused=5)
        held = limits.pause(model, 30.0)
        assert held.wait_s == pytest.approx(30.0, abs=0.5)
        assert limits.acquire(model, "run_c:0").wait_s >= 29.0
        tool = tool_limiter("lookup", 1.0)
        assert limits.acquire(tool, "act_1:first").wait_s == 0
        assert limits.acquire(tool, "act_2:first").wait_s > 0

        now, first_due = deferred.peek(client)
        assert first_due is None
        entry = deferred.step_entry("run_a", 1)
        deferred.defer(client, entry, now - 1)
        assert deferred.take_due(client, now) == [entry]
        assert deferred.take_due(client, now) == []
        deferred.sent(client, entry, now)
        assert deferred.waiting(client, [entry]) == [None]
