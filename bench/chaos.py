"""The chaos run: many agent runs through real workers while workers and Redis die.

It submits N runs of the chaos agent (a flaky lookup, a payment that must
never happen twice, an answer), then at random SIGKILLs planner and executor
workers and SIGKILLs Redis (appendfsync always, so the AOF holds every acknowledged write),
while the model endpoint injects 429s, 500s, slow and truncated answers and
malformed tool calls. Two slower faults outlast a consumer's heartbeat
(tether.transport.reliable.CONSUMER_DEAD_AFTER_S): every ``--pause-every``-th worker
fault SIGSTOPs the worker's whole process group for 1.5-3x that window and
then SIGCONTs it (a GC pause, a frozen VM: it wakes holding what it held), and
every ``--long-outage-every``-th Redis fault takes Redis away for
``--long-outage`` seconds, either SIGKILLed and started again from its AOF
(down) or SIGSTOPped and continued (hung). Which worker, how long, which
outage: all drawn from ``--seed``. An operator thread answers escalations as a
human would, checking the payment ledger before allowing a re-run. At the end
it prints one summary line (with ``paused=`` and ``long_outages=``) and exits
non-zero if any run was lost, any payment doubled, or a run's event log and its
lines in the lifecycle stream disagree (check_lifecycle). Every process it
starts, first or again, is named to a watchdog (bench.watchdog) that kills it
if the harness dies.

    python -m bench.chaos            # 1,000 runs
    python -m bench.chaos --quick    # 60 runs, for CI
    python -m bench.chaos --cluster  # run state on a three-node Redis Cluster

With ``--cluster`` the run state lives on a three-node Redis Cluster (each node
with its AOF, appendfsync always) and the broker on a Redis of its own; the
Redis kills fall on the broker and on each node in turn, so commits whose
writes to other slots are still to be applied (tether.store.spill) lose their
writer, their node, or the node they spill to.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

from bench.chaos_agents import chaos_script
from bench.watchdog import Watchdog
from tether import client
from tether.config import Settings
from tether.dev.redis_server import LocalCluster, RedisServer
from tether.dev.stack import DevStack
from tether.errors import ConfigError
from tether.escalation import records
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.transport.consumers import CONSUMER_DEAD_AFTER_S
from tether.transport.wire import EscalationKind, Verdict

# A paused worker stays stopped for this many times the window after which its
# consumer counts as dead.
PAUSE_RANGE = (1.5, 3.0)
# Timings: a step's worst case here (four 1 s model attempts with backoff, plus
# riding out a Redis restart, or frozen for the longest pause; a long Redis
# outage never overlaps a pause) stays under the soft limit, which stays under
# the hard limit, which stays under the visibility timeout. A task frozen past
# its soft limit fails on waking: a start message would be dead-lettered, and
# its event never become a run (with 20 s, 2 of 60 in a quick run).
SOFT_LIMIT_S = 35
HARD_LIMIT_S = 40
# Longer than it must be costs time: a message of a live consumer lost in a
# Redis restart waits this long to come back (60 s made the quick run 2.5x longer).
VISIBILITY_S = 45
# A run with no commit for this long is re-driven (tether.planner.reconcile).
STALLED_AFTER_S = 45


class Chaos:
    def __init__(
        self,
        stack: DevStack,
        rng: random.Random,
        kill_every_s: float,
        redis_every_s: float,
        redis_servers: dict[str, RedisServer],
        watchdog: Watchdog,
        pause_every: int = 0,
        long_outage_every: int = 0,
        long_outage_s: float = 15.0,
        max_pauses: int | None = None,
        max_long_outages: int | None = None,
    ) -> None:
        self.stack = stack
        self.redis_servers = redis_servers
        self.watchdog = watchdog
        self.rng = rng
        self.kill_every_s = kill_every_s
        self.redis_every_s = redis_every_s
        # 0: no pauses, no long outages.
        self.pause_every = pause_every
        self.long_outage_every = long_outage_every
        self.long_outage_s = long_outage_s
        self.max_pauses = max_pauses
        self.max_long_outages = max_long_outages
        self.kills: collections.Counter[str] = collections.Counter()
        self.pauses: collections.Counter[str] = collections.Counter()
        self.long_outages: collections.Counter[str] = collections.Counter()
        # Each pause and long outage: when (s into the run), what, for how long.
        self.slow_faults: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.rerun_approved = threading.Event()
        self.lock = threading.Lock()
        # The workers stopped now, and the timers that continue them.
        self.paused: dict[subprocess.Popen[bytes], threading.Timer] = {}
        self.paused_lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.rerun_thread = threading.Thread(target=self._kill_reruns, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.rerun_thread.start()

    def join(self) -> None:
        self.stop.set()
        self.rerun_approved.set()
        self.thread.join()
        self.rerun_thread.join()
        # A worker still stopped would sit out the stack's graceful stop.
        with self.paused_lock:
            paused = list(self.paused.items())
        for process, timer in paused:
            timer.cancel()
            self._resume(process)

    def _kill(self, service: str, label: str) -> None:
        with self.lock:
            process = self.stack.workers[service]
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.watchdog.forget(process)
            with self.paused_lock:
                timer = self.paused.pop(process, None)
            if timer is not None:
                timer.cancel()
            self.watchdog.watch(self.stack.start_worker(service))
            self.kills[label] += 1

    def _pause(self, service: str) -> None:
        """Stop the worker, pool and all, past its heartbeat; a timer continues it."""
        pause_s = CONSUMER_DEAD_AFTER_S * self.rng.uniform(*PAUSE_RANGE)
        with self.lock:
            process = self.stack.workers[service]
            with self.paused_lock:
                if process in self.paused:
                    return  # stopped already; the next fault is something else
                os.killpg(process.pid, signal.SIGSTOP)
                timer = threading.Timer(pause_s, self._resume, (process,))
                timer.daemon = True
                self.paused[process] = timer
                timer.start()
            self.pauses[service] += 1
            self._note("pause", service, pause_s)

    def _resume(self, process: subprocess.Popen[bytes]) -> None:
        with self.paused_lock:
            if self.paused.pop(process, None) is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)

    def _note(self, fault: str, target: str, seconds: float) -> None:
        self.slow_faults.append(
            {
                "at_s": round(time.monotonic() - self.started, 1),
                "fault": fault,
                "target": target,
                "seconds": round(seconds, 1),
            }
        )

    def _redis_fault(self, label: str, redis: RedisServer, long: bool) -> None:
        with self.lock:
            old = redis.process
            assert old is not None
            if long and self.rng.random() < 0.5:
                # Hung: connections open, nothing answers; keys' expiry times pass meanwhile.
                old.send_signal(signal.SIGSTOP)
                time.sleep(self.long_outage_s)
                old.send_signal(signal.SIGCONT)
                self.long_outages[f"{label}_hung"] += 1
                self._note("redis_hung", label, self.long_outage_s)
                return
            redis.kill()
            old.wait()
            self.watchdog.forget(old)
            time.sleep(self.long_outage_s if long else self.rng.uniform(0.2, 2.0))
            self._restart_redis(redis)
            self.watchdog.watch(redis.process)
            if long:
                self.long_outages[f"{label}_down"] += 1
                self._note("redis_down", label, self.long_outage_s)
            else:
                self.kills[label] += 1

    def _loop(self) -> None:
        last_redis = time.monotonic()
        # Each Redis in turn (one alone without --cluster), starting at random.
        turn = self.rng.randrange(len(self.redis_servers))
        worker_faults = redis_faults = 0
        while not self.stop.wait(self.kill_every_s * self.rng.uniform(0.5, 1.5)):
            # Redis goes only while no worker is stopped: a task frozen for a pause and
            # then held up by an outage would outlast the soft time limit.
            if time.monotonic() - last_redis > self.redis_every_s and not self.paused:
                label, redis = list(self.redis_servers.items())[turn % len(self.redis_servers)]
                turn += 1
                redis_faults += 1
                long = (
                    self.long_outage_every > 0
                    and redis_faults % self.long_outage_every == 0
                    and not _reached(self.long_outages, self.max_long_outages)
                )
                self._redis_fault(label, redis, long)
                last_redis = time.monotonic()
                continue
            service = self.rng.choice(["planner", "executor"])
            worker_faults += 1
            if (
                self.pause_every > 0
                and worker_faults % self.pause_every == 0
                and not _reached(self.pauses, self.max_pauses)
            ):
                self._pause(service)
            else:
                self._kill(service, service)

    def _kill_reruns(self) -> None:
        """Half the approved re-runs of a payment lose their executor while they pay."""
        while not self.stop.is_set():
            self.rerun_approved.wait()
            self.rerun_approved.clear()
            if self.stop.is_set() or self.rng.random() < 0.5:
                continue
            time.sleep(self.rng.uniform(0.2, 1.0))  # the re-run is on its way, or paying
            self._kill("executor", "executor_during_rerun")

    def _restart_redis(self, redis: RedisServer) -> None:
        for attempt in range(1, 11):
            try:
                redis.start()
                return
            except ConfigError as exc:
                print(f"chaos: redis restart {attempt} failed: {exc}", file=sys.stderr, flush=True)
                time.sleep(1.0)
        raise SystemExit("chaos: redis would not restart; see its log")


def _reached(counts: collections.Counter[str], cap: int | None) -> bool:
    return cap is not None and sum(counts.values()) >= cap


class Operator:
    """Answers escalations as an on-call human would, after checking the ledger."""

    def __init__(self, rt: Runtime, ledger: Path, on_rerun: threading.Event) -> None:
        self.rt = rt
        self.ledger = ledger
        self.on_rerun = on_rerun
        self.decisions: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _paid(self, action_id: str) -> bool:
        return self.ledger.exists() and any(
            line.split()[0] == action_id for line in self.ledger.read_text().splitlines()
        )

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                pending = records.list_escalations(self.rt, limit=1000)
            except Exception:
                continue  # Redis is down for a moment; look again
            for record in pending:
                esc = record.escalation
                try:
                    if (
                        esc.kind == EscalationKind.unsafe_retry
                        and esc.action is not None
                        and self._paid(esc.action.action_id)
                    ):
                        client.decide(
                            esc.escalation_id,
                            Verdict.answer,
                            by="chaos-operator",
                            answer="the payment went through; do not pay again",
                            runtime=self.rt,
                        )
                        self.decisions["answered_paid"] += 1
                        continue
                    # No payment in the ledger: the attempt died before it paid, so
                    # one more is safe.
                    client.decide(
                        esc.escalation_id, Verdict.approve, by="chaos-operator", runtime=self.rt
                    )
                    self.decisions[f"approved_{esc.kind}"] += 1
                    if esc.kind == EscalationKind.unsafe_retry:
                        self.on_rerun.set()
                except Exception:
                    continue  # decided meanwhile, or Redis is down; the next pass sees


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="60 runs, faster chaos: for CI")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kills")
    parser.add_argument(
        "--redis-every", type=float, default=45.0, help="seconds between Redis kills"
    )
    parser.add_argument(
        "--pause-every",
        type=int,
        default=None,
        help="every Nth worker fault SIGSTOPs the worker past its heartbeat "
        "(0: never; default 5, 3 with --quick)",
    )
    parser.add_argument(
        "--long-outage-every",
        type=int,
        default=None,
        help="every Nth Redis fault keeps Redis away for --long-outage seconds "
        "(0: never; default 3, 1 with --quick)",
    )
    parser.add_argument("--long-outage", type=float, default=15.0, help="seconds Redis is away")
    parser.add_argument(
        "--max-pauses",
        type=int,
        default=None,
        help="at most this many pauses (default: no cap, 1 with --quick)",
    )
    parser.add_argument(
        "--max-long-outages",
        type=int,
        default=None,
        help="at most this many long outages (default: no cap, 1 with --quick)",
    )
    parser.add_argument("--model-fault-rate", type=float, default=0.05)
    parser.add_argument(
        "--publish-rate", type=float, default=20.0, help="events per second, published under chaos"
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run state on a three-node Redis Cluster, the broker on a Redis of its own",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.kill_every, args.redis_every, args.publish_rate = 60, 4.0, 12.0, 5.0
    # --quick: one long outage, the first Redis fault (while events are still being
    # published), and one pause, the third worker fault (after the outage, with runs
    # still under way however fast the machine).
    if args.pause_every is None:
        args.pause_every = 3 if args.quick else 5
    if args.long_outage_every is None:
        args.long_outage_every = 1 if args.quick else 3
    if args.quick:
        args.max_pauses = 1 if args.max_pauses is None else args.max_pauses
        args.max_long_outages = 1 if args.max_long_outages is None else args.max_long_outages

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tether-chaos-"))
    ledger = work / "ledger.txt"
    server = ScriptedOpenAIServer(
        chaos_script,
        fault_rate=args.model_fault_rate,
        seed=args.seed,
        retry_after_s=0.1,
        slow_s=1.5,
    )
    env = {
        "CHAOS_OPENAI_URL": server.base_url,
        "CHAOS_LEDGER": str(ledger),
        "TETHER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "TETHER_UNACKED_RESTORE_INTERVAL_S": "1",
        "TETHER_TASK_SOFT_TIME_LIMIT_S": str(SOFT_LIMIT_S),
        "TETHER_TASK_TIME_LIMIT_S": str(HARD_LIMIT_S),
        "TETHER_RUN_STALLED_AFTER_S": str(STALLED_AFTER_S),
        "TETHER_RECONCILE_INTERVAL_S": "5",
        "TETHER_LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    published: list[str] = []
    outcomes: dict[str, tuple[str, str | None]] = {}
    chaos: Chaos | None = None
    operator: Operator | None = None
    with Watchdog() as watchdog, server, contextlib.ExitStack() as redis_servers:
        if args.cluster:
            cluster = redis_servers.enter_context(LocalCluster(nodes=3, appendfsync="always"))
            broker = redis_servers.enter_context(
                RedisServer(data_dir=work / "broker", appendfsync="always")
            )
            killed = {"broker": broker} | {
                f"redis_node{i}": node for i, node in enumerate(cluster.servers, start=1)
            }
            settings = Settings(redis_url=cluster.url, broker_url=broker.url, redis_cluster=True)
            stack = DevStack(
                redis_url=cluster.url,
                broker_url=broker.url,
                agent_modules=["bench.chaos_agents"],
                concurrency=args.concurrency,
                env={**env, "TETHER_REDIS_CLUSTER": "true"},
                log_dir=work / "logs",
            )
        else:
            redis = RedisServer(data_dir=work / "redis", appendfsync="always")
            killed = {"redis": redis}
            settings = Settings(redis_url=redis.url)
            stack = DevStack(
                agent_modules=["bench.chaos_agents"],
                concurrency=args.concurrency,
                env=env,
                log_dir=work / "logs",
                redis=redis,
            )
        redis_servers.enter_context(stack)
        # Started from this thread, these die with it (PDEATHSIG) too; the ones the
        # chaos thread starts again have only the watchdog.
        watchdog.watch(*stack.workers.values(), *(r.process for r in killed.values()))
        rt = Runtime(settings)
        chaos = Chaos(
            stack,
            rng,
            args.kill_every,
            args.redis_every,
            killed,
            watchdog,
            pause_every=args.pause_every,
            long_outage_every=args.long_outage_every,
            long_outage_s=args.long_outage,
            max_pauses=args.max_pauses,
            max_long_outages=args.max_long_outages,
        )
        operator = Operator(rt, ledger, chaos.rerun_approved)
        chaos.start()
        operator.thread.start()
        try:
            # Events go out while workers and Redis die under them.
            publish(rt, args, published)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and len(outcomes) < len(published):
                time.sleep(2.0)
                settle(rt, published, outcomes)
                print(
                    f"chaos: {len(outcomes)}/{len(published)} ended after "
                    f"{time.monotonic() - started:.0f}s, kills {dict(chaos.kills)}, "
                    f"paused {dict(chaos.pauses)}, long outages {dict(chaos.long_outages)}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            chaos.join()
            operator.stop.set()
            operator.thread.join()
            settle(rt, published, outcomes)
            redriven = count_redriven(rt, published)
            # Leftovers of a writer that died wait for the reconciler's next look.
            lifecycle = check_lifecycle(rt, published, STALLED_AFTER_S + 15 if args.cluster else 0)

    summary = summarize(args, published, outcomes, ledger, chaos, operator, server, redriven)
    summary["lifecycle"] = lifecycle
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    print(
        f"chaos: seed={args.seed} published={summary['published']} "
        f"terminal={summary['terminal']} rejected={summary['rejected']} "
        f"lost={summary['lost']} doubled={summary['doubled']} "
        f"statuses={json.dumps(summary['statuses'], sort_keys=True)} "
        f"categories={json.dumps(summary['categories'], sort_keys=True)} "
        f"kills={json.dumps(summary['kills'], sort_keys=True)} "
        f"paused={summary['paused']} long_outages={summary['long_outages']} "
        f"model_faults={summary['model_faults']} redriven={summary['redriven']} "
        f"operator={json.dumps(summary['operator'], sort_keys=True)} "
        f"lifecycle={json.dumps(lifecycle, sort_keys=True)} "
        f"elapsed={summary['elapsed_s']}s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    unaccounted = lifecycle["missing"] + lifecycle["invented"] + lifecycle["spill_left"]
    if summary["lost"] or summary["doubled"] or unaccounted:
        print(f"chaos: FAILED; worker logs kept in {work / 'logs'}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def publish(rt: Runtime, args: argparse.Namespace, published: list[str]) -> None:
    """Submit the events at ``--publish-rate``; an event counts once its publish returned."""
    interval = 1.0 / args.publish_rate
    for i in range(args.runs):
        event_id = f"chaos-{args.seed}-{i}"
        while True:
            try:
                client.submit("chaos", f"pay order {i}", event_id=event_id, runtime=rt)
                break
            except Exception as exc:  # Redis down past the publish retries: send it again
                print(f"chaos: publishing {event_id} failed ({exc}); again", file=sys.stderr)
                time.sleep(1.0)
        published.append(event_id)
        time.sleep(interval)


def settle(rt: Runtime, published: list[str], outcomes: dict[str, tuple[str, str | None]]) -> None:
    """Note each published event that ended: its run terminal, or the event rejected."""
    for event_id in published:
        if event_id in outcomes:
            continue
        try:
            state = rt.store.get(run_id_for(event_id))
            if state is not None and state.terminal:
                category = str(state.error.category) if state.error else None
                outcomes[event_id] = (str(state.status), category)
            elif state is None and rt.store.rejections.reason(event_id) is not None:
                outcomes[event_id] = ("rejected", None)
        except Exception:
            return  # Redis is down for a moment; look again next time


def check_lifecycle(rt: Runtime, published: list[str], wait_s: float) -> dict[str, int]:
    """Every run's log entries in the lifecycle stream, and nothing left to apply.

    ``missing``: log entries with no lifecycle line; ``invented``: lifecycle lines
    with no log entry; ``spill_left``: runs whose writes to other cluster slots were
    still not applied after ``wait_s`` (none on one Redis). All three must be 0.
    ``doubled`` counts lines that came twice: a commit's entries land once, but an
    entry written outside a commit (a model or tool call, a dead letter) is sent
    again when Redis dies before its reply, and on a cluster only the line on the
    node that died is sent again.
    """
    run_ids = [run_id_for(event_id) for event_id in published]
    deadline = time.monotonic() + wait_s
    while True:
        left = [r for r in run_ids if rt.store.client.llen(keys.spill(keys.run(r)))]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    lines: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(
        collections.Counter
    )
    entries = cast(list[tuple[str, dict[str, str]]], rt.store.client.xrange(keys.LIFECYCLE_STREAM))
    for _, entry in entries:
        lines[entry["run_id"]][(entry["kind"], entry["step"])] += 1
    found = {"missing": 0, "invented": 0, "doubled": 0, "spill_left": len(left)}
    for run_id in run_ids:
        logged = collections.Counter(
            (str(e.kind), str(e.step)) for _, e in rt.store.log.read(run_id)
        )
        lifecycle = lines[run_id]
        found["missing"] += sum(n for k, n in logged.items() if k not in lifecycle)
        found["invented"] += sum(n for k, n in lifecycle.items() if k not in logged)
        found["doubled"] += sum(
            abs(n - logged[k]) for k, n in lifecycle.items() if k in logged and n != logged[k]
        )
    return found


def count_redriven(rt: Runtime, published: list[str]) -> int:
    try:
        return sum(
            1
            for event_id in published
            if any(e.kind == "run_redriven" for _, e in rt.store.log.read(run_id_for(event_id)))
        )
    except Exception:
        return -1  # Redis went away at the very end: the summary still prints


def summarize(
    args: argparse.Namespace,
    published: list[str],
    outcomes: dict[str, tuple[str, str | None]],
    ledger: Path,
    chaos: Chaos,
    operator: Operator,
    server: ScriptedOpenAIServer,
    redriven: int,
) -> dict[str, Any]:
    payments = collections.Counter(
        line.split()[0] for line in (ledger.read_text().splitlines() if ledger.exists() else [])
    )
    statuses = collections.Counter(status for status, _ in outcomes.values())
    rejected = statuses.pop("rejected", 0)
    categories = collections.Counter(c for _, c in outcomes.values() if c is not None)
    return {
        "seed": args.seed,
        "runs": args.runs,
        "published": len(published),
        "terminal": sum(statuses.values()),
        "rejected": rejected,
        # An event that never became a run, or whose run never ended, is lost.
        "lost": len(published) - len(outcomes),
        "doubled": sum(1 for n in payments.values() if n > 1),
        "statuses": dict(statuses),
        "categories": dict(categories),
        "kills": dict(chaos.kills),
        "paused": sum(chaos.pauses.values()),
        "long_outages": sum(chaos.long_outages.values()),
        "pauses_by_service": dict(chaos.pauses),
        "long_outages_by_kind": dict(chaos.long_outages),
        "slow_faults": chaos.slow_faults,
        "model_faults": len(server.injected),
        "redriven": redriven,
        "operator": dict(operator.decisions),
    }


if __name__ == "__main__":
    sys.exit(main())
