"""The bench's capacity model and in-flight ceiling, as arithmetic on fixed figures.

Numbers are picked so that every figure comes out by hand: a swapped broker/state
split, a lost latency term or headroom, or the bare hop rate where the floor's
belongs each changes an asserted value.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.capacity import (
    HEADROOM,
    Inputs,
    broker_limit_runs,
    capacity_lines,
    inputs_from,
    model,
    predicted_steps_per_s,
    size,
    state_store_limit_runs,
)
from bench.inflight import share, share_line
from bench.plan import Plan, Results

INPUTS = Inputs(
    planner_cpu_ms_per_step=4.0,
    executor_cpu_ms_per_step=3.0,
    driver_cpu_ms_per_step=0.5,
    broker_commands_per_step=20.0,
    state_commands_per_step=40.0,
    broker_commands_per_core_s=40_000,
    state_commands_per_core_s=50_000,
    bytes_per_step=5_000,
    lifecycle_entries_per_step=4.0,
)
# What measure_split stores: the broker and the state store on two Redis servers.
SPLIT = {
    "broker": {"commands_per_step": 20.0, "bytes_per_step": 1_000, "commands_per_core_s": 40_000},
    "state": {
        "commands_per_step": 40.0,
        "bytes_per_step": 4_000,
        "commands_per_core_s": 50_000,
        "lifecycle_entries_per_step": 4.0,
    },
}


def throughput_rows() -> list[dict[str, Any]]:
    """One process per service at 200 steps/s, two at 250 with Redis commands counted:
    60 a step (bare's 20) at 0.3 Redis cores, so one core serves 60 x 250 / 0.3 = 50,000."""
    return [
        {
            "processes_per_service": 1,
            "runs": 10,
            "steps": 200,
            "tether_steps_per_s": 200.0,
            "bare_steps_per_s": 400.0,
            "floor_steps_per_s": 300.0,
            "cpu_cores_used": {"planner": 0.8, "executor": 0.6, "redis": 0.2, "driver": 0.02},
        },
        {
            "processes_per_service": 2,
            "runs": 10,
            "steps": 200,
            "tether_steps_per_s": 250.0,
            "bare_steps_per_s": 420.0,
            "floor_steps_per_s": 320.0,
            "cpu_cores_used": {"planner": 1.0, "executor": 0.7, "redis": 0.3, "driver": 0.02},
            "redis_commands_per_step": 60.0,
            "bare_redis_commands_per_step": 20.0,
            "redis_bytes_in_per_step": 3_000,
            "redis_bytes_out_per_step": 2_000,
        },
    ]


def test_the_inputs_come_from_the_one_process_row_and_the_measured_split() -> None:
    inputs = inputs_from(Results(throughput=throughput_rows(), capacity={"split": SPLIT}))
    assert inputs == Inputs(
        planner_cpu_ms_per_step=4.0,  # 0.8 cores / 200 steps/s
        executor_cpu_ms_per_step=3.0,
        driver_cpu_ms_per_step=0.1,
        broker_commands_per_step=20.0,
        state_commands_per_step=40.0,
        broker_commands_per_core_s=40_000,
        state_commands_per_core_s=50_000,
        bytes_per_step=5_000,
        lifecycle_entries_per_step=4.0,
        split="measured",
    )
    # 20 / 40,000 + 40 / 50,000 of a Redis core-second.
    assert inputs.redis_cpu_ms_per_step == pytest.approx(1.3)


def test_without_the_split_the_broker_is_taken_as_bare_celery() -> None:
    inputs = inputs_from(Results(throughput=throughput_rows()))
    assert inputs is not None and inputs.split == "bare"
    # Bare Celery's 20 of Tether's 60; one rate for both: 60 x 250 / 0.3 Redis cores.
    assert (inputs.broker_commands_per_step, inputs.state_commands_per_step) == (20.0, 40.0)
    assert inputs.broker_commands_per_core_s == inputs.state_commands_per_core_s == 50_000
    assert inputs.bytes_per_step == 5_000 and inputs.lifecycle_entries_per_step is None
    assert state_store_limit_runs(inputs) is None and "state_stores" not in size(inputs, 10_000)


def test_no_inputs_without_commands_counted_or_split() -> None:
    rows = throughput_rows()
    del rows[1]["redis_commands_per_step"]
    assert inputs_from(Results(throughput=rows)) is None
    assert model(Results(throughput=rows)) == {}
    assert inputs_from(Results(throughput=rows, capacity={"split": SPLIT})) is not None
    assert capacity_lines({}) == [
        "capacity: no model without the throughput section's rows at 1 and 2"
    ]


def test_a_thousand_runs_at_one_second() -> None:
    sized = size(INPUTS, 1_000, latency_s=1.0, headroom=0.7)
    assert sized == {
        "runs_in_flight": 1_000,
        "model_latency_s": 1.0,
        "steps_per_s": 1_000.0,
        "planner_processes": 6,  # 1,000 x 4 ms = 4 cores, at 70%: 5.7
        "model_calls_per_planner": 167,
        "executor_processes": 5,  # 3 cores at 70%: 4.3
        "broker_commands_per_s": 20_000,
        "one_broker_load": 0.5,  # of 40,000
        "broker_redis": 1,
        "cells": 1,
        "runs_per_cell": 1_000,
        "state_commands_per_s": 40_000,
        "state_shards": 2,  # 40,000 over 35,000 a shard
        "state_stores": 1,  # 4,000 lifecycle entries a second on its one shard
        "redis_mb_per_s": 5.0,
    }


def test_ten_thousand_runs_need_cells_past_the_one_broker() -> None:
    sized = size(INPUTS, 10_000, latency_s=1.0, headroom=0.7)
    # 200,000 broker commands/s over 28,000 each; 400,000 state commands over 35,000.
    assert (sized["broker_redis"], sized["cells"], sized["runs_per_cell"]) == (8, 8, 1_250)
    assert sized["state_shards"] == 12 and sized["one_broker_load"] == 5.0
    # 40,000 lifecycle entries a second, one key: more than one shard's 35,000.
    assert sized["state_stores"] == 2


def test_a_slower_model_halves_what_the_same_runs_ask() -> None:
    sized = size(INPUTS, 10_000, latency_s=2.0, headroom=0.7)
    assert sized["steps_per_s"] == 5_000.0
    assert (sized["planner_processes"], sized["executor_processes"]) == (29, 22)
    assert (sized["broker_redis"], sized["state_shards"]) == (4, 6)


def test_headroom_sizes_below_full_use() -> None:
    full = size(INPUTS, 10_000, latency_s=1.0, headroom=1.0)
    assert (full["planner_processes"], full["broker_redis"], full["state_shards"]) == (40, 5, 8)


def test_the_broker_limit_scales_with_latency() -> None:
    # 40,000 x 70% = 28,000 broker commands/s, 20 a step: 1,400 steps/s, one per run per
    # latency.
    assert broker_limit_runs(INPUTS, latency_s=1.0, headroom=0.7) == 1_400
    assert broker_limit_runs(INPUTS, latency_s=2.0, headroom=0.7) == 2_800


def test_the_state_stores_limit_is_its_one_lifecycle_stream() -> None:
    # 50,000 x 70% = 35,000 commands/s on the stream's shard, 4 entries a step.
    assert state_store_limit_runs(INPUTS, latency_s=1.0, headroom=0.7) == 8_750
    assert state_store_limit_runs(INPUTS, latency_s=2.0, headroom=0.7) == 17_500


def test_the_prediction_on_one_box_names_what_binds() -> None:
    assert predicted_steps_per_s(INPUTS, 1, cores=2) == {
        "planner": 250.0,
        "executor": 333.3,
        "redis": 769.2,  # 1,000 / 1.3 ms: broker and state on the one Redis
        "cores": 227.3,  # 2,000 ms / (4 + 3 + 1.3 + 0.5)
    }
    assert predicted_steps_per_s(INPUTS, 2, cores=16)["planner"] == 500.0


def test_the_model_is_checked_against_the_measured_rows() -> None:
    figures = model(Results(throughput=throughput_rows(), capacity={"split": SPLIT}), cores=2)
    assert figures["split"] == SPLIT
    assert figures["headroom"] == HEADROOM and figures["broker_limit_runs"] == 1_400
    assert figures["state_store_limit_runs"] == 8_750
    assert [s["runs_in_flight"] for s in figures["sizes"]] == [1_000, 10_000, 100_000]
    # 2,000 ms / (4 + 3 + 1.3 + 0.1) per step: 238 steps/s on two cores, at 1 and at 2.
    one, two = figures["checks"]
    assert (one["predicted_steps_per_s"], one["bound_by"], one["ratio"]) == (238.1, "cores", 0.84)
    assert (two["measured_steps_per_s"], two["ratio"]) == (250.0, 1.05)
    lines = capacity_lines(figures)
    assert lines[0] == (
        "capacity: per step planner 4.00 ms cpu, executor 3.00 ms cpu, redis 60.0 commands "
        "(broker 20.0, state 40.0), 5,000 B; one redis core 40,000 broker, 50,000 state "
        "commands/s; headroom 70%"
    )
    assert (
        "capacity: 10,000 runs in flight at 1 s: 10,000 steps/s, 58 planner and 43 executor "
        "processes, 8 broker redis (5.00 of one) = 8 cells of 1,250 runs, 12 state shards "
        "in 2 state stores, 50 MB/s through Redis"
    ) in lines
    assert any(
        line.startswith("capacity: one broker redis reaches 70% at 1,400 ") for line in lines
    )
    assert (
        "capacity: one state store's lifecycle stream (one key, one shard) reaches 70% at "
        "8,750 runs in flight at 1 s; past it, cells get state stores of their own too"
    ) in lines
    assert lines[-1] == (
        "capacity: checked on this box (2 cores): 1 per service predicted 238 steps/s (cores), "
        "measured 200, ratio 0.84; 2 per service predicted 238 steps/s (cores), measured 250, "
        "ratio 1.05"
    )


def test_the_in_flight_ceiling_is_the_floors_with_bare_beside_it() -> None:
    plan = Plan(quick=True, inflight_steps=2, model_latency_s=1.0)
    held = {"runs_in_flight": 150, "ok": True, "delay_p99_ms": 40.0}
    res = Results(
        throughput=throughput_rows(),
        inflight={"gevent": {"max_sustained": 150, "levels": [held]}},
    )
    figures = share(plan, res)
    # The best floor row: 320 steps/s of 20-step chains, 41 hops each: 656 hops/s;
    # 3 model calls and 5 messages a run at 1 s: 656 x 3 / 5 = 393.6 runs.
    assert (figures["floor_hops_per_s"], figures["floor_ceiling_runs"]) == (656.0, 394)
    assert figures["floor_processes_per_service"] == 2
    assert figures["share"] == figures["floor_share"] == round(150 / 394, 2)
    # Bare Celery's, for context: 420 x 41 / 20 = 861 hops/s, x 0.6 = 516.6 runs.
    assert (figures["bare_ceiling_runs"], figures["bare_share"]) == (517, round(150 / 517, 2))
    assert share_line(figures) == "in-flight: tether 150 runs, floor ceiling 394 runs, share 0.38"


def test_the_model_is_checked_against_the_runs_in_flight_held() -> None:
    plan = Plan(quick=True, inflight_steps=2, model_latency_s=1.0)
    # Held 100 runs at 95 model calls/s with the planners on 1.14 cores, the executors on
    # 0.38: 12 ms and 4 ms a call.
    held = {
        "runs_in_flight": 100,
        "ok": True,
        "delay_p99_ms": 40.0,
        "model_calls_per_s": 95.0,
        "cpu_cores_used": {"planner": 1.14, "executor": 0.38, "redis": 0.1},
    }
    res = Results(
        throughput=throughput_rows(),
        inflight={"gevent": {"max_sustained": 100, "levels": [held]}},
        capacity={"split": SPLIT},
    )
    res.inflight_share = share(plan, res)
    check = model(res, cores=2)["inflight_check"]
    # 2 planners and 4 executors on 2 cores: 238.1 steps/s (cores), one run a step a second.
    assert check["layout"] == {"planner_processes": 2, "executor_processes": 4}
    assert (check["predicted_runs"], check["bound_by"], check["held_runs"]) == (238, "cores", 100)
    assert check["ratio"] == 0.42
    assert (check["planner_cpu_ms_per_model_call"], check["executor_cpu_ms_per_model_call"]) == (
        12.0,
        4.0,
    )
    assert capacity_lines(model(res, cores=2))[-1] == (
        "capacity: in flight on this box at 1 s: predicted 238 runs (cores), held 100, ratio "
        "0.42; a model call there cost the planner 12.00 ms and the executor 4.00 ms of cpu"
    )
    # At a 2 s model the same steps per second hold twice the runs.
    slow = Plan(quick=True, inflight_steps=2, model_latency_s=2.0)
    res.inflight_share = share(slow, res)
    assert model(res, cores=2)["inflight_check"]["predicted_runs"] == 476
