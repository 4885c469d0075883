"""Per-step overhead: what Tether adds to an agent step over bare Celery.

One run at a time, an N-step agent (scripted model with zero latency, a no-op
tool) against chains of 2N+1 bare Celery hops (bench.bare): a step is a plan
task and a tool task, so 2 hops per step plus the final plan is the least any
Celery-based runtime could do. The two are interleaved on the same Redis and
the same worker settings so that a shared machine's noise falls on both alike
and the ratio measures Tether, not the box. The CPU each side used (its worker
processes and Redis, metered around each of its runs alone) is compared the
same way. A third side, bench.floor's chains (two bare hops a step plus the
least Redis work the design asks of a step), is interleaved with them: the
ratio no implementation of the design could go below on these cores.
start_stack brings up the stack (Tether's services and the bare queues side
by side); the throughput and state measurements run on it too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import floor
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
    floor_workers = Workers(driver.redis_url, log_dir=workers.log_dir)
    for queue in floor.QUEUES:
        floor_workers.bare(queue, app="bench.floor")
    try:
        floor_workers.wait_ready()
        _measure(plan, driver, workers, floor_workers, res)
    finally:
        floor_workers.stop()


def _measure(
    plan: Plan, driver: Driver, workers: Workers, floor_workers: Workers, res: Results
) -> None:
    steps, hops = plan.steps, 2 * plan.steps + 1
    sides: dict[str, Callable[[], float]] = {
        "tether": lambda: driver.tether_run(steps),
        "bare": lambda: driver.bare_chain(hops),
        "floor": lambda: driver.floor_chain(hops),
    }
    for _ in range(plan.warmup):
        for run in sides.values():
            run()
    redis = [redis_pid(driver.redis)]
    pids = {
        "tether": [*workers.pids("planner"), *workers.pids("executor"), *redis],
        "bare": [*workers.pids("bare_"), *redis],
        "floor": [*floor_workers.pids("floor_"), *redis],
    }
    times: dict[str, list[float]] = {side: [] for side in sides}
    # Summed over all runs, not a median per run: CPU times tick in 10 ms steps.
    cpu = dict.fromkeys(sides, 0.0)
    commands = dict.fromkeys(sides, 0)
    for _ in range(plan.seq_runs):  # interleaved, so noise hits all alike
        for side, run in sides.items():
            before = driver.command_stats()
            meter = CpuMeter({side: pids[side]}).start()
            times[side].append(run() / steps)
            cpu[side] += meter.seconds()[side]
            commands[side] += sum(driver.commands_since(before).values())
    t, b, f = (stats_ms(times[side]) for side in sides)
    tc, bc, fc = (round(1000 * cpu[side] / (plan.seq_runs * steps), 3) for side in sides)
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
        # bench.floor: two bare hops plus the least Redis work the design asks of a step.
        "floor_ms_per_step": f,
        "floor_ratio": round(f["median"] / b["median"], 3),
        "floor_cpu_ms_per_step": fc,
        "floor_cpu_ratio": round(fc / max(1e-9, bc), 3),
        # Redis commands per step, those inside scripts included, of each side's runs.
        "commands_per_step": {
            side: round(commands[side] / (plan.seq_runs * steps), 1) for side in sides
        },
    }
    per_step = res.overhead["commands_per_step"]
    # What Tether's own code adds to the design's least work, time, CPU and commands.
    res.overhead["tether_floor"] = {
        "time": round(t["median"] / f["median"], 3),
        "cpu": round(tc / max(1e-9, fc), 3),
        "commands": round(per_step["tether"] / max(1e-9, per_step["floor"]), 3),
    }
    log(
        f"overhead: tether {t['median']} ms/step, bare {b['median']} ms/step, ratio {res.overhead['ratio']}"
    )
    log(f"cpu: tether {tc} ms/step, bare {bc} ms/step, ratio {res.overhead['cpu_ratio']}")
    log(floor_line(res.overhead))
    log(tether_floor_line(res.overhead))


def floor_line(overhead: dict[str, Any]) -> str:
    commands = overhead["commands_per_step"]
    return (
        f"floor vs bare: {overhead['floor_ms_per_step']['median']} ms/step, "
        f"ratio {overhead['floor_ratio']}; cpu {overhead['floor_cpu_ms_per_step']} ms/step, "
        f"ratio {overhead['floor_cpu_ratio']}; commands per step {commands['floor']} "
        f"(bare {commands['bare']}, tether {commands['tether']})"
    )


def tether_floor_line(overhead: dict[str, Any]) -> str:
    r = overhead["tether_floor"]
    return (
        f"floor: {overhead['floor_ms_per_step']['median']} ms/step; tether/floor "
        f"{r['time']:.2f} (time), {r['cpu']:.2f} (cpu), {r['commands']:.2f} (commands)"
    )
