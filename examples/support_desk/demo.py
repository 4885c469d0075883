"""`make demo`: real agent runs through all three services on an embedded stack.

It starts a Redis it owns and the planner, executor and escalation workers,
submits support tasks, approves one refund and rejects another with the same
`tether escalations` commands a human would type, prints every run's trace and
result, and exits non-zero if any run did not end as a support desk should.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from tether import client
from tether.cli import render
from tether.config import Settings
from tether.devstack import DevStack
from tether.runtime import Runtime
from tether.state import RunState

TASKS = [
    ("Where is order 1001?", "succeeded"),
    ("Where is order #1003?", "succeeded"),
    ("I am ana@example.com, what did I order?", "succeeded"),
    ("Please refund order 1002, the jacket arrived torn.", "succeeded"),
    ("Refund order 1005, I changed my mind after using it for a month.", "rejected"),
]


def progress(rt: Runtime, run_ids: list[str]) -> Table:
    states = [rt.store.get(r) for r in run_ids]
    return render.runs_table([s for s in states if s is not None])


def wait_until(rt: Runtime, run_ids: list[str], done: set[str], timeout_s: float) -> list[RunState]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [rt.store.get(r) for r in run_ids]
        if all(s is not None and s.status in done for s in states):
            return [s for s in states if s is not None]
        time.sleep(0.2)
    render.console.print(progress(rt, run_ids))
    raise SystemExit(f"demo: runs did not reach {sorted(done)} within {timeout_s:g}s")


def human(*args: str) -> None:
    """Decide through the CLI, as an operator would."""
    render.console.print(f"[bold]$ tether {' '.join(args)}[/]")
    subprocess.run([sys.executable, "-m", "tether.cli.main", *args], check=True)


def main() -> int:
    logs = Path(".tether/demo-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.environ.setdefault("SUPPORT_DESK_DB", ".tether/demo-support.sqlite3")
    Path(os.environ["SUPPORT_DESK_DB"]).unlink(missing_ok=True)
    model = os.environ.get("TETHER_MODEL_BASE_URL") or "the scripted model (scripted:support_desk)"
    render.console.rule("Tether demo: support desk")
    render.console.print(f"model: {model}\nstarting redis-server and three worker services…")
    with DevStack(agent_modules=["examples.support_desk.agent"], log_dir=logs) as stack:
        os.environ["TETHER_REDIS_URL"] = stack.redis_url
        rt = Runtime(Settings(redis_url=stack.redis_url))
        render.console.print(f"redis {stack.redis_url}; worker logs in {logs}/\n")

        run_ids = []
        for goal, _ in TASKS:
            run_ids.append(client.submit("support_desk", goal, runtime=rt))
            render.console.print(f"submitted {run_ids[-1]}: {goal}")
        # The same event published twice is one run.
        again = client.submit(
            "support_desk", "Where is order 1001?", event_id="demo-dup", runtime=rt
        )
        assert (
            client.submit("support_desk", "Where is order 1001?", event_id="demo-dup", runtime=rt)
            == again
        )

        settled = wait_until(rt, run_ids, {"succeeded", "failed", "waiting_human"}, 60)
        render.console.print(progress(rt, run_ids))

        pending = {rec.escalation.run_id: rec for rec in client.pending_escalations(rt)}
        deadline = time.monotonic() + 30
        while len(pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pending = {rec.escalation.run_id: rec for rec in client.pending_escalations(rt)}
        render.console.rule("escalations waiting for a human")
        human("escalations", "list")
        approve_id = pending[run_ids[3]].escalation.escalation_id
        reject_id = pending[run_ids[4]].escalation.escalation_id
        human(
            "escalations",
            "approve",
            approve_id,
            "--by",
            "dana@support",
            "--reason",
            "damaged on arrival",
        )
        human(
            "escalations",
            "reject",
            reject_id,
            "--by",
            "dana@support",
            "--reason",
            "used for a month: outside the return policy",
        )

        settled = wait_until(
            rt, run_ids, {"succeeded", "failed", "rejected", "budget_exhausted"}, 60
        )
        render.console.rule("traces")
        for state in settled:
            events = [e for _, e in rt.store.trace(state.run_id)]
            render.console.print(render.trace_table(state.run_id, events))
            render.console.print(render.run_panel(state, rt.store.budgets.usage(state.run_id)))
        render.console.rule("summary")
        render.console.print(progress(rt, run_ids))
        wrong = [
            f"{s.run_id} ({goal!r}) ended {s.status}, expected {expected}"
            for s, (goal, expected) in zip(settled, TASKS, strict=True)
            if s.status != expected
        ]
    if wrong:
        render.console.print("[red]demo failed:[/]\n  " + "\n  ".join(wrong))
        return 1
    render.console.print("[green]demo finished: all runs ended as expected; stack stopped.[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
