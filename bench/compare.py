"""A/B: per-step time and throughput of two checkouts of Tether, in one run.

    python -m bench.compare before=/path/to/old/checkout after=. [--runs 20] [--throughput]

Each checkout gets its own worker processes on its own database of one Redis,
and bare Celery hops run beside them. Runs alternate between the checkouts
(and the bare chain), so the noise of a shared machine falls on all alike:
this is how the before/after numbers of each optimisation were taken.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.bare import QUEUES
from bench.driver import Driver
from bench.procs import Workers
from tether.dev.redis_server import RedisServer


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("trees", nargs="+", help="NAME=PATH of a checkout")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--throughput", type=int, default=0, help="also N runs at once, twice each")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    steps, hops = args.steps, 2 * args.steps + 1
    with RedisServer() as server:
        base = server.url.rsplit("/", 1)[0]
        stacks: dict[str, Workers] = {}
        drivers: dict[str, Driver] = {}
        bare = Workers(f"{base}/0")
        try:
            for queue in QUEUES:
                bare.bare(queue, concurrency=args.concurrency)
            bare.wait_ready()
            for db, (name, path) in enumerate(trees.items(), start=1):
                url = f"{base}/{db}"
                stack = Workers(url, tree=Path(path).resolve())
                for service in ("planner", "executor", "escalation"):
                    stack.tether(service, concurrency=args.concurrency)
                stacks[name] = stack
                drivers[name] = Driver(url)
            for stack in stacks.values():
                stack.wait_ready()
            bare_driver = Driver(f"{base}/0")
            times: dict[str, list[float]] = {name: [] for name in [*trees, "bare"]}
            for i in range(args.runs + 3):
                for name, driver in drivers.items():
                    took = driver.tether_run(steps) / steps
                    if i >= 3:
                        times[name].append(took)
                took = bare_driver.bare_chain(hops) / steps
                if i >= 3:
                    times["bare"].append(took)
            bare_ms = statistics.median(times["bare"]) * 1000
            print(f"{steps}-step runs, {args.runs} each, interleaved; bare = {hops} hops")
            for name, values in times.items():
                ms = statistics.median(values) * 1000
                print(f"  {name:>10}: {ms:7.2f} ms/step (median)  {ms / bare_ms:5.2f}x bare")
            if args.throughput:
                rates: dict[str, list[float]] = {name: [] for name in [*trees, "bare"]}
                for _ in range(2):
                    for name, driver in drivers.items():
                        elapsed = driver.tether_batch(args.throughput, steps)
                        rates[name].append(args.throughput * steps / elapsed)
                    elapsed = bare_driver.bare_batch(args.throughput, hops)
                    rates["bare"].append(args.throughput * steps / elapsed)
                print(f"throughput, {args.throughput} runs at once, best of 2:")
                for name, values in rates.items():
                    print(f"  {name:>10}: {max(values):7.1f} steps/s")
        finally:
            for stack in [*stacks.values(), bare]:
                stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
