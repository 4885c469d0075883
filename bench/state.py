"""Cost of state: Redis memory held by a run that waits for a human.

Runs that pause for a human can wait for days, so what decides how many one
Redis holds is the memory per idle run, not per step. It parks many runs in
waiting_human, measures used_memory before and after, and subtracts the event
log and the lifecycle stream (kept for audit and trimmable, not the run's
working state); per-key sizes say where the remaining bytes sit.
"""

from __future__ import annotations

import time
from typing import cast

from bench.driver import Driver, log
from bench.plan import TARGET_IDLE_BYTES, Plan, Results
from tether.store import keys


def measure_state(plan: Plan, driver: Driver, res: Results) -> None:
    r = driver.redis
    time.sleep(0.5)
    r.delete(keys.PENDING_ESCALATIONS)
    lifecycle_before = int(r.memory_usage(keys.LIFECYCLE_STREAM, samples=0) or 0)
    before = int(r.info("memory")["used_memory"])
    ids = [driver.submit("bench_idler", "wait for a human") for _ in range(plan.idle_runs)]
    deadline = time.monotonic() + 120
    while r.zcard(keys.PENDING_ESCALATIONS) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError("idle runs did not all reach waiting_human")
        time.sleep(0.2)
    while any(r.llen(q) for q in ("tether.plan", "tether.tools", "tether.escalations")):
        time.sleep(0.1)
    time.sleep(1.0)  # the last acks
    after = int(r.info("memory")["used_memory"])
    lifecycle_after = int(r.memory_usage(keys.LIFECYCLE_STREAM, samples=0) or 0)

    def usage(names: list[str]) -> list[int]:
        pipe = r.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        return [int(v or 0) for v in pipe.execute()]

    logs = sum(usage([keys.run_log(i) for i in ids]))
    escalation_ids = cast(list[str], r.zrange(keys.PENDING_ESCALATIONS, 0, -1))
    per_key = {
        "run_state": usage([keys.run(i) for i in ids]),
        "messages": usage([keys.run_messages(i) for i in ids]),
        "completed": usage([keys.run_completed(i) for i in ids]),
        "budget": usage([keys.budget(i) for i in ids]),
        "reservations": usage([keys.reservations(i) for i in ids]),
        "escalation": usage([keys.escalation(e) for e in escalation_ids]),
    }
    status = driver.rt.store.load(ids[0]).status
    n = len(ids)
    delta = after - before - logs - (lifecycle_after - lifecycle_before)
    res.state = {
        "idle_runs": n,
        "idle_status": str(status),
        "bytes_per_idle_run": round(delta / n),
        "bytes_per_idle_run_keys": {k: round(sum(v) / max(1, len(v))) for k, v in per_key.items()},
        "bytes_per_idle_run_keys_total": round(sum(sum(v) for v in per_key.values()) / n),
        "event_log_bytes_per_run": round(logs / n),
        "lifecycle_stream_bytes_per_run": round((lifecycle_after - lifecycle_before) / n),
        "target_bytes": TARGET_IDLE_BYTES,
    }
    log(
        f"state: {res.state['bytes_per_idle_run']} B per idle run ({res.state['bytes_per_idle_run_keys']})"
    )
