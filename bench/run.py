"""The benchmark: `python -m bench` (full, a few minutes) or `python -m bench --quick` (< 2 min).

Every figure is measured in one run, on one redis-server that the harness
starts on a free port, with real Celery worker processes:

1. per-step overhead: one run at a time, an N-step agent (scripted model with
   zero latency, a no-op tool) against chains of 2N+1 bare Celery hops
   (bench.bare), interleaved, same Redis, same worker settings, in time and in
   CPU; and a 60-step run with 4 KB tool outputs, its last steps against its
   first (bench.longrun);
2. throughput: many runs at once with 1, 2 and 4 worker processes per service,
   and the CPU each part of the system used; from it and from a stack with its
   broker on a Redis of its own, a capacity model of what 1,000 to 100,000 runs
   in flight need past one machine (bench.capacity);
3. runs in flight: runs whose model takes 1 s (bench.model_server, reached by
   the openai client), kept at a fixed number in flight, raised level by level
   until the p99 scheduling delay (publish to task start) reaches 100 ms, for
   each planner pool; the best pool's count against the runs the floor's hop
   rate from (2) would carry (bench.inflight.share), bare Celery's beside it;
4. cost of state: Redis memory per idle run (waiting for a human) and Redis
   commands per step;
5. recovery: seconds from SIGKILL of a worker's process group to the run's
   next commit, on default settings (bench.recovery);
6. cluster: per-step time with run state on a three-node Redis Cluster against
   one Redis, runs alternating between two stacks (bench.cluster; it starts
   its own Redis servers);
7. handlers: what Tether's own handlers cost a step, called in this process
   with Celery left out, and the Redis CPU and commands they use
   (bench.handlers);
8. rate limits: runs through two planner processes against a provider that
   answers 429 over its requests per second, with the same limit configured
   in Tether and without (bench.ratelimit).
8. peer: LangGraph with a PostgreSQL checkpointer running the same agent loop,
   interleaved with Tether's runs, in time and CPU per step and in growth with
   4 KB tool outputs (bench.peer; skipped with a line when PostgreSQL or
   LangGraph is missing).

It prints a table with each figure beside its target and writes

This module holds only the command line and the order things run in; each
measurement is its own module (bench.overhead, bench.throughput,
bench.inflight, bench.state) on the shared clients of bench.driver, the plan,
targets and results record are in bench.plan, and bench.report renders them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import redis

from bench.capacity import capacity_lines, measure_split
from bench.capacity import model as capacity_model
from bench.cluster import cluster_line, measure_cluster
from bench.console import console_line, measure_console
from bench.driver import Driver, log
from bench.handlers import handlers_line, measure_handlers
from bench.inflight import record_share, run_inflight
from bench.longrun import measure_long_run
from bench.overhead import measure_overhead, start_stack
from bench.peer import measure_peer, peer_lines
from bench.plan import QUICK, Plan, Results
from bench.ratelimit import ratelimit_line, run_both
from bench.recovery import measure as measure_recovery
from bench.recovery import recovery_line
from bench.report import plot, print_table, table
from bench.state import measure_state
from bench.throughput import measure_throughput
from tether.dev.redis_server import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 2 minutes")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: overhead,longrun,peer,throughput,state,inflight,capacity,"
        "recovery,cluster,handlers,console,ratelimit",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results)"
    )
    parser.add_argument("--name", default="", help="results file name (default bench, or quick)")
    parser.add_argument(
        "--compare", type=Path, default=None, help="a results JSON to show as 'Before'"
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep worker logs in this folder")
    parser.add_argument(
        "--pools",
        default="",
        help="planner pools for the in-flight test, e.g. gevent,gevent+quiet (task events off)",
    )
    parser.add_argument("--levels", default="", help="runs-in-flight levels, e.g. 250,500,1000")
    args = parser.parse_args(argv)

    plan = Plan(quick=args.quick, **(QUICK if args.quick else {}))  # type: ignore[arg-type]
    if args.only:
        plan.sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    if args.pools:
        plan.pools = tuple(args.pools.split(","))
    if args.levels:
        plan.levels = tuple(int(v) for v in args.levels.split(","))
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("quick" if args.quick else "bench")
    before: Results | None = None
    compare = args.compare or (
        RESULTS / "before.json" if (RESULTS / "before.json").exists() else None
    )
    if compare is not None and compare.is_file() and compare.stat().st_size:
        before = Results(**json.loads(compare.read_text()))

    res = Results(
        meta={
            "mode": "quick" if args.quick else "full",
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "plan": {k: v for k, v in asdict(plan).items()},
            "command": "python -m bench" + (" --quick" if args.quick else ""),
        }
    )
    started = time.monotonic()
    with RedisServer() as server:
        url = server.url
        res.meta["redis"] = str(redis.Redis.from_url(url).info("server")["redis_version"])
        driver = Driver(url)
        if {"overhead", "longrun", "peer", "throughput", "state"} & set(plan.sections):
            order = sorted(plan.concurrencies, key=lambda c: c != 2)  # the default first
            for c in order:
                workers = start_stack(url, c, args.logs)
                try:
                    if c == 2 and "overhead" in plan.sections:
                        measure_overhead(plan, driver, workers, res)
                    if c == 2 and "longrun" in plan.sections:
                        measure_long_run(plan, driver, res)
                    if c == 2 and "peer" in plan.sections:
                        measure_peer(plan, driver, workers, res)
                    if "throughput" in plan.sections:
                        measure_throughput(plan, driver, workers, c, res, commands=c == 2)
                    if c == 2 and "state" in plan.sections:
                        measure_state(plan, driver, res)
                finally:
                    workers.stop()
                if "throughput" not in plan.sections:
                    break
                driver.redis.flushall()
            res.throughput.sort(key=lambda r: r["processes_per_service"])
        if "inflight" in plan.sections:
            for pool in plan.pools:
                log(f"runs in flight, planner pool {pool}")
                res.inflight[pool] = run_inflight(plan, url, pool, args.logs)
            record_share(plan, res)
    if "capacity" in plan.sections:
        log("the broker and the state store on two Redis servers, for the capacity model")
        measure_split(plan, res, args.logs)
    if res.throughput:
        res.capacity = capacity_model(res)
    if "recovery" in plan.sections:
        log("recovery after SIGKILL, default settings")
        res.recovery = measure_recovery(args.logs)
    if "cluster" in plan.sections:
        log("run state on a three-node Redis Cluster against one Redis")
        measure_cluster(plan, res, args.logs)
    if "handlers" in plan.sections:
        log("Tether's handlers in one process, Celery left out")
        measure_handlers(plan, res)
    if "console" in plan.sections:
        log("the console's pages with many runs stored")
        measure_console(plan, res)
    if "ratelimit" in plan.sections:
        log("a provider's requests per second, Tether limited and not")
        res.ratelimit = run_both(plan.quick, args.logs)
    res.meta["elapsed_s"] = round(time.monotonic() - started, 1)

    rows = table(res, before)
    print()
    text = print_table(rows, before is not None)
    (out / f"{name}.json").write_text(json.dumps(asdict(res), indent=1) + "\n")
    (out / f"{name}.md").write_text(text + "\n")
    plot(res, out / f"{name}.png", before)
    if res.throughput:
        for line in capacity_lines(res.capacity):
            print(line)
    if res.recovery:
        print(recovery_line(res.recovery))
    if res.cluster:
        print(cluster_line(res.cluster))
    if res.handlers:
        print(handlers_line(res.handlers))
    if res.console:
        print(console_line(res.console))
    for line in peer_lines(res.peer):
        print(line)
    if res.ratelimit:
        print(ratelimit_line(res.ratelimit))
    print(f"\nwrote {out / (name + '.json')}, {out / (name + '.png')} in {res.meta['elapsed_s']} s")
    return 0
