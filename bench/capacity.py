"""A capacity model past one machine, from one bench run's own figures.

What N runs in flight need at model latency L: planner and executor processes,
broker Redis servers and state-store Redis Cluster shards. The inputs are all
measured in the same bench run, by bench.throughput and by measure_split here:

- CPU per step of each service: its cores busy over the steps per second of the
  row with one process per service (the least contended figure);
- Redis commands and bytes per step, split into the broker's and the state
  store's, and each one's command rate per Redis core (its commands per second
  over the cores it used meanwhile; Redis serves its commands on one thread, so
  one server is one core whatever the box has). measure_split measures them on
  two Redis servers, the broker apart (TETHER_BROKER_URL), as a deployment past
  one machine runs; without it the split falls back on the throughput row
  that counted commands on one Redis: the broker's share is what a bare Celery
  step sends (an underestimate: Tether's transport lands and records its
  messages), the state store's the rest, at one command rate for both.

A run in flight asks for one step per model latency at most (its step's own
milliseconds only lower that), so N runs need N / L steps a second; every
server is sized to HEADROOM of what it can do, processes by whole ones (a
Python worker uses one core; the runs waiting on the model are greenlets of the
planner's gevent pool, not processes). One Celery deployment has one broker:
past the runs in flight one broker carries, the answer is cells, separate
deployments each with its own broker, partitioned by tenant or agent, while
the state store shards by run on Redis Cluster already, up to the rate of
the one shard that holds its lifecycle stream (a single key every step writes
to), past which cells need state stores of their own too.

The model is checked on this box: the steps per second it predicts at 1 and 2
processes per service, bounded by each service's processes, by one Redis and
by the box's cores (the harness's own CPU counted, since it shares them),
against the throughput the same run measured, as measured / predicted; and,
when the in-flight section ran, the runs in flight it predicts for that
section's layout against the runs it held.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from bench.driver import HARNESS_READS, Driver, log, redis_pid
from bench.plan import Plan, Results
from bench.procs import CpuMeter, Workers
from tether.dev.redis_server import RedisServer
from tether.store import keys

# Servers and processes are sized to this share of what each can do: queues stay
# short below it, and a lost node's work fits on the others.
HEADROOM = 0.70
RUNS_IN_FLIGHT = (1_000, 10_000, 100_000)
MODEL_LATENCY_S = 1.0
CHECKED_AT = (1, 2)  # processes per service whose measured throughput checks the model
# Redis CPU seconds measure_split waits for on each server: CPU times tick in 10 ms.
MIN_REDIS_CPU_S = 0.2


@dataclass(frozen=True)
class Inputs:
    """A step's cost, as one bench run measured it."""

    planner_cpu_ms_per_step: float
    executor_cpu_ms_per_step: float
    # The harness's CPU per step: not a service, but it shares this box's cores.
    driver_cpu_ms_per_step: float
    broker_commands_per_step: float
    state_commands_per_step: float
    # Commands one Redis core serves a second, in each role.
    broker_commands_per_core_s: float
    state_commands_per_core_s: float
    bytes_per_step: int | None = None  # to and from Redis, both roles together
    # Entries a step adds to the lifecycle stream: one key, so one shard of any Cluster.
    lifecycle_entries_per_step: float | None = None
    # "measured" (two Redis servers, bench.capacity.measure_split) or "bare" (one Redis,
    # the broker's share taken as bare Celery's).
    split: str = "measured"

    @property
    def commands_per_step(self) -> float:
        return self.broker_commands_per_step + self.state_commands_per_step

    @property
    def redis_cpu_ms_per_step(self) -> float:
        return 1000 * (
            self.broker_commands_per_step / self.broker_commands_per_core_s
            + self.state_commands_per_step / self.state_commands_per_core_s
        )


def inputs_from(res: Results) -> Inputs | None:
    """The model's inputs from a run's figures; None without the ones it needs (a
    throughput row at one process per service, and either measure_split's figures
    or a throughput row that counted Redis commands)."""
    one = next((r for r in res.throughput if r["processes_per_service"] == 1), None)
    if one is None or not one["tether_steps_per_s"]:
        return None
    steps_per_s = float(one["tether_steps_per_s"])

    def cpu_ms(service: str) -> float:
        return round(1000 * float(one["cpu_cores_used"].get(service, 0.0)) / steps_per_s, 3)

    planner, executor, driver = cpu_ms("planner"), cpu_ms("executor"), cpu_ms("driver")
    split = res.capacity.get("split")
    if split:
        return Inputs(
            planner_cpu_ms_per_step=planner,
            executor_cpu_ms_per_step=executor,
            driver_cpu_ms_per_step=driver,
            broker_commands_per_step=split["broker"]["commands_per_step"],
            state_commands_per_step=split["state"]["commands_per_step"],
            broker_commands_per_core_s=split["broker"]["commands_per_core_s"],
            state_commands_per_core_s=split["state"]["commands_per_core_s"],
            bytes_per_step=split["broker"]["bytes_per_step"] + split["state"]["bytes_per_step"],
            lifecycle_entries_per_step=split["state"].get("lifecycle_entries_per_step"),
        )
    counted = [r for r in res.throughput if "redis_commands_per_step" in r]
    if not counted:
        return None
    # The default concurrency's row when there are several (run.py counts at 2 only).
    row = min(counted, key=lambda r: abs(r["processes_per_service"] - 2))
    commands_per_s = row["redis_commands_per_step"] * row["tether_steps_per_s"]
    redis_cores = float(row["cpu_cores_used"].get("redis", 0.0))
    if redis_cores <= 0 or commands_per_s <= 0:
        return None
    rate = round(commands_per_s / redis_cores)
    broker = float(row["bare_redis_commands_per_step"])
    moved = row.get("redis_bytes_in_per_step", 0) + row.get("redis_bytes_out_per_step", 0)
    return Inputs(
        planner_cpu_ms_per_step=planner,
        executor_cpu_ms_per_step=executor,
        driver_cpu_ms_per_step=driver,
        broker_commands_per_step=broker,
        state_commands_per_step=round(float(row["redis_commands_per_step"]) - broker, 1),
        broker_commands_per_core_s=rate,
        state_commands_per_core_s=rate,
        bytes_per_step=int(moved) or None,
        split="bare",
    )


def size(
    inputs: Inputs, runs: int, latency_s: float = MODEL_LATENCY_S, headroom: float = HEADROOM
) -> dict[str, Any]:
    """What ``runs`` runs in flight at model latency ``latency_s`` need."""
    steps_per_s = runs / latency_s
    planners = math.ceil(steps_per_s * inputs.planner_cpu_ms_per_step / 1000 / headroom)
    broker_per_s = steps_per_s * inputs.broker_commands_per_step
    brokers = math.ceil(broker_per_s / (inputs.broker_commands_per_core_s * headroom))
    state_per_s = steps_per_s * inputs.state_commands_per_step
    sized: dict[str, Any] = {
        "runs_in_flight": runs,
        "model_latency_s": latency_s,
        "steps_per_s": round(steps_per_s, 1),
        "planner_processes": planners,
        # Model calls each planner process keeps open (its gevent pool's greenlets).
        "model_calls_per_planner": math.ceil(runs / planners),
        "executor_processes": math.ceil(
            steps_per_s * inputs.executor_cpu_ms_per_step / 1000 / headroom
        ),
        "broker_commands_per_s": round(broker_per_s),
        # What one broker would carry of it, against its full command rate.
        "one_broker_load": round(broker_per_s / inputs.broker_commands_per_core_s, 2),
        "broker_redis": brokers,
        # One Celery deployment has one broker: each broker past the first is a cell.
        "cells": brokers,
        "runs_per_cell": math.ceil(runs / brokers),
        "state_commands_per_s": round(state_per_s),
        "state_shards": math.ceil(state_per_s / (inputs.state_commands_per_core_s * headroom)),
    }
    if inputs.lifecycle_entries_per_step:
        # The lifecycle stream is one key: however many shards, one of them takes all
        # of it, so past that shard's rate the runs need state stores of their own.
        hot_per_s = steps_per_s * inputs.lifecycle_entries_per_step
        sized["state_stores"] = math.ceil(hot_per_s / (inputs.state_commands_per_core_s * headroom))
    if inputs.bytes_per_step is not None:
        sized["redis_mb_per_s"] = round(steps_per_s * inputs.bytes_per_step / 1e6, 1)
    return sized


def broker_limit_runs(
    inputs: Inputs, latency_s: float = MODEL_LATENCY_S, headroom: float = HEADROOM
) -> int:
    """Runs in flight at which one broker Redis reaches ``headroom`` of its command rate."""
    steps_per_s = inputs.broker_commands_per_core_s * headroom / inputs.broker_commands_per_step
    return math.floor(steps_per_s * latency_s)


def state_store_limit_runs(
    inputs: Inputs, latency_s: float = MODEL_LATENCY_S, headroom: float = HEADROOM
) -> int | None:
    """Runs in flight at which the state store's lifecycle stream, one key on one shard,
    reaches ``headroom`` of that shard's command rate; None if not measured."""
    if not inputs.lifecycle_entries_per_step:
        return None
    per_s = inputs.state_commands_per_core_s * headroom / inputs.lifecycle_entries_per_step
    return math.floor(per_s * latency_s)


def predicted_steps_per_s(
    inputs: Inputs, processes: int, cores: int, executors: int | None = None
) -> dict[str, float]:
    """Steps per second the model allows on one box of ``cores`` with ``processes`` per
    service (``executors`` executor processes, if not as many), broker and state on one
    Redis (as the bench runs them), by what bounds it."""
    bounds = {
        "planner": processes * 1000 / inputs.planner_cpu_ms_per_step,
        "executor": (executors or processes) * 1000 / inputs.executor_cpu_ms_per_step,
        "redis": 1000 / inputs.redis_cpu_ms_per_step,
        "cores": cores
        * 1000
        / (
            inputs.planner_cpu_ms_per_step
            + inputs.executor_cpu_ms_per_step
            + inputs.redis_cpu_ms_per_step
            + inputs.driver_cpu_ms_per_step
        ),
    }
    return {name: round(value, 1) for name, value in bounds.items()}


def model(res: Results, cores: int | None = None) -> dict[str, Any]:
    """The capacity model of a run's figures, checked against its throughput; {} when the
    throughput section did not measure what it needs."""
    inputs = inputs_from(res)
    if inputs is None:
        return {}
    cores = cores or os.cpu_count() or 1
    checks = []
    for processes in CHECKED_AT:
        row = next((r for r in res.throughput if r["processes_per_service"] == processes), None)
        if row is None:
            continue
        bounds = predicted_steps_per_s(inputs, processes, cores)
        binding = min(bounds, key=lambda name: bounds[name])
        checks.append(
            {
                "processes_per_service": processes,
                "predicted_steps_per_s": bounds[binding],
                "bound_by": binding,
                "bounds": bounds,
                "measured_steps_per_s": row["tether_steps_per_s"],
                "ratio": round(row["tether_steps_per_s"] / bounds[binding], 2),
            }
        )
    inflight = _inflight_check(res, inputs, cores)
    return {
        **({"split": res.capacity["split"]} if "split" in res.capacity else {}),
        **({"inflight_check": inflight} if inflight else {}),
        "inputs": asdict(inputs),
        "headroom": HEADROOM,
        "model_latency_s": MODEL_LATENCY_S,
        "sizes": [size(inputs, runs) for runs in RUNS_IN_FLIGHT],
        "broker_limit_runs": broker_limit_runs(inputs),
        "state_store_limit_runs": state_store_limit_runs(inputs),
        "cores": cores,
        "checks": checks,
    }


def _inflight_check(res: Results, inputs: Inputs, cores: int) -> dict[str, Any]:
    """The runs in flight the model allows this box in the in-flight section's layout,
    against the runs that section held, and what a model call cost there; {} without it.

    The model's CPU per step comes from the scripted, instant model; a model call at 1 s
    goes through the openai client's HTTP request, and the section holds the p99 delay
    under 100 ms, which cores run flat out do not: the ratio says how much of the model's
    figure a real model call and that delay target leave."""
    sh = res.inflight_share
    if not sh or sh["config"] not in res.inflight:
        return {}
    held = [lv for lv in res.inflight[sh["config"]]["levels"] if lv["ok"]]
    if not held or not held[-1]["model_calls_per_s"]:
        return {}
    level, layout, latency = held[-1], sh["inflight_layout"], sh["model_latency_s"]
    bounds = predicted_steps_per_s(
        inputs, layout["planner_processes"], cores, executors=layout["executor_processes"]
    )
    binding = min(bounds, key=lambda name: bounds[name])
    predicted = round(bounds[binding] * latency)

    def per_call(service: str) -> float:
        used = float(level["cpu_cores_used"].get(service, 0.0))
        return round(1000 * used / float(level["model_calls_per_s"]), 2)

    return {
        "model_latency_s": latency,
        "layout": layout,
        "predicted_runs": predicted,
        "bound_by": binding,
        "held_runs": sh["tether_runs"],
        "ratio": round(sh["tether_runs"] / predicted, 2) if predicted else 0.0,
        "planner_cpu_ms_per_model_call": per_call("planner"),
        "executor_cpu_ms_per_model_call": per_call("executor"),
    }


def capacity_lines(figures: dict[str, Any]) -> list[str]:
    """The ``capacity:`` block of `make bench`'s output."""
    if not figures:
        return ["capacity: no model without the throughput section's rows at 1 and 2"]
    i = figures["inputs"]
    headroom, latency = figures["headroom"], figures["model_latency_s"]
    moved = f", {i['bytes_per_step']:,} B" if i["bytes_per_step"] else ""
    if i["split"] == "measured":
        rates = (
            f"one redis core {i['broker_commands_per_core_s']:,.0f} broker, "
            f"{i['state_commands_per_core_s']:,.0f} state commands/s"
        )
    else:
        rates = (
            f"one redis core {i['broker_commands_per_core_s']:,.0f} commands/s "
            "(broker's share taken as bare Celery's)"
        )
    lines = [
        f"capacity: per step planner {i['planner_cpu_ms_per_step']:.2f} ms cpu, executor "
        f"{i['executor_cpu_ms_per_step']:.2f} ms cpu, redis "
        f"{i['broker_commands_per_step'] + i['state_commands_per_step']:.1f} commands "
        f"(broker {i['broker_commands_per_step']:.1f}, state {i['state_commands_per_step']:.1f})"
        f"{moved}; {rates}; headroom {headroom:.0%}"
    ]
    for s in figures["sizes"]:
        cells = f" = {s['cells']} cells of {s['runs_per_cell']:,} runs" if s["cells"] > 1 else ""
        lines.append(
            f"capacity: {s['runs_in_flight']:,} runs in flight at {latency:g} s: "
            f"{s['steps_per_s']:,.0f} steps/s, {s['planner_processes']} planner and "
            f"{s['executor_processes']} executor processes, {s['broker_redis']} broker redis "
            f"({s['one_broker_load']:.2f} of one){cells}, {s['state_shards']} state shard{'s' if s['state_shards'] != 1 else ''}"
            + (f" in {s['state_stores']} state stores" if s.get("state_stores", 1) > 1 else "")
            + (f", {s['redis_mb_per_s']:,.0f} MB/s through Redis" if "redis_mb_per_s" in s else "")
        )
    lines.append(
        f"capacity: one broker redis reaches {headroom:.0%} at "
        f"{figures['broker_limit_runs']:,} runs in flight at {latency:g} s; past it, cells: "
        "separate Tether deployments, each with its own broker, partitioned by tenant or "
        "agent (the state store shards by run on Redis Cluster already)"
    )
    if figures.get("state_store_limit_runs"):
        lines.append(
            f"capacity: one state store's lifecycle stream (one key, one shard) reaches "
            f"{headroom:.0%} at {figures['state_store_limit_runs']:,} runs in flight at "
            f"{latency:g} s; past it, cells get state stores of their own too"
        )
    checks = [
        f"{c['processes_per_service']} per service predicted {c['predicted_steps_per_s']:,.0f} "
        f"steps/s ({c['bound_by']}), measured {c['measured_steps_per_s']:,.0f}, "
        f"ratio {c['ratio']:.2f}"
        for c in figures["checks"]
    ]
    if checks:
        lines.append(
            f"capacity: checked on this box ({figures['cores']} cores): " + "; ".join(checks)
        )
    c = figures.get("inflight_check")
    if c:
        lines.append(
            f"capacity: in flight on this box at {c['model_latency_s']:g} s: predicted "
            f"{c['predicted_runs']:,} runs ({c['bound_by']}), held {c['held_runs']:,}, ratio "
            f"{c['ratio']:.2f}; a model call there cost the planner "
            f"{c['planner_cpu_ms_per_model_call']:.2f} ms and the executor "
            f"{c['executor_cpu_ms_per_model_call']:.2f} ms of cpu"
        )
    return lines


def measure_split(plan: Plan, res: Results, log_dir: Path | None) -> None:
    """Commands, bytes and CPU per step of the broker and of the state store apart.

    A stack of its own, with its broker on a second Redis (TETHER_BROKER_URL), two
    processes per service as the default stack has, runs the throughput section's
    batch while each Redis's commands (those inside scripts included, the
    harness's reads left out), bytes in and out, and CPU are counted. Stored in
    ``res.capacity["split"]``, where bench.capacity.model reads it.
    """
    with RedisServer() as state, RedisServer() as broker:
        workers = Workers(state.url, log_dir=log_dir, broker_url=broker.url)
        for service in ("planner", "executor", "escalation"):
            workers.tether(service, concurrency=2)
        try:
            workers.wait_ready()
            driver = Driver(state.url, broker_url=broker.url)
            servers = {
                "broker": redis.Redis.from_url(broker.url, decode_responses=True),
                "state": driver.redis,
            }
            driver.tether_batch(8, 4)  # warm every pool process
            meter = CpuMeter({role: [redis_pid(client)] for role, client in servers.items()})
            before = {role: _counts(client) for role, client in servers.items()}
            lifecycle_before = _entries_added(driver.redis)
            meter.start()
            # CPU times tick in 10 ms steps: a small plan's batch is repeated until each
            # Redis has used enough of them for its rate to mean something.
            runs, elapsed = 0, 0.0
            while runs == 0 or (
                min(meter.seconds().values()) < MIN_REDIS_CPU_S and runs < 50 * plan.tp_runs
            ):
                elapsed += driver.tether_batch(plan.tp_runs, plan.steps)
                runs += plan.tp_runs
            cpu_s = meter.seconds()
            after = {role: _counts(client) for role, client in servers.items()}
            lifecycle = _entries_added(driver.redis) - lifecycle_before
        finally:
            workers.stop()
    steps = runs * plan.steps
    split: dict[str, Any] = {"runs": runs, "steps": steps, "processes_per_service": 2}
    split["steps_per_s"] = round(steps / elapsed, 1)
    for role in servers:
        sent = {
            name: n - before[role][0].get(name, 0)
            for name, n in after[role][0].items()
            if name not in HARNESS_READS and n > before[role][0].get(name, 0)
        }
        commands = sum(sent.values())
        moved = after[role][1] - before[role][1]
        split[role] = {
            "commands_per_step": round(commands / steps, 1),
            "bytes_per_step": round(moved / steps),
            "cpu_cores_used": round(cpu_s[role] / elapsed, 3),
            "commands_per_core_s": round(commands / max(1e-9, cpu_s[role])),
            "commands_by_name": {
                name: round(n / steps, 2) for name, n in sorted(sent.items(), key=lambda kv: -kv[1])
            },
        }
    split["state"]["lifecycle_entries_per_step"] = round(lifecycle / steps, 2)
    res.capacity = {"split": split}
    log(
        f"capacity split: broker {split['broker']['commands_per_step']} commands/step "
        f"({split['broker']['commands_per_core_s']:,} a core-second), state "
        f"{split['state']['commands_per_step']} ({split['state']['commands_per_core_s']:,}), "
        f"at {split['steps_per_s']} steps/s"
    )


def _counts(client: redis.Redis) -> tuple[dict[str, int], int]:
    """(calls by command name, bytes in and out so far) of one Redis."""
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    net = client.info("stats")
    return calls, int(net["total_net_input_bytes"]) + int(net["total_net_output_bytes"])


def _entries_added(client: redis.Redis) -> int:
    """Entries ever added to the lifecycle stream (trimming leaves this count alone)."""
    return int(client.xinfo_stream(keys.LIFECYCLE_STREAM)["entries-added"])
