"""The harness's own clients, and the helpers every measurement shares.

A measurement has to time a run to its end, on the same clock for Tether and
for bare Celery, without adding work to the system it times: the Driver
submits Tether runs and bare hop chains through their ordinary clients, and
each end is the moment the worker that ended it stamped (the run state's
``finished_at``, the time a bare chain's last hop pushes to its DONE list),
on the wall clock the start is read from. The Driver learns of those ends the
same way for both, without a read that every step wakes (a read blocked on
the lifecycle stream is woken by every entry, four a Tether step against one
push per bare chain, on the cores it times): it sleeps through most of what
the last run of the kind took, then looks a hundred times as often (every
millisecond at most), so that the next run does not start on workers left
idle. The statistics helpers are here so that every section reports medians
and percentiles computed the same way.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from bench import bare, floor
from tether import client as tether_client
from tether.config import Settings
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.celery_app import create_app

# How often the harness looks for ends it does not time (long runs, the in-flight ramp),
# and for a timed kind's first end, when it has no duration to go by.
POLL_S = 0.02
# A timed run or chain: the Driver sleeps through DUE of what the last one of its kind
# took, then looks DUE_LOOKS times as often as that took, every DUE_POLL_S at most,
# so that the next starts on workers still warm.
DUE = 0.8
DUE_LOOKS = 100
DUE_POLL_S = 0.001
# What the harness itself sends while runs go (watching for their ends, reading the
# counts), left out of Redis commands per step; no worker sends these.
HARNESS_READS = ("xread", "xrevrange", "lpop", "info", "config|resetstat")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Lifecycle:
    """Reads tether:events (every run's lifecycle entries) from where it stood at creation."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        last = cast(list[Any], client.xrevrange(keys.LIFECYCLE_STREAM, count=1))
        self.last_id = last[0][0] if last else "0-0"

    def poll(self) -> list[dict[str, str]]:
        """Entries since the last poll, without waiting for one (see the module's doc)."""
        reply = cast(
            list[Any], self.client.xread({keys.LIFECYCLE_STREAM: self.last_id}, count=5000)
        )
        if not reply:
            return []
        entries = reply[0][1]
        self.last_id = entries[-1][0]
        return [fields for _, fields in entries]

    def finished(self) -> set[str]:
        """The runs whose run_finished entry came since the last poll."""
        return {f["run_id"] for f in self.poll() if f.get("kind") == "run_finished"}


def wait_finished(lc: Lifecycle, run_ids: set[str], timeout_s: float) -> None:
    """Return once every run in ``run_ids`` has its run_finished entry, looking every POLL_S."""
    deadline = time.monotonic() + timeout_s
    seen = lc.finished()
    while not run_ids <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(run_ids - seen)} of {len(run_ids)} runs did not finish")
        time.sleep(POLL_S)
        seen |= lc.finished()


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
        self._took: dict[str, float] = {}

    def submit(self, agent: str, text: str) -> str:
        return tether_client.submit(agent, text, runtime=self.rt)

    def tether_run(self, steps: int) -> float:
        return self.tether_batch(1, steps)

    def _await(self, kind: str, ended: Callable[[], bool], timeout_s: float) -> None:
        """Return once ``ended()`` (see the module's doc: DUE, DUE_POLL_S)."""
        began = time.monotonic()
        took = self._took.get(kind)
        look = POLL_S if took is None else max(DUE_POLL_S, took / DUE_LOOKS)
        time.sleep(DUE * (took or 0.0))
        while not ended():
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(f"{kind} did not end within {timeout_s:g} s")
            time.sleep(look)
        self._took[kind] = time.monotonic() - began

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
        return self.bare_batch(1, hops)

    def tether_batch(self, runs: int, steps: int, agent: str = "bench_stepper") -> float:
        """Seconds from the first submission to the last run's end (its worker's stamp)."""
        lc = Lifecycle(self.redis)
        started = time.time()
        ids = {self.submit(agent, f"steps={steps}") for _ in range(runs)}
        seen: set[str] = set()

        def ended() -> bool:
            seen.update(lc.finished())
            return ids <= seen

        self._await(f"{agent} {runs}x{steps}", ended, 60 + 3 * runs)
        return max(self.finished_at(run_id) for run_id in ids) - started

    def bare_batch(self, chains: int, hops: int) -> float:
        """Seconds from the first chain sent to the last one's end (its last hop's stamp)."""
        return self._chains("bare", bare.send_hop, bare.DONE, chains, hops)

    def floor_chain(self, hops: int) -> float:
        """Seconds from sending a bench.floor chain to its last hop's stamp."""
        return self._chains("floor", floor.send_hop, floor.DONE, 1, hops)

    def floor_batch(self, chains: int, hops: int) -> float:
        """Seconds from the first bench.floor chain sent to the last one's end (its last
        hop's stamp): the floor's message rate, as bare_batch gives bare Celery's."""
        return self._chains("floor", floor.send_hop, floor.DONE, chains, hops)

    def _chains(
        self, kind: str, send: Callable[..., None], done: str, chains: int, hops: int
    ) -> float:
        names = {uuid.uuid4().hex for _ in range(chains)}
        stamps: dict[str, float] = {}
        started = time.time()
        for chain in names:
            send(self.bare_app, chain, hops, 0)

        def ended() -> bool:
            for item in cast(list[str], self.redis.lpop(done, 1000) or []):
                chain, stamp = item.split()
                stamps[chain] = float(stamp)
            return names <= stamps.keys()

        self._await(f"{kind} {chains}x{hops}", ended, 60 + 3 * chains)
        return max(stamps[chain] for chain in names) - started

    def command_stats(self) -> dict[str, int]:
        stats = cast(dict[str, dict[str, Any]], self.redis.info("commandstats"))
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def commands_since(self, before: dict[str, int]) -> dict[str, int]:
        """Redis commands sent since ``before`` (a command_stats()), by name, those run
        inside scripts included and the harness's own (HARNESS_READS) left out."""
        after = self.command_stats()
        sent = {name: calls - before.get(name, 0) for name, calls in after.items()}
        return {name: n for name, n in sent.items() if n > 0 and name not in HARNESS_READS}


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
