"""The peer: LangGraph with a PostgreSQL checkpointer, measured beside Tether in one run.

What a team picks instead of Tether for durable agents runs the agent loop in
one process and checkpoints each node to PostgreSQL (bench.peer_graph). The
same loop runs on both: an instant scripted model that calls a tool ``steps``
times (20 tool calls, 21 model calls), each tool output 200 bytes; on Tether
that is ``bench_peer`` (bench.agents) on the running stack, on LangGraph a new
thread per run on PostgresSaver, with ``durability="sync"`` (each checkpoint
written before the next node runs, as a Tether step commits before its message
leaves) and with LangGraph's default (``"async"``: written while the next node
runs).

Rounds alternate the sides run by run, so that a shared machine's noise falls
on all alike, and each round's medians are kept, so the spread shows:

- per step, time: a run's wall time over its steps (Tether: to its worker's
  ``finished_at`` stamp, as bench.overhead times it);
- per step, CPU: every process of each side, summed over the runs: Tether's
  planner and executor processes and Redis (bench.overhead's accounting), the
  peer's own process (the graph runs in it) and PostgreSQL's server processes;
- growth: 60-step runs whose tool returns 4 KB; a step's time is the gap between
  two model calls (Tether: two decisions, bench.longrun), each end the median
  of ``long_window`` steps; and, in a thread of its own, the bytes the saver
  sends PostgreSQL in each step (statements and parameters; bench.longrun
  counts what clients send Redis the same way).

The PostgreSQL server is bench.postgres's; without it, or without LangGraph
installed (``pip install '.[bench]'``; ``make bench`` does), the section records
why and prints ``peer: skipped (...)``, and the rest of the bench goes on.
"""

from __future__ import annotations

import importlib
import itertools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from bench.driver import Driver, log, redis_pid, stats_ms
from bench.longrun import AGENT as TETHER_LONG_AGENT
from bench.longrun import _step_times as tether_step_times
from bench.plan import TARGET_PEER_LONG_RATIO, TARGET_PEER_RATIO, Plan, Results
from bench.procs import CpuMeter, Workers

if TYPE_CHECKING:
    from bench.peer_graph import Durability, Graph
    from bench.postgres import Postgres

TETHER_AGENT = "bench_peer"
TOOL_OUTPUT_BYTES = 200
LONG_OUTPUT_BYTES = 4096
DURABILITIES: tuple[Durability, ...] = ("sync", "async")  # "async" is LangGraph's default
# What the bench extra (pyproject.toml) brings that the peer imports.
EXTRA_MODULES = ("psycopg", "langgraph.checkpoint.postgres", "langgraph.prebuilt")


def measure_peer(plan: Plan, driver: Driver, workers: Workers, res: Results) -> None:
    """Fill ``res.peer``, or record why the peer could not be measured; never raise for that."""
    missing = missing_extra()
    if missing:
        res.peer = {
            "skipped": f"no LangGraph: {missing} is not installed; make bench-deps "
            "(pip install -e '.[bench]') installs the bench extra"
        }
    else:
        from bench.postgres import PostgresUnavailable, postgres

        try:
            with postgres() as server:
                _measure(plan, driver, workers, server, res)
        except PostgresUnavailable as exc:
            res.peer = {"skipped": f"no PostgreSQL: {exc}"}
    for line in peer_lines(res.peer):
        log(line)


def missing_extra() -> str:
    """The first module of the bench extra that cannot be imported, or "" if none."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return ""


class _PeerCpu:
    """CPU seconds of this process and of PostgreSQL's server processes, read cheaply.

    The server's processes are looked up once (the saver's connections are open
    by then), since listing a process's children scans every process on the
    machine; this process is read last at the start and first at the end, so the
    reads of the server's figures are not charged to it.
    """

    def __init__(self, server_pids: list[int]) -> None:
        self.server = [psutil.Process(pid) for pid in server_pids]

    def _server(self) -> float:
        total = 0.0
        for proc in self.server:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def around(self, run: Callable[[], float]) -> tuple[float, float, float]:
        """(what ``run`` returned, CPU seconds this process used meanwhile, and the server)."""
        server, own = self._server(), time.process_time()
        took = run()
        own = time.process_time() - own
        return took, own, self._server() - server


def _measure(plan: Plan, driver: Driver, workers: Workers, server: Postgres, res: Results) -> None:
    from bench.peer_graph import Graph

    steps, long_steps, window = plan.steps, plan.long_steps, plan.long_window
    log(f"peer: LangGraph + PostgresSaver ({server.kind} PostgreSQL), {plan.peer_rounds} rounds")
    graphs = {"short": Graph(server.url, "text200"), "long": Graph(server.url, "blob")}
    try:
        tether_pids = [*workers.pids("planner"), *workers.pids("executor"), redis_pid(driver.redis)]
        peer_cpu = _PeerCpu(server.server_pids())
        sides: dict[str, Callable[[], float]] = {
            "tether": lambda: driver.tether_batch(1, steps, agent=TETHER_AGENT),
            **{d: _runner(graphs["short"], steps, d) for d in DURABILITIES},
        }
        for run in sides.values():
            for _ in range(plan.warmup):
                run()
        times: dict[str, list[list[float]]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        server_cpu: dict[str, float] = dict.fromkeys(DURABILITIES, 0.0)  # PostgreSQL's share
        first: dict[str, list[float]] = {side: [] for side in sides}
        last: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(plan.peer_rounds):
            for side in sides:
                times[side].append([])
                cpu[side].append(0.0)
            for _ in range(plan.peer_runs):  # alternating, so noise hits all alike
                for side, run in sides.items():
                    if side == "tether":
                        meter = CpuMeter({side: tether_pids}).start()
                        took = run()
                        used = meter.seconds()[side]
                    else:
                        took, used, by_server = peer_cpu.around(run)
                        used += by_server
                        server_cpu[side] += by_server
                    times[side][-1].append(took / steps)
                    cpu[side][-1] += used
            for side in sides:
                gaps = _long_gaps(side, driver, graphs["long"], long_steps)
                first[side] += gaps[:window]
                last[side] += gaps[-window:]
        sent = _long_bytes(server.url, long_steps)
    finally:
        for graph in graphs.values():
            graph.close()
    res.peer = _figures(plan, server, times, cpu, first, last, sent, res)
    measured = plan.peer_rounds * plan.peer_runs * steps
    res.peer["postgres_cpu_ms_per_step"] = {
        side: round(1000 * used / measured, 3) for side, used in server_cpu.items()
    }
    res.peer["postgres"].update(_server_facts(server.url))


def _runner(graph: Graph, steps: int, durability: Durability) -> Callable[[], float]:
    return lambda: graph.run(steps, durability)


def _long_gaps(side: str, driver: Driver, graph: Graph, steps: int) -> list[float]:
    """Each step's seconds in one ``steps``-step run with 4 KB tool outputs."""
    if side == "tether":
        return tether_step_times(driver, steps)
    graph.run(steps, "sync" if side == "sync" else "async")
    return [b - a for a, b in itertools.pairwise(graph.stamps)]


def _long_bytes(url: str, steps: int) -> list[int]:
    """Bytes the saver sent PostgreSQL in each step of one long thread (durability sync)."""
    from bench.peer_graph import Graph

    graph = Graph(url, "blob", count_bytes=True)
    try:
        graph.run(steps, "sync")
        return [b - a for a, b in itertools.pairwise(graph.sent_at_stamps)]
    finally:
        graph.close()


def _server_facts(url: str) -> dict[str, str]:
    """The server's version and how it commits, as it reports them (a borrowed one too)."""
    import psycopg

    facts = {}
    with psycopg.connect(url) as conn:
        for name in ("server_version", "synchronous_commit", "fsync"):
            row = conn.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else ""
    return facts


def _figures(
    plan: Plan,
    server: Postgres,
    times: dict[str, list[list[float]]],
    cpu: dict[str, list[float]],
    first: dict[str, list[float]],
    last: dict[str, list[float]],
    sent: list[int],
    res: Results,
) -> dict[str, Any]:
    steps, runs = plan.steps, plan.peer_runs
    ms = {
        side: stats_ms([t for round_ in rounds for t in round_]) for side, rounds in times.items()
    }
    cpu_ms = {
        side: round(1000 * sum(used) / (len(used) * runs * steps), 3) for side, used in cpu.items()
    }
    long_first = {side: round(statistics.median(v) * 1000, 3) for side, v in first.items()}
    long_last = {side: round(statistics.median(v) * 1000, 3) for side, v in last.items()}
    window = plan.long_window
    figures: dict[str, Any] = {
        "postgres": {"kind": server.kind},
        "steps_per_run": steps,
        "rounds": plan.peer_rounds,
        "runs_per_round": runs,
        "tool_output_bytes": TOOL_OUTPUT_BYTES,
        "tether_agent": TETHER_AGENT,
        "ms_per_step": ms,
        "ms_per_step_by_round": {
            side: [round(statistics.median(r) * 1000, 3) for r in rounds]
            for side, rounds in times.items()
        },
        # Every process of each side: Tether's workers and Redis; the peer's process and PostgreSQL.
        "cpu_ms_per_step": cpu_ms,
        "cpu_ms_per_step_by_round": {
            side: [round(1000 * u / (runs * steps), 3) for u in used] for side, used in cpu.items()
        },
        "ratio": _ratios(ms, cpu_ms, "sync"),
        "ratio_default": _ratios(ms, cpu_ms, "async"),
        "target_ratio": TARGET_PEER_RATIO,
        "long": {
            "steps": plan.long_steps,
            "window": window,
            "tool_output_bytes": LONG_OUTPUT_BYTES,
            "tether_agent": TETHER_LONG_AGENT,
            "step_1_ms": long_first,
            "step_n_ms": long_last,
            "ratio": round(long_last["tether"] / long_last["sync"], 3),
            "ratio_default": round(long_last["tether"] / long_last["async"], 3),
            "target_ratio": TARGET_PEER_LONG_RATIO,
            "peer_step_1_bytes": round(statistics.median(sent[:window])),
            "peer_step_n_bytes": round(statistics.median(sent[-window:])),
            "peer_bytes_per_step": sent,
        },
    }
    if res.long_run:
        figures["long"]["tether_step_1_bytes"] = res.long_run["step_1_bytes"]
        figures["long"]["tether_step_n_bytes"] = res.long_run["step_n_bytes"]
    return figures


def _ratios(
    ms: dict[str, dict[str, float]], cpu_ms: dict[str, float], peer: str
) -> dict[str, float]:
    return {
        "time": round(ms["tether"]["median"] / ms[peer]["median"], 3),
        "cpu": round(cpu_ms["tether"] / max(1e-9, cpu_ms[peer]), 3),
    }


def peer_lines(peer: dict[str, Any]) -> list[str]:
    """The peer's lines as `make bench` prints them: one, saying why, when it was skipped."""
    if not peer:
        return []
    if "skipped" in peer:
        return [peer_line(peer)]
    return [peer_line(peer), peer_line(peer, "async"), long_line(peer), bytes_line(peer)]


def peer_line(peer: dict[str, Any], durability: str = "sync") -> str:
    if "skipped" in peer:
        return f"peer: skipped ({peer['skipped']})"
    ratio = peer["ratio" if durability == "sync" else "ratio_default"]
    label = "peer" if durability == "sync" else "peer default"
    return (
        f"{label}: langgraph+postgres({durability}) {peer['ms_per_step'][durability]['median']:.2f} "
        f"ms/step, cpu {peer['cpu_ms_per_step'][durability]:.2f} ms/step; "
        f"tether/peer {ratio['time']:.2f} (time), {ratio['cpu']:.2f} (cpu)"
    )


def long_line(peer: dict[str, Any]) -> str:
    lr = peer["long"]
    return (
        f"peer long-run: step {lr['steps']} with 4 KB outputs, langgraph "
        f"{lr['step_n_ms']['sync']:.2f} ms, tether {lr['step_n_ms']['tether']:.2f} ms, "
        f"tether/peer {lr['ratio']:.2f}"
    )


def bytes_line(peer: dict[str, Any]) -> str:
    lr = peer["long"]
    return (
        f"peer long-run bytes: langgraph step 1 {lr['peer_step_1_bytes']} B, "
        f"step {lr['steps']} {lr['peer_step_n_bytes']} B sent to PostgreSQL"
    )


def peer_rows(
    peer: dict[str, Any], before: dict[str, Any] | None = None
) -> list[tuple[str, str, str, str, str]]:
    """The report's rows for the peer (bench.report.table), each beside its target."""
    if not peer:
        return []
    if "skipped" in peer:
        return [("Peer: LangGraph + PostgresSaver", f"skipped ({peer['skipped']})", "", "", "")]
    ms, cpu = peer["ms_per_step"], peer["cpu_ms_per_step"]
    rows = []
    for durability, key in (("sync", "ratio"), ("async", "ratio_default")):
        rows.append(
            (
                f"Peer: LangGraph + PostgresSaver ({durability}), ms per step; CPU ms per step",
                f"{ms[durability]['median']:.2f}; CPU {cpu[durability]:.2f}",
                "",
                "",
                _before(before, ("ms_per_step", durability, "median"), "{:.2f}"),
            )
        )
        ratio = peer[key]
        rows.append(
            (
                f"  Tether / peer ({durability}), time; CPU",
                f"{ratio['time']:.2f}x; CPU {ratio['cpu']:.2f}x",
                f"<= {TARGET_PEER_RATIO}x" if durability == "sync" else "",
                _met(ratio["time"] <= TARGET_PEER_RATIO) if durability == "sync" else "",
                _before(before, (key, "time"), "{:.2f}x"),
            )
        )
    lr = peer["long"]
    rows.append(
        (
            f"Peer long run: step {lr['steps']} with 4 KB outputs, Tether / LangGraph (sync), ms",
            f"{lr['step_n_ms']['tether']:.2f} / {lr['step_n_ms']['sync']:.2f} = {lr['ratio']:.2f}x",
            f"<= {TARGET_PEER_LONG_RATIO}x",
            _met(lr["ratio"] <= TARGET_PEER_LONG_RATIO),
            _before(before, ("long", "ratio"), "{:.2f}x"),
        )
    )
    rows.append(
        (
            f"  LangGraph (sync), step 1 / step {lr['steps']}: ms; bytes sent to PostgreSQL",
            f"{lr['step_1_ms']['sync']:.2f} / {lr['step_n_ms']['sync']:.2f} ms; "
            f"{lr['peer_step_1_bytes']:,} / {lr['peer_step_n_bytes']:,} B",
            "",
            "",
            "",
        )
    )
    return rows


def _before(before: dict[str, Any] | None, path: tuple[str, ...], form: str) -> str:
    """The figure at ``path`` in an earlier run's peer results, formatted; "" if it has none."""
    if not before or "skipped" in before:
        return ""
    value: Any = before
    try:
        for key in path:
            value = value[key]
    except (KeyError, TypeError):
        return ""
    return form.format(value)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"
