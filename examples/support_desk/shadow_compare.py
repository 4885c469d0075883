"""`make eval`'s shadow comparison: support_desk_v2 in shadow of support_desk.

Starts an embedded stack whose workers load the support desk and its candidate
(examples.support_desk.candidate), publishes a few support events, approves the
one damaged-goods refund and rejects the other, waits for every primary and its
shadow to end, then prints `tether shadow report`. Exits 1 if a run did not end
as expected, a shadow did not finish, or a shadow left a side effect (a refund
row that is not the approved primary's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from examples.support_desk.db import connect
from tether import client
from tether.cli import render
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.errors import TetherError
from tether.rollout.shadow import shadow_event_id
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import RunStatus
from tether.transport.wire import Verdict

CANDIDATE = "support_desk_v2"
# goal -> the primary's end (a refund waits for a human: approved, or rejected).
EVENTS = [
    ("Where is order 1001?", RunStatus.succeeded, None),
    ("I am ana@example.com, what did I order?", RunStatus.succeeded, None),
    ("Please refund order 1002, the jacket arrived torn.", RunStatus.succeeded, Verdict.approve),
    (
        "Refund order 1005, I changed my mind after using it for a month.",
        RunStatus.rejected,
        Verdict.reject,
    ),
]
TIMEOUT_S = 60.0


def main() -> int:
    logs = Path(".tether/logs/shadow")
    shutil.rmtree(logs, ignore_errors=True)
    os.environ["SUPPORT_DESK_DB"] = ".tether/eval-shadow-support.sqlite3"
    Path(os.environ["SUPPORT_DESK_DB"]).unlink(missing_ok=True)
    render.console.rule(f"shadow comparison: {CANDIDATE} in shadow of support_desk")
    modules = ["examples.support_desk.agent", "examples.support_desk.candidate"]
    problems: list[str] = []
    with DevStack(agent_modules=modules, log_dir=logs) as stack:
        rt = Runtime(Settings(redis_url=stack.redis_url))
        suffix = str(time.time_ns())
        planned = {}
        for n, (goal, expected, verdict) in enumerate(EVENTS):
            event_id = f"shadow-compare-{suffix}-{n}"
            planned[client.submit("support_desk", goal, event_id=event_id, runtime=rt)] = (
                event_id,
                expected,
                verdict,
            )
            render.console.print(f"published {event_id}: {goal}")
        shadows = {
            run_id_for(shadow_event_id(CANDIDATE, event_id)) for event_id, _, _ in planned.values()
        }
        deadline = time.monotonic() + TIMEOUT_S
        decided: set[str] = set()
        while time.monotonic() < deadline:
            states = {r: rt.store.get(r) for r in [*planned, *shadows]}
            for run_id, (_, _, verdict) in planned.items():
                state = states[run_id]
                if verdict is None or state is None or state.status != RunStatus.waiting_human:
                    continue
                for wait in state.awaiting_human:
                    if wait.escalation_id not in decided:
                        try:
                            client.decide(wait.escalation_id, verdict, by="make-eval", runtime=rt)
                        except TetherError:  # not opened yet: decided on the next look
                            continue
                        decided.add(wait.escalation_id)
            if all(s is not None and s.terminal for s in states.values()):
                break
            time.sleep(0.2)
        for run_id, (event_id, expected, _) in planned.items():
            state = rt.store.get(run_id)
            status = state.status if state else "not created"
            if status != expected:
                problems.append(f"primary {event_id} ended {status}, expected {expected}")
        for run_id in shadows:
            state = rt.store.get(run_id)
            if state is None or not state.terminal:
                problems.append(f"shadow {run_id} did not finish within {TIMEOUT_S:g}s")
        with connect() as conn:
            refunds = [dict(r) for r in conn.execute("SELECT * FROM refunds").fetchall()]
        for row in refunds:
            if not any(str(row["idempotency_key"]).startswith(r) for r in planned):
                problems.append(f"a refund no primary made: {row}")
        if len(refunds) != 1:
            problems.append(f"{len(refunds)} refunds written; only the approved one may be")
        render.console.print("[bold]$ tether shadow report --agent support_desk[/]")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tether.cli.main",
                "shadow",
                "report",
                "--agent",
                "support_desk",
            ],
            env={"COLUMNS": "160", **os.environ, "TETHER_REDIS_URL": stack.redis_url},
            check=False,
        )
    if problems:
        render.console.print("[red]shadow comparison failed:[/]\n  " + "\n  ".join(problems))
        return 1
    render.console.print(
        f"[green]shadow comparison: {len(shadows)} shadow runs finished; "
        "no side effect from the candidate (one refund, the approved primary's).[/]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
