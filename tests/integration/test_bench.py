"""The benchmark harness on a tiny plan, so `make bench` cannot rot unnoticed.

Timings are not asserted (bench/ prints ratios from one run; a test on a
noisy machine must not judge them); what is checked is that each figure is
measured from real runs on real workers and reaches the report.
"""

from __future__ import annotations

from pathlib import Path

from bench.driver import Driver
from bench.longrun import measure_long_run
from bench.overhead import measure_overhead, start_stack
from bench.plan import TARGET_IDLE_BYTES, TARGET_LONG_RATIO, TARGET_RATIO, Plan, Results
from bench.report import table
from bench.state import measure_state
from tether.redis_server import RedisServer


def test_bench_measures_overhead_and_state_on_real_workers(tmp_path: Path) -> None:
    plan = Plan(
        quick=True,
        steps=3,
        warmup=1,
        seq_runs=3,
        idle_runs=30,
        long_steps=6,
        long_runs=1,
        long_window=2,
    )
    res = Results()
    with RedisServer() as server:
        driver = Driver(server.url)
        workers = start_stack(server.url, 1, tmp_path / "logs")
        try:
            measure_overhead(plan, driver, workers, res)
            measure_long_run(plan, driver, res)
            measure_state(plan, driver, res)
        finally:
            workers.stop()

    o = res.overhead
    assert (o["steps_per_run"], o["bare_hops_per_run"], o["runs"]) == (3, 7, 3)
    tether, bare = o["tether_ms_per_step"]["median"], o["bare_ms_per_step"]["median"]
    assert tether > 0 and bare > 0
    assert o["ratio"] == round(tether / bare, 3)
    cpu = o["tether_cpu_ms_per_step"], o["bare_cpu_ms_per_step"]
    assert cpu[0] > 0 and cpu[1] > 0 and o["cpu_ratio"] == round(cpu[0] / cpu[1], 3)

    lr = res.long_run
    assert lr["steps"] == 6 and lr["step_1_ms"] > 0 and lr["step_n_ms"] > 0
    # Steps 1 to 5 each send about as much as the others, whatever the run's length.
    assert len(lr["bytes_per_step"]) == 5 and min(lr["bytes_per_step"]) > 4096

    s = res.state
    assert (s["idle_runs"], s["idle_status"]) == (30, "waiting_human")
    assert all(s["bytes_per_idle_run_keys"][k] > 0 for k in ("run_state", "budget", "escalation"))
    # used_memory's delta needs the full run's 2,000 runs to rise above the allocator's
    # noise; the sizes of the keys themselves are exact at any count.
    assert s["bytes_per_idle_run_keys_total"] > 0 and s["event_log_bytes_per_run"] > 0

    rows = {row[0]: row for row in table(res)}
    ratio_row = rows["Per-step overhead ratio, Tether / bare"]
    assert ratio_row[1] == f"{o['ratio']:.2f}x" and ratio_row[2] == f"<= {TARGET_RATIO}x"
    long_row = rows["Long run (6 steps, 4 KB tool outputs), time, step 6 / step 1"]
    assert long_row[2] == f"<= {TARGET_LONG_RATIO}x"
    memory_row = rows["Redis memory per idle run, excl. event log, bytes"]
    assert memory_row[2] == f"<= {TARGET_IDLE_BYTES:,}"
    assert memory_row[3] == ("met" if s["bytes_per_idle_run"] <= TARGET_IDLE_BYTES else "NOT met")
