"""Profile the planner and executor hot path with py-spy while runs step one at a time.

    python -m bench.profile [--seconds 20] [--steps 20] [--out DIR]

Starts Redis and one worker process per service (concurrency 1, so the stacks
are those of one pool process), attaches ``py-spy record --subprocesses`` to
each worker, drives N-step bench runs back to back, then prints the functions
with the most samples (self and inclusive, Tether's own frames marked) and
leaves collapsed stacks (flamegraph input) in DIR.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.driver import Driver
from bench.procs import Workers, stop_all
from tether.dev.redis_server import RedisServer


def summarise(path: Path, top: int) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        # --subprocesses adds lines naming a process, whose command line has spaces.
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # Only samples taken inside a task: the rest is the pool waiting for work.
        if not any("trace_task" in f or "__protected_call__" in f for f in frames):
            continue
        total += count
        self_counts[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            incl_counts[frame] += count
    lines = [f"{path.stem}: {total} samples inside tasks"]
    lines.append("  self time:")
    for frame, count in self_counts.most_common(top):
        lines.append(f"    {100 * count / max(1, total):5.1f}%  {frame}")
    lines.append("  inclusive time (tether frames):")
    tether = [(f, c) for f, c in incl_counts.most_common() if "tether/" in f or "bench/" in f]
    for frame, count in tether[:top]:
        lines.append(f"    {100 * count / max(1, total):5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy frames read "function (path/to/file.py:line)"; keep the function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    tail = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({tail})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with RedisServer() as server:
        workers = Workers(server.url)
        for service in ("planner", "executor", "escalation"):
            workers.tether(service, concurrency=1)
        workers.wait_ready()
        spies: list[subprocess.Popen[bytes]] = []
        try:
            driver = Driver(server.url)
            for _ in range(3):
                driver.tether_run(args.steps)
            for service in ("planner", "executor"):
                spies.append(
                    subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--subprocesses",
                            "--rate",
                            str(args.rate),
                            "--format",
                            "raw",
                            "--output",
                            str(out / f"{service}.txt"),
                            "--pid",
                            str(workers.pids(service)[0]),
                            "--duration",
                            str(int(args.seconds) + 2),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.5)
            deadline = time.monotonic() + args.seconds
            runs = 0
            per_step: list[float] = []
            while time.monotonic() < deadline:
                per_step.append(driver.tether_run(args.steps) / args.steps)
                runs += 1
            for spy in spies:
                spy.wait(timeout=60)
        finally:
            stop_all(spies)
            workers.stop()
    per_step.sort()
    print(
        f"{runs} runs of {args.steps} steps, median {1000 * per_step[len(per_step) // 2]:.2f} ms/step (under py-spy)"
    )
    for service in ("planner", "executor"):
        path = out / f"{service}.txt"
        if path.exists():
            print(summarise(path, args.top))
    print(f"collapsed stacks in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
