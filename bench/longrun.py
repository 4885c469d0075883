"""Long runs: does a step cost the same at step 60 as at step 1?

A run's messages grow with every step; if a commit rewrote them all, or the
log repeated them, each step would cost more than the last. ``bench_long``
calls a tool that returns 4 KB, ``long_steps`` times, one run at a time. The
time of step k is the gap between the decisions of steps k-1 and k in the
run's event log; the bytes of step k are what clients sent Redis from the
result of action k being stored to that of action k+1 (MONITOR, in a run of its own,
since watching slows Redis). Each end is the median of ``long_window`` steps,
so that one slow step on a shared machine does not decide the ratio.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from typing import Any

import redis

from bench.driver import Driver, Lifecycle, log, wait_finished
from bench.plan import TARGET_LONG_RATIO, Plan, Results
from tether.store import keys

AGENT = "bench_long"
# The harness's own reads: following the lifecycle stream, and MONITOR's stop.
_HARNESS = ("XREAD", "XREVRANGE", "PING", "INFO")


def measure_long_run(plan: Plan, driver: Driver, res: Results) -> None:
    steps, window = plan.long_steps, plan.long_window
    first: list[float] = []
    last: list[float] = []
    for _ in range(plan.long_runs):
        gaps = _step_times(driver, steps)
        first += gaps[:window]
        last += gaps[-window:]
    sent = _step_bytes(driver, steps)
    full = sent[1:-1]  # before the first action, and the final answer, are no tool step
    t1, tn = statistics.median(first) * 1000, statistics.median(last) * 1000
    b1, bn = statistics.median(full[:window]), statistics.median(full[-window:])
    res.long_run = {
        "steps": steps,
        "runs": plan.long_runs,
        "window": window,
        "tool_output_bytes": 4096,
        "step_1_ms": round(t1, 3),
        "step_n_ms": round(tn, 3),
        "ratio": round(tn / t1, 3),
        "step_1_bytes": round(b1),
        "step_n_bytes": round(bn),
        "bytes_ratio": round(bn / b1, 3),
        "bytes_per_step": [round(b) for b in full],
        "target_ratio": TARGET_LONG_RATIO,
    }
    log(f"long-run: step 1 {t1:.2f} ms, step {steps} {tn:.2f} ms, ratio {tn / t1:.2f}")
    log(f"long-run bytes: step 1 {b1:.0f} B, step {steps} {bn:.0f} B, ratio {bn / b1:.2f}")


def _step_times(driver: Driver, steps: int) -> list[float]:
    run_id = _run(driver, steps)
    decided = [
        e.at.timestamp() for _, e in driver.rt.store.log.read(run_id) if e.kind == "decision"
    ]
    return [b - a for a, b in itertools.pairwise(decided)]


def _run(driver: Driver, steps: int) -> str:
    lc = Lifecycle(driver.redis)
    run_id = driver.submit(AGENT, f"steps={steps}")
    wait_finished(lc, {run_id}, 300)
    return run_id


def _step_bytes(driver: Driver, steps: int) -> list[int]:
    """Bytes clients sent Redis in each tool step of one run (segment 0: before the first)."""
    seen: list[dict[str, Any]] = []
    watching = threading.Event()
    done = threading.Event()
    watcher = redis.Redis.from_url(driver.redis_url, decode_responses=True)

    def watch() -> None:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            watching.set()
            for item in monitor.listen():
                if done.is_set():
                    break
                seen.append(item)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    watching.wait(10)
    time.sleep(0.2)
    try:
        run_id = _run(driver, steps)
    finally:
        done.set()
        driver.redis.ping()  # wakes the watcher so it sees done
        thread.join(10)
    results = keys.action_result(f"{run_id}:")
    segments = [0]
    for item in seen:
        command = item["command"]
        if command.startswith(_HARNESS):
            continue
        key = command.split(" ", 2)[1] if command.startswith("SET ") else ""
        if key.startswith(results) and not key.endswith(":lock"):
            # An action's result is stored (once: its first writer wins): a step ends. An
            # idempotent tool takes no lease, so the result, not a lock, marks the step; it
            # is stored inside a script (store/first_result.lua), whose bytes the client
            # sent with the script's call.
            segments.append(0)
        if item.get("client_type") != "lua":
            segments[-1] += len(command)
    return segments
