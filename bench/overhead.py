"""Per-step overhead: what Tether adds to an agent step over bare Celery.

One run at a time, an N-step agent (scripted model with zero latency, a no-op
tool) against chains of 2N+1 bare Celery hops (bench.bare): a step is a plan
task and a tool task, so 2 hops per step plus the final plan is the least any
Celery-based runtime could do. The two are interleaved on the same Redis and
the same worker settings so that a shared machine's noise falls on both alike
and the ratio measures Tether, not the box. The CPU each side used (its worker
processes and Redis, metered around each of its runs alone) is compared the
same way. start_stack brings up that stack
(Tether's services and the bare queues side by side); the throughput and
state measurements run on it too.
"""

from __future__ import annotations

from pathlib import Path

from bench.bare import QUEUES
from bench.driver import Driver, log, redis_pid, stats_ms
from bench.plan import TARGET_CPU_RATIO, TARGET_RATIO, Plan, Results
from bench.procs import CpuMeter, Workers


def start_stack(redis_url: str, concurrency: int, log_dir: Path | None) -> Workers:
    workers = Workers(redis_url, log_dir=log_dir)
    for service in ("planner", "executor", "escalation"):
        workers.tether(service, concurrency=concurrency)
    for queue in QUEUES:
        workers.bare(queue, concurrency=concurrency)
    workers.wait_ready()
    return workers


def measure_overhead(plan: Plan, driver: Driver, workers: Workers, res: Results) -> None:
    steps, hops = plan.steps, 2 * plan.steps + 1
    for _ in range(plan.warmup):
        driver.tether_run(steps)
        driver.bare_chain(hops)
    redis = [redis_pid(driver.redis)]
    tether_pids = [*workers.pids("planner"), *workers.pids("executor"), *redis]
    bare_pids = [*workers.pids("bare_"), *redis]
    tether_times: list[float] = []
    bare_times: list[float] = []
    # Summed over all runs, not a median per run: CPU times tick in 10 ms steps.
    cpu = {"tether": 0.0, "bare": 0.0}
    for _ in range(plan.seq_runs):  # interleaved, so noise hits both alike
        meter = CpuMeter({"tether": tether_pids}).start()
        tether_times.append(driver.tether_run(steps) / steps)
        cpu["tether"] += meter.seconds()["tether"]
        meter = CpuMeter({"bare": bare_pids}).start()
        bare_times.append(driver.bare_chain(hops) / steps)
        cpu["bare"] += meter.seconds()["bare"]
    t, b = stats_ms(tether_times), stats_ms(bare_times)
    tc, bc = (round(1000 * cpu[side] / (plan.seq_runs * steps), 3) for side in ("tether", "bare"))
    res.overhead = {
        "steps_per_run": steps,
        "bare_hops_per_run": hops,
        "runs": plan.seq_runs,
        "tether_ms_per_step": t,
        "bare_ms_per_step": b,
        "bare_ms_per_hop": round(b["median"] * steps / hops, 3),
        "ratio": round(t["median"] / b["median"], 3),
        "ratio_mean": round(t["mean"] / b["mean"], 3),
        "target_ratio": TARGET_RATIO,
        # CPU ms per step, every process of each side (workers and Redis) counted.
        "tether_cpu_ms_per_step": tc,
        "bare_cpu_ms_per_step": bc,
        "cpu_ratio": round(tc / max(1e-9, bc), 3),
        "target_cpu_ratio": TARGET_CPU_RATIO,
    }
    log(
        f"overhead: tether {t['median']} ms/step, bare {b['median']} ms/step, ratio {res.overhead['ratio']}"
    )
    log(f"cpu: tether {tc} ms/step, bare {bc} ms/step, ratio {res.overhead['cpu_ratio']}")
