"""The report: each figure beside its target, as a table and a plot.

A benchmark is only useful if its numbers are read against what they should
be, so every row carries its target and whether it is met, and, when a
previous results JSON is given, the figure it had before, which is how an
optimisation shows its effect. It reads nothing but a Results, so stored
results can be re-rendered without running anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.inflight import parse_config
from bench.peer import peer_rows
from bench.plan import (
    TARGET_CPU_RATIO,
    TARGET_FLOOR_RATIO,
    TARGET_IDLE_BYTES,
    TARGET_INFLIGHT_SHARE,
    TARGET_LONG_RATIO,
    TARGET_RATIO,
    Results,
)
from bench.throughput import scaling_ceiling


def table(res: Results, before: Results | None = None) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []

    def prev(getter: Callable[[Results], Any]) -> str:
        if before is None:
            return ""
        try:
            value = getter(before)
        except (KeyError, IndexError, TypeError, StopIteration):
            return ""
        return "" if value is None else str(value)

    o = res.overhead
    if o:
        rows.append(
            (
                "Tether, ms per agent step (median, 1 run at a time)",
                f"{o['tether_ms_per_step']['median']:.2f}",
                "",
                "",
                prev(lambda b: f"{b.overhead['tether_ms_per_step']['median']:.2f}"),
            )
        )
        rows.append(
            (
                "Bare Celery, ms per 2 hops (same Redis, same settings)",
                f"{o['bare_ms_per_step']['median']:.2f}",
                "",
                "",
                prev(lambda b: f"{b.overhead['bare_ms_per_step']['median']:.2f}"),
            )
        )
        rows.append(
            (
                "Per-step overhead ratio, Tether / bare",
                f"{o['ratio']:.2f}x",
                f"<= {TARGET_RATIO}x",
                _met(o["ratio"] <= TARGET_RATIO),
                prev(lambda b: f"{b.overhead['ratio']:.2f}x"),
            )
        )
    if o and "cpu_ratio" in o:
        rows.append(
            (
                "CPU per step, Tether / bare (workers and Redis), ms",
                f"{o['tether_cpu_ms_per_step']:.2f} / "
                f"{o['bare_cpu_ms_per_step']:.2f} = {o['cpu_ratio']:.2f}x",
                f"<= {TARGET_CPU_RATIO}x",
                _met(o["cpu_ratio"] <= TARGET_CPU_RATIO),
                prev(lambda b: f"{b.overhead['cpu_ratio']:.2f}x"),
            )
        )
    if o and "floor_ratio" in o:
        rows.append(
            (
                "  floor: bare hops + the least Redis work a step needs (bench.floor), ms",
                f"{o['floor_ms_per_step']['median']:.2f} = {o['floor_ratio']:.2f}x, "
                f"CPU {o['floor_cpu_ms_per_step']:.2f} = {o['floor_cpu_ratio']:.2f}x, "
                f"{o['commands_per_step']['floor']:.1f} commands "
                f"(bare {o['commands_per_step']['bare']:.1f})",
                "",
                "",
                prev(lambda b: f"{b.overhead['floor_ratio']:.2f}x"),
            )
        )
    if o and "tether_floor" in o:
        r = o["tether_floor"]
        rows.append(
            (
                "Tether / floor, per step: time; CPU; Redis commands",
                f"{r['time']:.2f}x; CPU {r['cpu']:.2f}x; {r['commands']:.2f}x "
                f"({o['commands_per_step']['tether']:.1f} commands)",
                f"<= {TARGET_FLOOR_RATIO}x each",
                _met(max(r.values()) <= TARGET_FLOOR_RATIO),
                prev(lambda b: f"{b.overhead['tether_floor']['time']:.2f}x"),
            )
        )
    lr = res.long_run
    if lr:
        for what, ratio, first, last, unit in (
            ("time", "ratio", "step_1_ms", "step_n_ms", "ms"),
            ("bytes sent to Redis", "bytes_ratio", "step_1_bytes", "step_n_bytes", "B"),
        ):
            rows.append(
                (
                    f"Long run ({lr['steps']} steps, 4 KB tool outputs), {what}, step "
                    f"{lr['steps']} / step 1",
                    f"{lr[last]:,.2f} / {lr[first]:,.2f} {unit} = {lr[ratio]:.2f}x",
                    f"<= {TARGET_LONG_RATIO}x",
                    _met(lr[ratio] <= TARGET_LONG_RATIO),
                    prev(_long_ratio(ratio)),
                )
            )
    rows += peer_rows(res.peer, before.peer if before is not None else None)
    base = next((r for r in res.throughput if r["processes_per_service"] == 1), None)
    for row in res.throughput:
        c = row["processes_per_service"]
        measured = f"{row['tether_steps_per_s']:.0f}"
        target, met = "", ""
        if base is not None and c != 1:
            ceiling = scaling_ceiling(base, c)
            measured += f" ({row['tether_steps_per_s'] / base['tether_steps_per_s']:.2f}x of 1)"
            target = f">= 85% of {ceiling:.0f}"
            met = _met(row["tether_steps_per_s"] >= 0.85 * ceiling)
        measured += f", {row['cpu_cores_total']:.2f} cores busy"
        rows.append(
            (
                f"Throughput, {c} process(es) per service, steps/s",
                measured,
                target,
                met,
                prev(_throughput_of(c, "tether_steps_per_s")),
            )
        )
        rows.append(
            (
                f"  bare Celery at {c}, steps/s (2 hops each)",
                f"{row['bare_steps_per_s']:.0f}",
                "",
                "",
                prev(_throughput_of(c, "bare_steps_per_s")),
            )
        )
        if "floor_steps_per_s" in row:
            rows.append(
                (
                    f"  floor (bench.floor) at {c}, steps/s (2 hops + the least Redis work)",
                    f"{row['floor_steps_per_s']:.0f}",
                    "",
                    "",
                    prev(_throughput_of(c, "floor_steps_per_s")),
                )
            )
        if "redis_commands_per_step" in row:
            rows.append(
                (
                    "Redis commands per step (incl. those inside scripts)",
                    f"{row['redis_commands_per_step']:.1f} (bare: {row['bare_redis_commands_per_step']:.1f})",
                    "",
                    "",
                    prev(
                        lambda b: (
                            f"{next(r for r in b.throughput if 'redis_commands_per_step' in r)['redis_commands_per_step']:.1f}"
                        )
                    ),
                )
            )
    s = res.state
    if s:
        rows.append(
            (
                "Redis memory per idle run, excl. event log, bytes",
                f"{s['bytes_per_idle_run']:,}",
                f"<= {TARGET_IDLE_BYTES:,}",
                _met(s["bytes_per_idle_run"] <= TARGET_IDLE_BYTES),
                prev(lambda b: f"{b.state['bytes_per_idle_run']:,}"),
            )
        )
    for pool, result in res.inflight.items():
        last_ok = next((lv for lv in reversed(result["levels"]) if lv["ok"]), None)
        p99 = f", p99 {last_ok['delay_p99_ms']:.0f} ms" if last_ok else ""
        rows.append(
            (
                f"Runs in flight, 1 s model, p99 delay < 100 ms, planner {label(pool)}",
                f"{result['max_sustained']:,}{p99}",
                "",
                "",
                prev(_in_flight_of(pool)),
            )
        )
        if result.get("cpu_ms_per_model_call"):
            rows.append(
                (
                    f"  CPU per model call, ms (planner {label(pool)}, executor, Redis)",
                    f"{result['cpu_ms_per_model_call']:.1f}: 2 cores allow "
                    f"~{result['cpu_bound_runs_in_flight']:,} runs",
                    "",
                    "",
                    "",
                )
            )
    sh = res.inflight_share
    if sh and "floor_ceiling_runs" in sh:
        for side in ("floor", "bare"):
            if f"{side}_ceiling_runs" not in sh:
                continue
            rows.append(
                (
                    f"  {_SIDE_NAMES[side]} ceiling, runs in flight "
                    "(hops/s x 1 s x model calls / messages)",
                    f"{sh[f'{side}_ceiling_runs']:,} ({sh[f'{side}_hops_per_s']:.0f} hops/s x "
                    f"{sh['model_latency_s']:g} s x "
                    f"{sh['model_calls_per_run']}/{sh['messages_per_run']})",
                    "",
                    "",
                    prev(_ceiling_of(side)),
                )
            )
        rows.append(
            (
                f"Runs in flight, share of the floor's ceiling (planner {label(sh['config'])})",
                f"{sh['tether_runs']:,} / {sh['floor_ceiling_runs']:,} = {sh['share']:.2f}"
                + (f" (of bare's: {sh['bare_share']:.2f})" if "bare_share" in sh else ""),
                f">= {TARGET_INFLIGHT_SHARE}",
                _met(sh["share"] >= TARGET_INFLIGHT_SHARE),
                prev(lambda b: f"{b.inflight_share['share']:.2f}"),
            )
        )
    cl = res.cluster
    if cl:
        rows.append(
            (
                f"Run state on a {cl['nodes']}-node Redis Cluster, ms per step / one Redis",
                f"{cl['cluster_ms_per_step']['median']:.2f} / "
                f"{cl['single_ms_per_step']['median']:.2f} = {cl['ratio']:.2f}x",
                "",
                "",
                prev(lambda b: f"{b.cluster['ratio']:.2f}x"),
            )
        )
    return rows


def _throughput_of(processes: int, key: str) -> Callable[[Results], str]:
    def get(b: Results) -> str:
        row = next(r for r in b.throughput if r["processes_per_service"] == processes)
        return f"{row[key]:.0f}"

    return get


_SIDE_NAMES = {"floor": "floor (bench.floor)", "bare": "bare Celery"}


def _ceiling_of(side: str) -> Callable[[Results], str]:
    return lambda b: f"{b.inflight_share[f'{side}_ceiling_runs']:,}"


def _in_flight_of(pool: str) -> Callable[[Results], str]:
    def get(b: Results) -> str:
        return f"{b.inflight[pool]['max_sustained']:,}"

    return get


def label(config: str) -> str:
    """An in-flight configuration as the table names it: gevent+quiet, gevent with events off."""
    pool, quiet = parse_config(config)
    return f"{pool}, task events off" if quiet else pool


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _long_ratio(name: str) -> Callable[[Results], str]:
    return lambda b: f"{b.long_run[name]:.2f}x"


def print_table(rows: list[tuple[str, str, str, str, str]], with_before: bool) -> str:
    header = ("Figure", "Measured", "Target", "", "Before" if with_before else "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = []
    for i, r in enumerate([header, *rows]):
        cells = r if with_before else r[:4]
        lines.append("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(cells)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (widths[j] + 2) for j in range(len(cells))) + "|")
    text = "\n".join(lines)
    print(text)
    return text


def plot(res: Results, path: Path, before: Results | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=80)
    ax = axes[0]
    if res.overhead:
        o = res.overhead
        names = ["Tether", "bare Celery", f"{TARGET_RATIO}x bare"]
        values = [
            o["tether_ms_per_step"]["median"],
            o["bare_ms_per_step"]["median"],
            o["bare_ms_per_step"]["median"] * TARGET_RATIO,
        ]
        colors = ["tab:blue", "tab:gray", "white"]
        if before is not None and before.overhead:
            names.insert(0, "Tether before")
            values.insert(0, before.overhead["tether_ms_per_step"]["median"])
            colors.insert(0, "lightsteelblue")
        ax.bar(names, values, color=colors, edgecolor="black")
        ax.set_ylabel("ms per agent step (median)")
        ax.set_title(f"Per-step time: {o['ratio']:.2f}x bare Celery")
    ax = axes[1]
    if res.throughput:
        xs = [r["processes_per_service"] for r in res.throughput]
        ax.plot(xs, [r["tether_steps_per_s"] for r in res.throughput], "o-", label="Tether")
        ax.plot(
            xs,
            [r["bare_steps_per_s"] for r in res.throughput],
            "s--",
            color="gray",
            label="bare Celery (2 hops)",
        )
        one = next((r for r in res.throughput if r["processes_per_service"] == 1), None)
        if one is not None:
            ax.plot(
                xs,
                [scaling_ceiling(one, x) for x in xs],
                ":",
                color="black",
                label="linear, capped by 2 cores",
            )
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("worker processes per service")
        ax.set_ylabel("agent steps/s")
        ax.set_title("Throughput (2 cores)")
        ax.legend(fontsize=8)
    ax = axes[2]
    for pool, result in res.inflight.items():
        levels = result["levels"]
        ax.plot(
            [lv["runs_in_flight"] for lv in levels],
            [max(lv["delay_p99_ms"], 1.0) for lv in levels],
            "o-",
            label=f"planner {label(pool)}",
        )
    if res.inflight:
        ax.axhline(100, color="red", linestyle=":", label="100 ms")
        if "floor_ceiling_runs" in res.inflight_share:
            ceiling = res.inflight_share["floor_ceiling_runs"]
            ax.axvline(ceiling, color="gray", linestyle="--", label=f"floor ceiling {ceiling:,}")
            ax.axvline(
                TARGET_INFLIGHT_SHARE * ceiling,
                color="black",
                linestyle=":",
                label=f"{TARGET_INFLIGHT_SHARE:.0%} of it (target)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("runs in flight (1 s model)")
        ax.set_ylabel("p99 scheduling delay, ms")
        ax.set_title("Runs in flight")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
