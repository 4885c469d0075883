"""The chaos run: many agent runs through real workers while workers and Redis die.

It submits N runs of the chaos agent (a flaky lookup, a payment that must
never happen twice, an answer), then at random SIGKILLs planner and executor
workers and SIGKILLs Redis (appendfsync always, so the AOF holds every acknowledged write),
while the model endpoint injects 429s, 500s, slow and truncated answers and
malformed tool calls. An operator thread answers escalations as a human would,
checking the payment ledger before allowing a re-run. At the end it prints
one summary line and exits non-zero if any run was lost or any payment doubled.

    python -m bench.chaos            # 1,000 runs
    python -m bench.chaos --quick    # 60 runs, for CI
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.chaos_agents import chaos_script
from tether import client, escalations
from tether.config import Settings
from tether.devstack import DevStack
from tether.errors import ConfigError
from tether.messages import EscalationKind, Verdict
from tether.redis_server import RedisServer
from tether.runtime import Runtime
from tether.state import RunState
from tether.testing.openai_server import ScriptedOpenAIServer

# Timings: a step's worst case here (four 1 s model attempts with backoff, plus
# riding out a Redis restart) stays well under the soft limit, which stays
# under the hard limit, which stays under the visibility timeout.
VISIBILITY_S = 30
# A run with no commit for this long is re-driven (tether.planner.reconcile).
STALLED_AFTER_S = 45


class Chaos:
    def __init__(
        self, stack: DevStack, rng: random.Random, kill_every_s: float, redis_every_s: float
    ) -> None:
        self.stack = stack
        self.rng = rng
        self.kill_every_s = kill_every_s
        self.redis_every_s = redis_every_s
        self.kills: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        last_redis = time.monotonic()
        while not self.stop.wait(self.kill_every_s * self.rng.uniform(0.5, 1.5)):
            if self.stack.redis is not None and time.monotonic() - last_redis > self.redis_every_s:
                self.stack.redis.kill()
                time.sleep(self.rng.uniform(0.2, 2.0))
                self._restart_redis(self.stack.redis)
                self.kills["redis"] += 1
                last_redis = time.monotonic()
                continue
            service = self.rng.choice(["planner", "executor"])
            process = self.stack.workers[service]
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.stack.start_worker(service)
            self.kills[service] += 1

    def _restart_redis(self, redis: RedisServer) -> None:
        for attempt in range(1, 11):
            try:
                redis.start()
                return
            except ConfigError as exc:
                print(f"chaos: redis restart {attempt} failed: {exc}", file=sys.stderr, flush=True)
                time.sleep(1.0)
        raise SystemExit("chaos: redis would not restart; see its log")


class Operator:
    """Answers escalations as an on-call human would, after checking the ledger."""

    def __init__(self, rt: Runtime, ledger: Path) -> None:
        self.rt = rt
        self.ledger = ledger
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
                pending = escalations.list_escalations(self.rt, limit=1000)
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
                    client.decide(
                        esc.escalation_id, Verdict.approve, by="chaos-operator", runtime=self.rt
                    )
                    self.decisions[f"approved_{esc.kind}"] += 1
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
    parser.add_argument("--model-fault-rate", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.kill_every, args.redis_every = 60, 4.0, 12.0

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
        "TETHER_TASK_SOFT_TIME_LIMIT_S": "20",
        "TETHER_TASK_TIME_LIMIT_S": "25",
        "TETHER_RUN_STALLED_AFTER_S": str(STALLED_AFTER_S),
        "TETHER_RECONCILE_INTERVAL_S": "5",
        "TETHER_LOG_LEVEL": "WARNING",
    }
    redis = RedisServer(data_dir=work / "redis", appendfsync="always")
    started = time.monotonic()
    states: list[RunState | None] = []
    with (
        server,
        DevStack(
            agent_modules=["bench.chaos_agents"],
            concurrency=args.concurrency,
            env=env,
            log_dir=work / "logs",
            redis=redis,
        ) as stack,
    ):
        rt = Runtime(Settings(redis_url=stack.redis_url))
        run_ids = [
            client.submit("chaos", f"pay order {i}", event_id=f"chaos-{args.seed}-{i}", runtime=rt)
            for i in range(args.runs)
        ]
        chaos = Chaos(stack, rng, args.kill_every, args.redis_every)
        operator = Operator(rt, ledger)
        chaos.thread.start()
        operator.thread.start()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(2.0)
            try:
                states = [rt.store.get(r) for r in run_ids]
            except Exception:
                continue
            done = sum(1 for s in states if s is not None and s.terminal)
            print(
                f"chaos: {done}/{len(run_ids)} terminal after {time.monotonic() - started:.0f}s, "
                f"kills {dict(chaos.kills)}",
                file=sys.stderr,
                flush=True,
            )
            if done == len(run_ids):
                break
        chaos.stop.set()
        chaos.thread.join()
        operator.stop.set()
        operator.thread.join()
        states = [rt.store.get(r) for r in run_ids]
        redriven = sum(
            1 for r in run_ids if any(e.kind == "run_redriven" for _, e in rt.store.trace(r))
        )

    elapsed = time.monotonic() - started
    payments = collections.Counter(
        line.split()[0] for line in (ledger.read_text().splitlines() if ledger.exists() else [])
    )
    terminal = [s for s in states if s is not None and s.terminal]
    summary = {
        "runs": args.runs,
        "terminal": len(terminal),
        "lost": args.runs - len(terminal),
        "doubled": sum(1 for n in payments.values() if n > 1),
        "statuses": dict(collections.Counter(str(s.status) for s in terminal)),
        "categories": dict(collections.Counter(str(s.error.category) for s in terminal if s.error)),
        "kills": dict(chaos.kills),
        "model_faults": len(server.injected),
        "redriven": redriven,
        "operator": dict(operator.decisions),
        "elapsed_s": round(elapsed, 1),
    }
    print(
        f"chaos: submitted={summary['runs']} terminal={summary['terminal']} "
        f"lost={summary['lost']} doubled={summary['doubled']} "
        f"statuses={json.dumps(summary['statuses'], sort_keys=True)} "
        f"categories={json.dumps(summary['categories'], sort_keys=True)} "
        f"kills={json.dumps(summary['kills'], sort_keys=True)} "
        f"model_faults={summary['model_faults']} redriven={summary['redriven']} "
        f"operator={json.dumps(summary['operator'], sort_keys=True)} "
        f"elapsed={summary['elapsed_s']}s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["lost"] or summary["doubled"]:
        print(f"chaos: FAILED; worker logs kept in {work / 'logs'}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
