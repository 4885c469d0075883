"""The benchmark harness on a tiny plan, so `make bench` cannot rot unnoticed.

Timings are not asserted (bench/ prints ratios from one run; a test on a
noisy machine must not judge them); what is checked is that each figure is
measured from real runs on real workers and reaches the report.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from bench import capacity, floor
from bench import driver as bench_driver
from bench.console import console_line, measure_console
from bench.driver import Driver
from bench.handlers import handlers_line, measure_handlers
from bench.inflight import record_share, run_inflight
from bench.longrun import measure_long_run
from bench.overhead import measure_overhead, start_stack, tether_floor_line
from bench.plan import (
    TARGET_FLOOR_RATIO,
    TARGET_IDLE_BYTES,
    TARGET_INFLIGHT_SHARE,
    TARGET_LONG_RATIO,
    TARGET_RATIO,
    Plan,
    Results,
)
from bench.procs import Workers
from bench.report import table
from bench.state import measure_state
from bench.throughput import measure_throughput
from tether.dev.redis_server import RedisServer


def test_bench_measures_overhead_and_state_on_real_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One level of a few runs with a 0.25 s model on one process per service: the
    # in-flight line's arithmetic and plumbing, in seconds rather than the bench's minutes.
    # The planner runs threads, not gevent: its gevent pool takes 3-5 s to stop.
    plan = Plan(
        quick=True,
        steps=3,
        warmup=1,
        seq_runs=3,
        tp_runs=4,
        idle_runs=30,
        long_steps=6,
        long_runs=1,
        long_window=2,
        levels=(6,),
        window_s=1.0,
        settle_s=0.5,
        model_latency_s=0.25,
        planner_processes=1,
        executor_processes=1,
    )
    res = Results()
    with RedisServer() as server:
        driver = Driver(server.url)
        workers = start_stack(server.url, 1, tmp_path / "logs")
        try:
            measure_overhead(plan, driver, workers, res)
            measure_long_run(plan, driver, res)
            measure_state(plan, driver, res)
            measure_throughput(plan, driver, workers, 1, res, commands=True)
            # A run or chain is timed to its worker's own stamp, not to when the
            # harness, looking only every second (DUE_POLL_S at least), notices that it ended.
            monkeypatch.setattr(bench_driver, "DUE", 0.0)
            monkeypatch.setattr(bench_driver, "DUE_POLL_S", 1.0)
            for timed in (lambda: driver.tether_run(3), lambda: driver.bare_chain(7)):
                called = time.perf_counter()
                took = timed()
                noticed = time.perf_counter() - called
                assert noticed >= 1.0 and 0 < took < 0.9
        finally:
            workers.stop()
        res.inflight["threads"] = run_inflight(plan, server.url, "threads", tmp_path / "logs")
        record_share(plan, res)

    o = res.overhead
    assert (o["steps_per_run"], o["bare_hops_per_run"], o["runs"]) == (3, 7, 3)
    tether, bare = o["tether_ms_per_step"]["median"], o["bare_ms_per_step"]["median"]
    assert tether > 0 and bare > 0
    assert o["ratio"] == round(tether / bare, 3)
    cpu = o["tether_cpu_ms_per_step"], o["bare_cpu_ms_per_step"]
    assert cpu[0] > 0 and cpu[1] > 0 and o["cpu_ratio"] == round(cpu[0] / cpu[1], 3)
    floor = o["floor_ms_per_step"]["median"], o["floor_cpu_ms_per_step"]
    assert o["floor_ratio"] == round(floor[0] / bare, 3)
    assert floor[1] > 0 and o["floor_cpu_ratio"] == round(floor[1] / cpu[1], 3)
    # The floor's scripts and writes come on top of what a bare hop sends.
    commands = o["commands_per_step"]
    assert commands["tether"] > commands["floor"] > commands["bare"] > 0
    # Tether against the floor, as the line prints it (the form).
    r = o["tether_floor"]
    assert r == {
        "time": round(tether / floor[0], 3),
        "cpu": round(cpu[0] / floor[1], 3),
        "commands": round(commands["tether"] / commands["floor"], 3),
    }
    assert tether_floor_line(o) == (
        f"floor: {floor[0]} ms/step; tether/floor {r['time']:.2f} (time), "
        f"{r['cpu']:.2f} (cpu), {r['commands']:.2f} (commands)"
    )

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
    floor_row = next(row for name, row in rows.items() if name.strip().startswith("floor:"))
    assert floor_row[1].startswith(f"{floor[0]:.2f} = {o['floor_ratio']:.2f}x, CPU")
    against_floor = rows["Tether / floor, per step: time; CPU; Redis commands"]
    assert against_floor[1].startswith(f"{r['time']:.2f}x; CPU {r['cpu']:.2f}x; ")
    assert against_floor[2] == f"<= {TARGET_FLOOR_RATIO}x each"
    assert against_floor[3] == ("met" if max(r.values()) <= TARGET_FLOOR_RATIO else "NOT met")
    long_row = rows["Long run (6 steps, 4 KB tool outputs), time, step 6 / step 1"]
    assert long_row[2] == f"<= {TARGET_LONG_RATIO}x"
    memory_row = rows["Redis memory per idle run, excl. event log, bytes"]
    assert memory_row[2] == f"<= {TARGET_IDLE_BYTES:,}"
    assert memory_row[3] == ("met" if s["bytes_per_idle_run"] <= TARGET_IDLE_BYTES else "NOT met")

    line = re.search(
        r"in-flight: tether (\d+) runs, floor ceiling (\d+) runs, share (\d+\.\d\d)$",
        capsys.readouterr().err,
        re.MULTILINE,
    )
    assert line is not None
    n, m, share = int(line[1]), int(line[2]), float(line[3])
    sh = res.inflight_share
    assert (sh["tether_runs"], sh["floor_ceiling_runs"], sh["share"]) == (n, m, share)
    assert n == res.inflight["threads"]["max_sustained"] and n in (0, 6)
    assert sh["config"] == "threads" and m > 0 and share == round(n / m, 2)
    # 3 model calls and 5 messages per run at 0.25 s: 0.15 s of the floor's hop rate,
    # which is (2 x 3 + 1) / 3 hops per step of the throughput's floor chains.
    assert (sh["model_calls_per_run"], sh["messages_per_run"]) == (3, 5)
    (row,) = res.throughput
    hops = row["floor_steps_per_s"] * 7 / 3
    assert sh["floor_hops_per_s"] == round(hops, 1) and m == round(hops * 0.25 * 3 / 5)
    # Bare Celery's ceiling stays beside it, from its own rate.
    bare_hops = row["bare_steps_per_s"] * 7 / 3
    assert sh["bare_ceiling_runs"] == round(bare_hops * 0.25 * 3 / 5)
    rendered = table(res)
    share_row = next(r for r in rendered if r[0].startswith("Runs in flight, share"))
    assert share_row[0].startswith("Runs in flight, share of the floor's ceiling")
    assert share_row[1].startswith(f"{n:,} / {m:,} = {share:.2f}")
    assert share_row[2:4] == (f">= {TARGET_INFLIGHT_SHARE}", "met" if share >= 0.75 else "NOT met")
    assert any(r[0].strip().startswith("floor (bench.floor) ceiling") for r in rendered)

    # The capacity model reads this run's rows: one process per service, commands counted.
    inputs = capacity.inputs_from(res)
    assert inputs is not None and inputs.planner_cpu_ms_per_step > 0
    assert inputs.executor_cpu_ms_per_step > 0 and inputs.broker_commands_per_core_s > 0
    # Without measure_split's two servers, the broker's share is bare Celery's.
    assert inputs.split == "bare"
    assert inputs.broker_commands_per_core_s == inputs.state_commands_per_core_s
    assert inputs.broker_commands_per_step == row["bare_redis_commands_per_step"]
    assert inputs.commands_per_step == pytest.approx(row["redis_commands_per_step"])
    assert inputs.bytes_per_step is not None and inputs.bytes_per_step > 0
    (check,) = capacity.model(res)["checks"]
    assert check["measured_steps_per_s"] == row["tether_steps_per_s"] and check["ratio"] > 0


def test_a_floor_chain_does_the_least_redis_work_of_each_step(tmp_path: Path) -> None:
    with RedisServer() as server:
        driver = Driver(server.url)
        workers = Workers(server.url, log_dir=tmp_path / "logs")
        for queue in floor.QUEUES:
            workers.bare(queue, app="bench.floor")
        try:
            workers.wait_ready()
            assert 0 < driver.floor_chain(7) < 30
        finally:
            workers.stop()
        client = driver.redis
        (run,) = client.keys("bench:floor:{*}")
        chain = run.removeprefix("bench:floor:{").removesuffix("}")
        # 3 steps: 4 planning hops, each committing what came back, the first 3 their
        # decisions too; 3 tool hops, each storing its result (an idempotent tool: no lease).
        assert client.hget(run, "version") == "7" and client.llen(f"{run}:messages") == 7
        assert client.hget(f"{run}:budget", "steps") == "7"
        # Log entries: an observation per planning hop, a model call and a decision per
        # decision, a tool call per tool hop; each with its lifecycle line.
        kinds = [json.loads(e["event"])["kind"] for _, e in client.xrange(f"{run}:log")]
        assert sorted(kinds) == sorted(
            ["observation"] * 4 + ["model_call", "decision"] * 3 + ["tool_call"] * 3
        )
        assert client.xlen(floor.LIFECYCLE) == 13
        for step in (2, 4, 6):
            action = f"bench:floor:action:{{{chain}}}:{step}"
            assert client.exists(action) == 1 and client.exists(f"{action}:lock") == 0
            assert json.loads(client.get(action))["ok"] is True
        # The queues are Tether's kind: each message landed and was acknowledged.
        assert client.llen(floor.QUEUES[0]) == client.llen(floor.QUEUES[1]) == 0
        assert client.hlen("unacked") == 0


def test_bench_measures_what_the_handlers_cost_in_one_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = Plan(quick=True, steps=3, warmup=1, seq_runs=2)
    res = Results()
    measure_handlers(plan, res)

    h = res.handlers
    assert (h["steps_per_run"], h["runs"]) == (3, 2)
    assert h["executor_ms_per_step"] > 0 and h["planner_ms_per_step"] > 0
    assert h["redis_cpu_ms_per_step"] >= 0
    # Every step commits through the run's compare-and-set script, at least twice.
    assert h["redis_commands_per_step"] > 2 and "evalsha" in h["redis_usec_per_step"]
    # Its messages went through Celery onto the queues (and their task-sent events).
    assert {"lpush", "publish"} <= set(h["redis_usec_per_step"])
    assert handlers_line(h) in capsys.readouterr().err


def test_bench_times_the_console_pages_with_runs_stored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = Plan(
        quick=True, console_runs=120, console_waiting=4, console_requests=5, console_warmup=1
    )
    res = Results()
    measure_console(plan, res)

    c = res.console
    assert (c["runs"], c["waiting_for_a_human"]) == (120, 4)
    assert set(c["p95_ms"]) == {"runs page", "inbox", "stats page"}
    assert all(ms > 0 for ms in c["p95_ms"].values())
    line = console_line(c)
    assert re.fullmatch(
        r"console: runs page p95 \d+ ms, inbox p95 \d+ ms, stats page p95 \d+ ms "
        r"with 120 runs stored",
        line,
    )
    assert line in capsys.readouterr().out


def test_bench_splits_a_steps_commands_between_the_broker_and_the_state_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = Plan(quick=True, steps=3, tp_runs=4)
    res = Results()
    capacity.measure_split(plan, res, tmp_path / "logs")

    split = res.capacity["split"]
    # Batches of 4 runs of 3 steps, repeated until each Redis has used MIN_REDIS_CPU_S.
    assert split["runs"] % 4 == 0 and split["steps"] == 3 * split["runs"]
    assert split["steps_per_s"] > 0
    broker, state = split["broker"], split["state"]
    # The messages move on the broker (Celery's landing move and pushes), the run's
    # commits and event log on the state store, and neither does the other's work.
    assert {"lpush", "blmove"} <= set(broker["commands_by_name"])
    assert not {"lpush", "blmove"} & set(state["commands_by_name"])
    assert "xadd" in state["commands_by_name"] and "xadd" not in broker["commands_by_name"]
    for role in (broker, state):
        assert role["commands_per_step"] == pytest.approx(
            sum(role["commands_by_name"].values()), abs=0.2
        )
        assert role["bytes_per_step"] > 0 and role["commands_per_core_s"] > 0
    # Every step logs at least its decision and its tool call, each with a lifecycle line.
    assert state["lifecycle_entries_per_step"] >= 2
    assert "capacity split: broker " in capsys.readouterr().err

    # The model reads the split in place of bare Celery's share.
    res.throughput = [
        {
            "processes_per_service": 1,
            "tether_steps_per_s": 100.0,
            "cpu_cores_used": {"planner": 0.5, "executor": 0.4, "redis": 0.2, "driver": 0.0},
        }
    ]
    inputs = capacity.inputs_from(res)
    assert inputs is not None and inputs.split == "measured"
    assert inputs.broker_commands_per_step == broker["commands_per_step"]
    assert inputs.state_commands_per_step == state["commands_per_step"]
    assert inputs.lifecycle_entries_per_step == state["lifecycle_entries_per_step"]
