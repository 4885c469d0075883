"""Runs in flight: how many slow-model runs the workers keep moving at once.

Real agents spend most of their time waiting on a model, so the figure that
matters is how many runs can be in flight before scheduling itself slows
down. Runs whose model takes 1 s (bench.model_server, reached by the openai
client) are kept at a fixed number in flight, raised level by level until the
p99 delay from publish to task start reaches 100 ms or the model calls stop
keeping pace, once for each planner pool (and once with task events off); the delays come from Celery
signal hooks in the workers (bench.hooks), not from the driver, so the
driver's own load does not blur them.

How many runs a box holds is mostly a matter of its cores, so the figure is
judged as a share (``share``): the runs the best configuration held against
the runs the floor's own message rate (bench.floor: two bare hops a step plus
the least Redis work the design asks), measured in the same bench run by
bench.throughput, would allow on the same cores. Bare Celery's ceiling is kept
beside it for context.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import hooks
from bench.driver import POLL_S, Driver, Lifecycle, log, percentile, redis_pid
from bench.plan import TARGET_INFLIGHT_SHARE, TARGET_P99_S, Plan, Results
from bench.procs import CpuMeter, ModelServer, Workers

# A configuration named POOL+quiet runs POOL with Celery task events off
# (TETHER_TASK_EVENTS=false): what Flower's view of every task costs.
QUIET = "+quiet"


def parse_config(config: str) -> tuple[str, bool]:
    """(planner pool, task events off) of an in-flight configuration's name."""
    return config.removesuffix(QUIET), config.endswith(QUIET)


def run_inflight(plan: Plan, redis_url: str, config: str, log_dir: Path | None) -> dict[str, Any]:
    pool, quiet = parse_config(config)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushall()
    delay_dir = Path(tempfile.mkdtemp(prefix="bench-delays-"))
    os.environ["BENCH_DELAY_DIR"] = str(delay_dir)
    hooks.install()
    top = max(plan.levels)
    per_process = top // plan.planner_processes + 50
    env = {"BENCH_DELAY_DIR": str(delay_dir)}
    if quiet:
        env["TETHER_TASK_EVENTS"] = "false"
    levels: list[dict[str, Any]] = []
    with ModelServer(
        plan.model_latency_s, dict(os.environ), _log(log_dir, "model_server")
    ) as model:
        env["BENCH_MODEL_URL"] = model.url
        workers = Workers(redis_url, env=env, log_dir=log_dir)
        try:
            for n in range(plan.planner_processes):
                workers.tether("planner", pool=pool, concurrency=per_process, tag=str(n))
            workers.tether("executor", pool="prefork", concurrency=plan.executor_processes)
            workers.wait_ready()
            driver = Driver(redis_url)
            groups = {
                "planner": workers.pids("planner"),
                "executor": workers.pids("executor"),
                "redis": [redis_pid(r)],
                "model_server": [model.process.pid] if model.process else [],
                "driver": [os.getpid()],
            }
            levels = _ramp(plan, driver, groups, delay_dir)
        finally:
            workers.stop()
            os.environ.pop("BENCH_DELAY_DIR", None)
            shutil.rmtree(delay_dir, ignore_errors=True)
    sustained = [lv["runs_in_flight"] for lv in levels if lv["ok"]]
    costs = [lv["cpu_ms_per_model_call"] for lv in levels if "cpu_ms_per_model_call" in lv]
    # Each run in flight asks for one model call per model latency.
    cpu_ms = statistics.median(costs) if costs else 0.0
    ceiling = (os.cpu_count() or 1) * 1000 / cpu_ms * plan.model_latency_s if cpu_ms else 0.0
    return {
        "cpu_ms_per_model_call": round(cpu_ms, 2),
        "cpu_bound_runs_in_flight": round(ceiling),
        "pool": pool,
        "task_events": not quiet,
        "planner_processes": plan.planner_processes,
        "planner_concurrency_per_process": per_process,
        "executor_processes": plan.executor_processes,
        "levels": levels,
        "max_sustained": max(sustained) if sustained else 0,
    }


def share(plan: Plan, res: Results) -> dict[str, Any]:
    """Issue 27's in-flight figures: Tether's N, the floor's ceiling M, and S = N / M.

    N is the most runs in flight the best configuration held (ties: the lower
    p99 at that level). M is what the floor's hop rate H (hops per second,
    bench.throughput's floor chains) would carry if Tether's own code cost
    nothing on top of the least work the design asks: a run with k tool steps
    makes k + 1 model calls, so it is in flight (k + 1) x L seconds at model
    latency L, and it needs 2k + 1 messages (k + 1 plan tasks, k tool tasks:
    the chain bench.floor mirrors), so each run in flight asks for
    (2k + 1) / ((k + 1) x L) messages a second and

        M = H x L x (k + 1) / (2k + 1)

    (k = 2, L = 1 s: 0.6 s x H; "one step of two hops per model latency" would
    say 0.5 s x H, undercounting the calls per run by one). The throughput
    section measures H at 1, 2 and 4 processes per queue, which brackets the
    in-flight layout (plan.planner_processes planners, plan.executor_processes
    executors) but is not it; the best of them is taken, so that the ceiling is
    not understated and the share not flattered. Bare Celery's ceiling, the
    same arithmetic on its hop rate, is kept for context (``bare_ceiling_runs``,
    ``bare_share``). Ceilings are rounded to whole runs and shares computed from
    the rounded ceilings, so the printed line can be checked by hand. {} when
    either section did not run.
    """
    if not res.inflight or not res.throughput:
        return {}

    def rank(config: str) -> tuple[int, float]:
        result = res.inflight[config]
        held = [lv for lv in result["levels"] if lv["ok"]]
        p99 = held[-1]["delay_p99_ms"] if held else float("inf")
        return result["max_sustained"], -p99

    config = max(res.inflight, key=rank)
    n = int(res.inflight[config]["max_sustained"])
    k, latency = plan.inflight_steps, plan.model_latency_s
    messages_per_run, model_calls_per_run = 2 * k + 1, k + 1
    figures: dict[str, Any] = {
        "tether_runs": n,
        "target_share": TARGET_INFLIGHT_SHARE,
        "config": config,
        "tether_delay_p99_ms": -rank(config)[1] if n else None,
        "model_latency_s": latency,
        "inflight_steps": k,
        "messages_per_run": messages_per_run,
        "model_calls_per_run": model_calls_per_run,
        "inflight_layout": {
            "planner_processes": plan.planner_processes,
            "executor_processes": plan.executor_processes,
        },
    }
    for side in ("floor", "bare"):
        key = f"{side}_steps_per_s"
        rows = [row for row in res.throughput if key in row]
        if not rows:
            continue
        best = max(rows, key=lambda row: float(row[key]))
        steps_per_chain = best["steps"] / best["runs"]
        hops_per_s = best[key] * (2 * steps_per_chain + 1) / steps_per_chain
        m = round(hops_per_s * latency * model_calls_per_run / messages_per_run)
        figures.update(
            {
                f"{side}_ceiling_runs": m,
                f"{side}_steps_per_s": best[key],
                f"{side}_processes_per_service": best["processes_per_service"],
                f"{side}_steps_per_chain": steps_per_chain,
                f"{side}_hops_per_s": round(hops_per_s, 1),
                f"{side}_share": round(n / m, 2) if m else 0.0,
            }
        )
    if "floor_ceiling_runs" not in figures:
        return {}
    figures["share"] = figures["floor_share"]
    return figures


def share_line(figures: dict[str, Any]) -> str:
    return (
        f"in-flight: tether {figures['tether_runs']} runs, "
        f"floor ceiling {figures['floor_ceiling_runs']} runs, share {figures['share']:.2f}"
    )


def record_share(plan: Plan, res: Results) -> None:
    """Store the in-flight figures in ``res`` and print their line."""
    res.inflight_share = share(plan, res)
    if res.inflight_share:
        log(share_line(res.inflight_share))
    else:
        log("in-flight: no floor ceiling without the throughput section")


def _log(log_dir: Path | None, name: str) -> Path | None:
    return None if log_dir is None else log_dir / f"{name}.log"


def _ramp(
    plan: Plan, driver: Driver, groups: dict[str, list[int]], delay_dir: Path
) -> list[dict[str, Any]]:
    lc = Lifecycle(driver.redis)
    in_flight: dict[str, float] = {}
    text = f"steps={plan.inflight_steps}"
    levels: list[dict[str, Any]] = []
    durations: list[float] = []
    kinds: list[tuple[float, str]] = []
    failed = 0

    def follow() -> None:
        """Take in what the lifecycle stream has, then wait POLL_S: a read blocked on the
        stream would wake the driver for every entry, on the cores the runs need."""
        nonlocal failed
        for fields in lc.poll():
            now = time.time()
            kind = fields.get("kind", "")
            if kind in ("model_call", "run_finished"):
                kinds.append((now, kind))
            if kind == "run_finished":
                started = in_flight.pop(fields.get("run_id", ""), None)
                if started is not None:
                    durations.append(now - started)
            elif kind == "model_failed":
                failed += 1
        time.sleep(POLL_S)

    def top_up(target: int, budget: int) -> int:
        """Submit runs until ``target`` are in flight, at most ``budget`` now."""
        added = 0
        while len(in_flight) < target and added < budget:
            in_flight[driver.submit("bench_remote", text)] = time.time()
            added += 1
        return added

    # A run's expected length: its model calls back to back. New runs are spread
    # evenly over one run length, so runs do not step in lockstep (which would
    # send every tool call of the level in one burst, once a second).
    run_s = (plan.inflight_steps + 1) * plan.model_latency_s
    for level in plan.levels:
        start_count = len(in_flight)
        ramp_start = time.monotonic()
        while len(in_flight) < level:
            ramped = int((time.monotonic() - ramp_start) / run_s * (level - start_count))
            top_up(min(level, start_count + 1 + ramped), level)
            follow()
        settle_end = time.monotonic() + plan.settle_s
        while time.monotonic() < settle_end:
            top_up(level, level)
            follow()
        meter = CpuMeter(groups, flat=["driver"]).start()
        w0 = time.time()
        durations.clear()
        failed_before = failed
        counts: list[int] = []
        while time.time() - w0 < plan.window_s:
            top_up(level, level)
            follow()
            counts.append(len(in_flight))
        w1 = time.time()
        cpu = meter.stop()
        time.sleep(hooks.FLUSH_EVERY_S * 2)
        follow()
        samples = [s for s in hooks.read_samples(delay_dir) if w0 <= s[0] <= w1]
        delays = [d for _, d, _ in samples]
        plan_delays = [d for _, d, q in samples if q == "tether.plan"]
        tool_delays = [d for _, d, q in samples if q == "tether.tools"]
        model_calls = sum(1 for t, k in kinds if w0 <= t <= w1 and k == "model_call")
        p99 = percentile(delays, 0.99)
        row: dict[str, Any] = {
            "runs_in_flight": level,
            "mean_in_flight": round(statistics.fmean(counts), 1) if counts else 0,
            "messages": len(delays),
            "delay_p50_ms": round(percentile(delays, 0.5) * 1000, 2),
            "delay_p99_ms": round(p99 * 1000, 2),
            "delay_max_ms": round(max(delays, default=0.0) * 1000, 2),
            "plan_queue_p99_ms": round(percentile(plan_delays, 0.99) * 1000, 2),
            "tools_queue_p99_ms": round(percentile(tool_delays, 0.99) * 1000, 2),
            "model_calls_per_s": round(model_calls / (w1 - w0), 1),
            "run_s_p50": round(percentile(durations, 0.5), 3),
            "model_failures": failed - failed_before,
            "cpu_cores_used": cpu,
            "cpu_cores_total": round(sum(cpu.values()), 2),
        }
        # What one model call costs the system (the model server and driver stand in
        # for the outside world): the box's cores over it bound the runs in flight.
        system = sum(v for k, v in cpu.items() if k in ("planner", "executor", "redis"))
        if row["model_calls_per_s"] > 0:
            row["cpu_ms_per_model_call"] = round(1000 * system / row["model_calls_per_s"], 2)
        # Sustained: messages start within 100 ms (p99), and the runs keep pace: with
        # the CPU saturated a greenlet starts at once but its work crawls, so the
        # model calls actually made must also reach 85% of what the level asks.
        row["keeps_pace"] = row["model_calls_per_s"] >= 0.85 * level / plan.model_latency_s
        row["ok"] = (
            bool(delays) and p99 < TARGET_P99_S and row["model_failures"] == 0 and row["keeps_pace"]
        )
        levels.append(row)
        kinds[:] = [(t, k) for t, k in kinds if t > w1]
        log(
            f"in flight {level}: p99 {row['delay_p99_ms']} ms (plan {row['plan_queue_p99_ms']}, "
            f"tools {row['tools_queue_p99_ms']}), {row['model_calls_per_s']} model calls/s, "
            f"run p50 {row['run_s_p50']} s, cpu {row['cpu_cores_used']}, sustained {row['ok']}"
        )
        if not row["ok"]:
            break
    # Let what is in flight end before the workers stop.
    deadline = time.monotonic() + 30
    while in_flight and time.monotonic() < deadline:
        follow()
    return levels
