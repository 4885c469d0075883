"""The `tether` command: run the stack, submit work, inspect runs, decide escalations."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import typer
from rich.markup import escape

from tether import client, metrics, operators
from tether import health as health_check
from tether.cli import render
from tether.cli.dead import dead_app
from tether.cli.escalations import escalations_app
from tether.cli.eval import eval_command
from tether.cli.export import export as export_command
from tether.cli.feedback import feedback as feedback_command
from tether.cli.memory import memory_app, threads_app
from tether.cli.replay import replay as replay_command
from tether.cli.runs import follow, runs_app
from tether.cli.shadow import shadow_app
from tether.cli.stats import stats as stats_command
from tether.cli.top import top as top_command
from tether.config import get_settings
from tether.devstack import SERVICES, DevStack
from tether.errors import TetherError
from tether.lifetime import interrupt_on_terminate
from tether.messages import BudgetLimits

app = typer.Typer(help="Tether: production runtime for LLM agents.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(escalations_app, name="escalations")
app.add_typer(dead_app, name="dead")
app.add_typer(shadow_app, name="shadow")
app.add_typer(threads_app, name="threads")
app.add_typer(memory_app, name="memory")
app.command("stats")(stats_command)
app.command("feedback")(feedback_command)
app.command("top")(top_command)
app.command("eval")(eval_command)
app.command("replay")(replay_command)
runs_app.command("export")(export_command)


@app.command()
def dev(
    agents: list[str] = typer.Option(
        ["examples.support_desk.agent"], "--agents", "-a", help="Agent modules to load"
    ),
    concurrency: int = typer.Option(2, help="Worker processes per service"),
    flower_port: int = typer.Option(0, help="Also start Flower on this port (0: off)"),
) -> None:
    """Start a Redis this command owns and the three services; Ctrl-C stops all of it."""
    # Checked here: a worker refusing its settings would only be restarted, again and again.
    get_settings()
    stack = DevStack(
        agent_modules=agents,
        concurrency=concurrency,
        log_dir=Path(".tether/logs"),
        flower_port=flower_port or None,
    )
    interrupt_on_terminate()
    render.console.print("starting redis-server and the planner, executor and escalation workers…")
    with stack:
        render.console.print(f"[bold]redis[/]      {stack.redis_url} (owned by this process)")
        for name, process in stack.workers.items():
            render.console.print(
                f"[bold]{name:<10}[/] pid {process.pid}  log {stack.log_dir}/{name}.log"
            )
        if stack.flower:
            render.console.print(f"[bold]flower[/]     http://127.0.0.1:{flower_port}")
        render.console.print(
            f"\nIn another shell:\n  export TETHER_REDIS_URL={stack.redis_url}\n"
            "  tether submit support_desk 'Where is order 1001?' --wait\n"
        )
        render.console.print("Ctrl-C stops everything.")
        try:
            while True:
                for name, process in stack.workers.items():
                    if process.poll() is not None:
                        render.console.print(
                            f"[red]{name} worker exited ({process.returncode}); restarting[/]"
                        )
                        stack.start_worker(name)
                time.sleep(1)
        except KeyboardInterrupt:
            render.console.print("\nstopping…")
    render.console.print("stopped: workers and redis-server are down.")


@app.command()
def worker(
    service: str = typer.Argument(..., help="planner | executor | escalation"),
    concurrency: int = typer.Option(
        0, help="Pool size (default: TETHER_PLANNER_CONCURRENCY or TETHER_WORKER_CONCURRENCY)"
    ),
    pool: str = typer.Option(
        "", help="Celery pool (default: TETHER_PLANNER_POOL or TETHER_WORKER_POOL)"
    ),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run one service's Celery worker; start as many as you like to scale out."""
    if service not in SERVICES:
        raise typer.BadParameter(
            f"unknown service {service!r}; choose one of {', '.join(SERVICES)}"
        )
    settings = get_settings()
    if service == "escalation":
        operators.check(settings)
    planner = service == "planner"
    queue = {
        "planner": "tether.plan",
        "executor": "tether.tools",
        "escalation": "tether.escalations",
    }[service]
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        f"services.{service}.worker",
        "worker",
        "-Q",
        queue,
        "-n",
        f"{service}-{os.getpid()}@{socket.gethostname()}",
        "--pool",
        pool or (settings.planner_pool if planner else settings.worker_pool),
        "--concurrency",
        str(
            concurrency
            or (settings.planner_concurrency if planner else settings.worker_concurrency)
        ),
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]
    if settings.metrics_port:
        # Prefork children each count in their own process; the files let /metrics sum them.
        # Set before the worker imports prometheus_client, which reads it at import.
        metrics.prepare_multiproc_dir(service, settings.metrics_port)
    os.execv(sys.executable, argv)


@app.command()
def health(
    service: str = typer.Argument(..., help="planner | executor | escalation"),
    any_host: bool = typer.Option(
        False, "--any-host", help="Accept a worker of SERVICE on any host, not only this one"
    ),
    timeout: float = typer.Option(5.0, help="Seconds to wait for Redis and for the ping"),
) -> None:
    """Exit 0 if a SERVICE worker on this host answers a ping and Redis answers; 1 otherwise.

    For container healthchecks and Kubernetes probes; prints the reason when unhealthy.
    """
    problems, nodes = health_check.check(
        service, get_settings(), host=None if any_host else "", timeout_s=timeout
    )
    if problems:
        for problem in problems:
            render.console.print(f"[red]unhealthy:[/] {escape(problem)}")
        raise typer.Exit(1)
    render.console.print(f"healthy: {', '.join(nodes)}")


@app.command()
def submit(
    agent: str,
    input: str,
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the run until it ends"),
    event_id: str = typer.Option("", help="Idempotency key (default: a new one)"),
    max_steps: int = typer.Option(0, help="Tighten the agent's step budget"),
    max_tool_calls: int = typer.Option(-1, help="Tighten the agent's tool-call budget"),
    max_cost_usd: float = typer.Option(0.0, help="Tighten the agent's cost budget"),
    timeout: float = typer.Option(300.0, help="Seconds to wait with --wait"),
    thread: str = typer.Option("", "--thread", help="Run it on this conversation thread"),
    metadata: list[str] = typer.Option(
        [], "--meta", help="KEY=VALUE for the event's metadata (e.g. customer_id=c-1)"
    ),
) -> None:
    """Publish a task for AGENT; with --wait, show its progress live.

    Exit 1 unless it succeeds, 2 if the event was rejected (its run never exists), 3 on timeout.
    """
    budget = BudgetLimits(
        max_steps=max_steps or None,
        max_tool_calls=max_tool_calls if max_tool_calls >= 0 else None,
        max_cost_usd=max_cost_usd or None,
    )
    # Chosen here rather than by client.submit: --wait looks the refusal up by event id.
    event_id = event_id or uuid.uuid4().hex
    meta = dict(item.split("=", 1) for item in metadata if "=" in item)
    run_id = client.submit(
        agent, input, event_id=event_id, budget=budget, metadata=meta, thread_id=thread or None
    )
    render.console.print(f"submitted {run_id}")
    if wait:
        state = follow(run_id, timeout, event_id=event_id)
        raise typer.Exit(0 if state.status == "succeeded" else 1)


def main() -> None:
    try:
        app()
    except TetherError as exc:
        render.console.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
