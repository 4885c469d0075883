"""Run state on a Redis Cluster: what sharding costs a step.

Two stacks side by side, each with its own planner, executor and escalation
worker: one on one Redis (state and broker), one with its run state on a
three-node Redis Cluster on this machine and its broker on a Redis of its own
(TETHER_REDIS_CLUSTER). Runs of the N-step agent alternate between them one at
a time, so a shared machine's noise falls on both alike. On the cluster a
commit writes the run's own keys in its script and applies its writes to other
slots (the lifecycle stream, indexes) a round trip later (tether.store.spill); the
ratio says what that, and three Redis processes on two cores, cost a step.
"""

from __future__ import annotations

from pathlib import Path

from bench.driver import Driver, log, stats_ms
from bench.plan import Plan, Results
from bench.procs import Workers
from tether.dev.redis_server import LocalCluster, RedisServer


def measure_cluster(plan: Plan, res: Results, log_dir: Path | None) -> None:
    with (
        RedisServer() as single,
        RedisServer(appendonly=False) as broker,
        LocalCluster(nodes=3) as cluster,
    ):
        sides = {
            "single": (Workers(single.url, log_dir=log_dir), Driver(single.url)),
            "cluster": (
                Workers(
                    cluster.url,
                    env={"TETHER_REDIS_CLUSTER": "true"},
                    log_dir=log_dir,
                    broker_url=broker.url,
                ),
                Driver(cluster.url, broker_url=broker.url, cluster=True),
            ),
        }
        try:
            for workers, _ in sides.values():
                for service in ("planner", "executor", "escalation"):
                    workers.tether(service, concurrency=1)
                workers.wait_ready()
            times: dict[str, list[float]] = {side: [] for side in sides}
            for measured in [False] * plan.warmup + [True] * plan.seq_runs:
                for side, (_, driver) in sides.items():
                    per_step = driver.tether_run(plan.steps) / plan.steps
                    if measured:
                        times[side].append(per_step)
        finally:
            for workers, _ in sides.values():
                workers.stop()
    single_ms, cluster_ms = stats_ms(times["single"]), stats_ms(times["cluster"])
    res.cluster = {
        "steps_per_run": plan.steps,
        "runs": plan.seq_runs,
        "nodes": 3,
        "single_ms_per_step": single_ms,
        "cluster_ms_per_step": cluster_ms,
        "ratio": round(cluster_ms["median"] / single_ms["median"], 3),
    }
    log(cluster_line(res.cluster))


def cluster_line(figures: dict[str, object]) -> str:
    single = figures["single_ms_per_step"]
    sharded = figures["cluster_ms_per_step"]
    assert isinstance(single, dict) and isinstance(sharded, dict)
    return (
        f"cluster: tether {sharded['median']:.2f} ms/step on a {figures['nodes']}-node Redis "
        f"Cluster, {single['median']:.2f} ms/step on one Redis, ratio {figures['ratio']:.2f}"
    )
