"""Throughput: agent steps per second with many runs at once, and where the CPU goes.

A fixed batch of runs is started at once with 1, 2 and 4 worker processes per
service, beside the same batch of bare Celery hop chains and of bench.floor's
chains (two bare hops a step plus the least Redis work the design asks), while
the CPU of the planner, executor, Redis and the driver itself is metered: on a
small box the question is less "how fast" than "does adding processes help, and
which part is the bottleneck". The floor's rate is what bench.inflight's ceiling
is read from. At the default concurrency it also counts Redis commands and
bytes per step (the harness's own reads left out of the commands), the figures
that predict how far one Redis carries (bench.capacity). scaling_ceiling says
what adding processes could at best give on this box, which is the target the
report holds throughput against.
"""

from __future__ import annotations

import os
from typing import Any

from bench import floor
from bench.driver import Driver, log, redis_pid
from bench.plan import Plan, Results
from bench.procs import CpuMeter, Workers


def measure_throughput(
    plan: Plan, driver: Driver, workers: Workers, concurrency: int, res: Results, *, commands: bool
) -> None:
    # The floor's workers at the same process count as the bare ones (start_stack's).
    floor_workers = Workers(driver.redis_url, log_dir=workers.log_dir)
    for queue in floor.QUEUES:
        floor_workers.bare(queue, app="bench.floor", concurrency=concurrency)
    try:
        floor_workers.wait_ready()
        _measure(plan, driver, workers, concurrency, res, commands=commands)
    finally:
        floor_workers.stop()


def _measure(
    plan: Plan, driver: Driver, workers: Workers, concurrency: int, res: Results, *, commands: bool
) -> None:
    steps = plan.steps
    driver.tether_batch(8, 4)  # warm every pool process
    driver.bare_batch(8, 9)
    driver.floor_batch(8, 9)
    meter = CpuMeter(
        {
            "planner": workers.pids("planner"),
            "executor": workers.pids("executor"),
            "redis": [redis_pid(driver.redis)],
            "driver": [os.getpid()],
        },
        flat=["driver"],
    ).start()
    before = driver.command_stats() if commands else {}
    net_before = _net_bytes(driver) if commands else (0, 0)
    elapsed = driver.tether_batch(plan.tp_runs, steps)
    delta = driver.commands_since(before) if commands else {}
    net_after = _net_bytes(driver) if commands else (0, 0)
    cpu = meter.stop()
    bare_elapsed = driver.bare_batch(plan.tp_runs, 2 * steps + 1)
    floor_elapsed = driver.floor_batch(plan.tp_runs, 2 * steps + 1)
    total_steps = plan.tp_runs * steps
    row: dict[str, Any] = {
        "processes_per_service": concurrency,
        "runs": plan.tp_runs,
        "steps": total_steps,
        "tether_steps_per_s": round(total_steps / elapsed, 1),
        "bare_steps_per_s": round(total_steps / bare_elapsed, 1),
        "floor_steps_per_s": round(total_steps / floor_elapsed, 1),
        "cpu_cores_used": cpu,
        "cpu_cores_total": round(sum(cpu.values()), 2),
    }
    if commands:
        row["redis_commands_per_step"] = round(sum(delta.values()) / total_steps, 1)
        row["redis_commands_by_name"] = {
            k: round(v / total_steps, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
        }
        before = driver.command_stats()
        driver.bare_batch(plan.tp_runs, 2 * steps + 1)
        bare_delta = driver.commands_since(before)
        row["bare_redis_commands_per_step"] = round(sum(bare_delta.values()) / total_steps, 1)
        # Bytes clients sent Redis and Redis sent back; the harness's few reads
        # (the lifecycle entries it watches for ends) are in the second.
        row["redis_bytes_in_per_step"] = round((net_after[0] - net_before[0]) / total_steps)
        row["redis_bytes_out_per_step"] = round((net_after[1] - net_before[1]) / total_steps)
    res.throughput.append(row)
    log(
        f"throughput x{concurrency}: tether {row['tether_steps_per_s']} steps/s, "
        f"bare {row['bare_steps_per_s']} steps/s, floor {row['floor_steps_per_s']} steps/s, "
        f"cpu {cpu}"
    )


def _net_bytes(driver: Driver) -> tuple[int, int]:
    """Redis's total_net_input_bytes and total_net_output_bytes so far."""
    stats = driver.redis.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def scaling_ceiling(one: dict[str, Any], processes: int) -> float:
    """Linear scaling from 1 process per service, capped by the CPU the box has.

    With one process per service the pipeline already keeps ``one['cpu_cores_total']``
    cores busy; at the same CPU per step, the cores of the box allow at most
    ``steps/s x cores / busy cores``.
    """
    cores = os.cpu_count() or 1
    rate = float(one["tether_steps_per_s"])
    busy = max(1e-9, float(one["cpu_cores_total"]))
    return min(rate * processes, rate * cores / busy)
