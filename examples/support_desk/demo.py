"""`make demo`: real agent runs through all three services on an embedded stack.

It starts a Redis it owns and the planner, executor and escalation workers,
submits support tasks, approves one refund and rejects another with the same
`tether escalations` commands a human would type, prints every run's trace and
result, and exits non-zero if any run did not end as a support desk should.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from tether import client
from tether.cli import render
from tether.cli.console import serve_in_background
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store.state import RunState

TASKS = [
    ("Where is order 1001?", "succeeded"),
    ("Where is order #1003?", "succeeded"),
    ("I am ana@example.com, what did I order?", "succeeded"),
    ("Please refund order 1002, the jacket arrived torn.", "succeeded"),
    ("Refund order 1005, I changed my mind after using it for a month.", "rejected"),
    # Ambiguous: the model asks a human which order (ask_human); the operator answers.
    ("I want a refund for the stove, it never came.", "succeeded"),
]


AGENT_MODULES = ["examples.support_desk.agent"]
# Where `tether dev` serves the console too.
CONSOLE_PORT = 8680


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def show_memory(rt: Runtime) -> list[str]:
    """One customer, two tasks on one thread: the second uses what the first remembered."""
    render.console.rule("memory: the same customer, two tasks")
    meta = {"customer_id": "cust-ana"}
    first = client.submit(
        "support_desk",
        "I am ana@example.com, what did I order?",
        metadata=meta,
        thread_id="ana-chat",
        runtime=rt,
    )
    second = client.submit(
        "support_desk",
        "Any news on my last order?",
        metadata=meta,
        thread_id="ana-chat",
        runtime=rt,
    )
    # Published together: the thread runs them one after the other.
    states = [client.wait(r, timeout_s=60, runtime=rt) for r in (first, second)]
    for state in states:
        render.console.print(f"{state.run_id} [{state.status}] {state.goal!r}\n  -> {state.result}")
    human("memory", "show", "cust-ana")
    human("threads", "show", "ana-chat")
    recalled = "remembered" in (states[1].result or "") and "1002" in (states[1].result or "")
    return [] if recalled else [f"{second} did not use what {first} remembered"]


def main() -> int:
    logs = Path(".tether/demo-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.environ.setdefault("SUPPORT_DESK_DB", ".tether/demo-support.sqlite3")
    Path(os.environ["SUPPORT_DESK_DB"]).unlink(missing_ok=True)
    model = os.environ.get("TETHER_MODEL_BASE_URL") or "the scripted model (scripted:support_desk)"
    render.console.rule("Tether demo: support desk")
    render.console.print(f"model: {model}\nstarting redis-server and three worker services…")
    with DevStack(agent_modules=AGENT_MODULES, log_dir=logs) as stack:
        os.environ["TETHER_REDIS_URL"] = stack.redis_url
        rt = Runtime(Settings(redis_url=stack.redis_url))
        render.console.print(f"redis {stack.redis_url}; worker logs in {logs}/")
        if _port_free(CONSOLE_PORT):
            url = serve_in_background(stack.redis_url, AGENT_MODULES, CONSOLE_PORT)
            render.console.print(f"console {url} (no sign-in: loopback only) while the demo runs\n")
        else:
            render.console.print(f"console: port {CONSOLE_PORT} is taken, not served\n")

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
        while len(pending) < 3 and time.monotonic() < deadline:
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
        ask_id = pending[run_ids[5]].escalation.escalation_id
        human(
            "escalations",
            "answer",
            ask_id,
            "Order 1003, the camping stove: it is still processing, so cancel and refund it.",
            "--by",
            "dana@support",
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
            events = [e for _, e in rt.store.log.read(state.run_id)]
            render.console.print(render.trace_table(state.run_id, events))
            render.console.print(render.run_panel(state, rt.store.budgets.usage(state.run_id)))
        memory_problems = show_memory(rt)
        render.console.rule("summary")
        render.console.print(progress(rt, run_ids))
        wrong = memory_problems + [
            f"{s.run_id} ({goal!r}) ended {s.status}, expected {expected}"
            for s, (goal, expected) in zip(settled, TASKS, strict=True)
            if s.status != expected
        ]
    if wrong:
        render.console.print("[red]demo failed:[/]\n  " + "\n  ".join(wrong))
        return 1
    render.console.print("[green]demo finished: all runs ended as expected; stack stopped.[/]")
    render.console.print(
        f"`tether dev` keeps a stack up, the console on http://localhost:{CONSOLE_PORT}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
