"""The harness's own clients, and the helpers every measurement shares.

A measurement has to time a run to its end, on the same clock for Tether and
for bare Celery, without adding work to the system it times: the Driver
submits Tether runs and bare hop chains through their ordinary clients, and
each end is the moment the worker that ended it stamped (the run state's
``finished_at``, the time a bare chain's last hop pushes to its DONE list),
on the wall clock the start is read from. The Driver learns of those ends by
looking every POLL_S, the same way for both: a read blocked on the lifecycle
stream is woken by every entry, four a Tether step against one push per bare
chain, and those wake-ups would take the cores from the runs it times. The
statistics helpers are here so that every section reports medians and
percentiles computed the same way.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any, cast

import redis

from bench.bare import DONE, send_hop
from tether import client as tether_client
from tether import keys
from tether.celery_app import create_app
from tether.config import Settings
from tether.runtime import Runtime

# How often the Driver looks for ends; it times them by the workers' own stamps.
POLL_S = 0.02


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Lifecycle:
    """Reads tether:events (every run's lifecycle entries) from where it stood at creation."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        last = cast(list[Any], client.xrevrange(keys.LIFECYCLE_STREAM, count=1))
        self.last_id = last[0][0] if last else "0-0"

    def poll(self, block_ms: int | None = 1000) -> list[dict[str, str]]:
        """Entries since the last poll; ``block_ms`` None: do not wait for one."""
        reply = cast(
            list[Any],
            self.client.xread({keys.LIFECYCLE_STREAM: self.last_id}, block=block_ms, count=5000),
        )
        if not reply:
            return []
        entries = reply[0][1]
        self.last_id = entries[-1][0]
        return [fields for _, fields in entries]


def wait_finished(lc: Lifecycle, run_ids: set[str], timeout_s: float) -> None:
    """Return once every run in ``run_ids`` has its run_finished entry, looking every POLL_S."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        for fields in lc.poll(None):
            if fields.get("kind") == "run_finished" and fields.get("run_id") in run_ids:
                seen.add(fields["run_id"])
        if len(seen) == len(run_ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(run_ids) - len(seen)} of {len(run_ids)} runs did not finish")
        time.sleep(POLL_S)


class Driver:
    """The harness's own clients: Tether's runtime and a bare Celery app, one Redis."""

    def __init__(
        self, redis_url: str, *, broker_url: str | None = None, cluster: bool = False
    ) -> None:
        self.redis_url = redis_url
        settings = Settings(redis_url=redis_url, broker_url=broker_url, redis_cluster=cluster)
        self.rt = Runtime(settings)
        self.redis = (
            self.rt.store.client
            if cluster
            else redis.Redis.from_url(redis_url, decode_responses=True)
        )
        self.bare_app = create_app(settings, name="bench-bare-client")

    def submit(self, agent: str, text: str) -> str:
        return tether_client.submit(agent, text, runtime=self.rt)

    def tether_run(self, steps: int) -> float:
        lc = Lifecycle(self.redis)
        started = time.time()
        run_id = self.submit("bench_stepper", f"steps={steps}")
        wait_finished(lc, {run_id}, 60)
        return self.finished_at(run_id) - started

    def finished_at(self, run_id: str) -> float:
        """When the run's terminal commit was made (stamped by its worker), epoch seconds."""
        finished = self.rt.store.load(run_id).finished_at
        if finished is None:
            raise RuntimeError(f"bench run {run_id} has no finished_at: it has not ended")
        return finished.timestamp()

    def check_run(self, run_id: str, steps: int) -> None:
        state = self.rt.store.load(run_id)
        if state.status != "succeeded" or len(state.completed_actions) != steps:
            raise RuntimeError(f"bench run {run_id} ended {state.status} after {state.step} steps")

    def bare_chain(self, hops: int) -> float:
        chain = uuid.uuid4().hex
        started = time.time()
        send_hop(self.bare_app, chain, hops, 0)
        return self._bare_done({chain}, 60)[chain] - started

    def _bare_done(self, chains: set[str], timeout_s: float) -> dict[str, float]:
        """When each chain's last hop ended (its own stamp), looking every POLL_S."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            for item in cast(list[str], self.redis.lpop(DONE, 1000) or []):
                chain, stamp = item.split()
                if chain in chains:
                    seen[chain] = float(stamp)
            if len(seen) == len(chains):
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(chains) - len(seen)} bare chains did not finish")
            time.sleep(POLL_S)

    def tether_batch(self, runs: int, steps: int) -> float:
        lc = Lifecycle(self.redis)
        started = time.time()
        ids = {self.submit("bench_stepper", f"steps={steps}") for _ in range(runs)}
        wait_finished(lc, ids, 300)
        return max(self.finished_at(run_id) for run_id in ids) - started

    def bare_batch(self, chains: int, hops: int) -> float:
        names = {uuid.uuid4().hex for _ in range(chains)}
        started = time.time()
        for chain in names:
            send_hop(self.bare_app, chain, hops, 0)
        return max(self._bare_done(names, 300).values()) - started

    def command_stats(self) -> dict[str, int]:
        stats = cast(dict[str, dict[str, Any]], self.redis.info("commandstats"))
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def stats_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered) * 1000, 3),
        "mean": round(statistics.fmean(ordered) * 1000, 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        "min": round(ordered[0] * 1000, 3),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def redis_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])
