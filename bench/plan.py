"""What a benchmark run does, what it is judged against, and what it records.

Every measurement module takes the same Plan (sizes, levels, windows; QUICK
shrinks it to under two minutes) and fills its part of one Results, which is
what bench/results/*.json holds. The targets live here too, beside the plan,
so that the measurements that stamp them into the results and the report that
judges against them read one number, not two copies that can drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TARGET_RATIO = 1.3
# Runs in flight as a share of the floor's ceiling (bench.inflight.share): an absolute
# count would judge the box's cores, the share judges what Tether adds to the design.
TARGET_INFLIGHT_SHARE = 0.75
TARGET_P99_S = 0.100
TARGET_IDLE_BYTES = 20 * 1024
TARGET_CPU_RATIO = 1.3
TARGET_LONG_RATIO = 1.2
# Tether against the floor (bench.floor): time, CPU and Redis commands per step.
TARGET_FLOOR_RATIO = 1.15
# Tether against LangGraph on PostgreSQL (bench.peer): per-step time at 20 steps, and
# step 60's time with 4 KB tool outputs, where LangGraph rewrites its whole history.
TARGET_PEER_RATIO = 1.5
TARGET_PEER_LONG_RATIO = 1.0


@dataclass
class Plan:
    quick: bool
    steps: int = 20  # tool steps per run in the overhead and throughput tests
    warmup: int = 3
    seq_runs: int = 30  # runs (and bare chains) measured one at a time
    tp_runs: int = 96  # runs started at once in the throughput test
    concurrencies: tuple[int, ...] = (1, 2, 4)
    pools: tuple[str, ...] = ("threads", "gevent", "gevent+quiet")
    # Steps of 25 where 2 cores run out, then wider, for boxes with more cores.
    levels: tuple[int, ...] = (
        *range(25, 201, 25),
        250,
        300,
        400,
        600,
        800,
        1000,
        1500,
        2000,
        3000,
    )
    planner_processes: int = 2
    executor_processes: int = 4
    inflight_steps: int = 2  # tool steps per run with the 1 s model: 3 model calls
    window_s: float = 8.0
    settle_s: float = 4.0
    model_latency_s: float = 1.0
    idle_runs: int = 2000
    long_steps: int = 60  # tool steps of the long run, each tool output 4 KB
    long_runs: int = 3
    long_window: int = 5  # steps at each end of the long run whose median is compared
    peer_rounds: int = 3  # rounds of bench.peer, each runs of every side, alternating
    peer_runs: int = 10  # 20-step runs of each side per round
    sections: tuple[str, ...] = (
        "overhead",
        "longrun",
        "peer",
        "throughput",
        "state",
        "inflight",
        "capacity",
        "recovery",
        "cluster",
        "handlers",
        "console",
        "ratelimit",
    )
    console_runs: int = 10_000  # runs stored before the console's pages are timed
    console_waiting: int = 50  # of them waiting for a human, each in the inbox
    console_requests: int = 40  # timed requests per page
    console_warmup: int = 3


QUICK = dict(
    seq_runs=10,
    tp_runs=48,
    pools=("gevent",),
    # Steps of 25 where 2 cores run out, or N / M moves in steps of a quarter; past 200
    # only if 200 holds (a level that fails ends the ramp, so they cost nothing until
    # Tether gets there, and then they keep the quick N from being capped).
    levels=(50, 75, 100, 125, 150, 175, 200, 250, 300, 400),
    window_s=4.0,
    settle_s=3.0,
    idle_runs=500,
    long_runs=1,
    peer_rounds=2,
    peer_runs=4,
)


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    long_run: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    inflight: dict[str, Any] = field(default_factory=dict)
    # N, M and S of the in-flight line, with their inputs (bench.inflight.share).
    inflight_share: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    # Per-step time with run state on a three-node Redis Cluster and on one Redis.
    cluster: dict[str, Any] = field(default_factory=dict)
    # Tether's own handlers per step, in one process with Celery left out (bench.handlers).
    handlers: dict[str, Any] = field(default_factory=dict)
    # The console's pages with many runs stored (bench.console).
    console: dict[str, Any] = field(default_factory=dict)
    # LangGraph with PostgresSaver beside Tether (bench.peer), or why it was skipped.
    peer: dict[str, Any] = field(default_factory=dict)
    # Runs against a provider's requests per second, Tether limited and not (bench.ratelimit).
    ratelimit: dict[str, Any] = field(default_factory=dict)
    # Processes and Redis servers N runs in flight need at model latency L, from this
    # run's figures, and the model checked against this box (bench.capacity).
    capacity: dict[str, Any] = field(default_factory=dict)
