"""The `tether` command: run the stack, submit work, inspect runs, decide escalations."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import typer

from tether.cli import render
from tether.cli.connection import (
    DEV_ENV,
    agent_modules_importable,
    load_dev_env,
    runtime,
    write_dev_env,
)
from tether.cli.console import console as console_command
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
from tether.cli.terminal_text import escape
from tether.cli.top import top as top_command
from tether.errors import TetherError

# Everything past typer and rich is imported inside the command that needs it:
# `tether --help` imports no Redis client, Celery, Sentry or agent code
# (tests/unit/test_cli_help.py).
SERVICES = ("planner", "executor", "escalation")
DEV_REDIS_PORT = 6399

app = typer.Typer(
    help="Tether: production runtime for LLM agents.", no_args_is_help=True, rich_markup_mode=None
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"tether {version('tether')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit"
    ),
) -> None:
    """Tether: production runtime for LLM agents."""


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
app.command("console")(console_command)
runs_app.command("export")(export_command)


@app.command()
def dev(
    agents: list[str] = typer.Option(
        ["examples.support_desk.agent"], "--agents", "-a", help="Agent modules to load"
    ),
    concurrency: int = typer.Option(2, help="Worker processes per service"),
    redis_port: int = typer.Option(
        DEV_REDIS_PORT, "--redis-port", help="Port of the Redis this command starts (0: any free)"
    ),
    flower_port: int = typer.Option(0, help="Also start Flower on this port (0: off)"),
    console_port: int = typer.Option(
        8680, "--console-port", help="Serve the console and HTTP API on this port (0: off)"
    ),
) -> None:
    """Start a Redis this command owns and the three services; Ctrl-C stops all of it.

    Writes .tether/dev.env (TETHER_REDIS_URL, TETHER_AGENT_MODULES): `tether` commands run
    from this folder read it, in any shell, for what the environment does not set.
    """
    from tether.config import get_settings
    from tether.dev.lifetime import interrupt_on_terminate
    from tether.dev.redis_server import RedisServer
    from tether.dev.stack import DevStack

    # Checked here: a worker refusing its settings would only be restarted, again and again.
    get_settings()
    stack = DevStack(
        agent_modules=agents,
        concurrency=concurrency,
        log_dir=Path(".tether/logs"),
        flower_port=flower_port or None,
        redis=RedisServer(port=redis_port or None),
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
        if console_port:
            from tether.cli.console import serve_in_background

            url = serve_in_background(stack.redis_url, agents, console_port)
            render.console.print(f"[bold]console[/]    {url} (no sign-in: loopback only)")
        exports = write_dev_env(
            {"TETHER_REDIS_URL": stack.redis_url, "TETHER_AGENT_MODULES": json.dumps(agents)}
        )
        render.console.print(
            f"\nwrote {DEV_ENV}: tether commands run from this folder use this stack.\n"
            "Elsewhere, or for your own code:\n"
            + "".join(f"  {escape(line)}\n" for line in exports)
            + "  tether submit support_desk 'Where is order 1001?' --wait\n"
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
        finally:
            DEV_ENV.unlink(missing_ok=True)
    render.console.print(f"stopped: workers and redis-server are down; {DEV_ENV} removed.")


@app.command()
def worker(
    service: str = typer.Argument(..., help="planner | executor | escalation"),
    concurrency: int = typer.Option(
        0,
        help="Pool size (default: TETHER_PLANNER_CONCURRENCY or TETHER_WORKER_CONCURRENCY)",
        show_default=False,
    ),
    pool: str = typer.Option(
        "", help="Celery pool (default: TETHER_PLANNER_POOL or TETHER_WORKER_POOL)"
    ),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run one service's Celery worker; start as many as you like to scale out."""
    from tether.config import get_settings
    from tether.escalation import operators
    from tether.observability import metrics

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
        "tether.worker.launch",
        "-A",
        f"tether.{service}.worker",
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

    For a person's shell or a supervisor's command check (compose and Kubernetes ask the
    worker's /readyz instead); prints the reason when unhealthy.
    """
    from tether.config import get_settings
    from tether.worker import health as health_check

    problems, nodes = health_check.check(
        service, get_settings(), host=None if any_host else "", timeout_s=timeout
    )
    if problems:
        for problem in problems:
            render.console.print(f"[red]unhealthy:[/] {escape(problem)}")
        raise typer.Exit(1)
    render.console.print(f"healthy: {', '.join(nodes)}")


def parse_meta(items: list[str]) -> dict[str, str]:
    """--meta KEY=VALUE items as a dict; anything else is refused (exit 2), never dropped."""
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"{item!r} is not KEY=VALUE (e.g. --meta customer_id=c-1)", param_hint="--meta"
            )
        meta[key.strip()] = value
    return meta


def check_agent(agent: str) -> None:
    """Refuse an agent the workers' modules (TETHER_AGENT_MODULES) do not declare, before
    publishing: the planner would only record a rejection. Unchecked without modules set."""
    from tether.config import get_settings

    modules = get_settings().agent_modules
    if not modules or agent.startswith("eval:"):
        return
    from tether.agent.definition import load_agent_modules

    agent_modules_importable()
    known = sorted(load_agent_modules(modules))
    if agent not in known:
        raise typer.BadParameter(
            f"no agent {agent!r} in TETHER_AGENT_MODULES ({', '.join(modules)}); "
            f"known agents: {', '.join(known) or 'none'}",
            param_hint="AGENT",
        )


@app.command()
def submit(
    agent: str,
    input: str,
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the run until it ends"),
    event_id: str = typer.Option("", help="Idempotency key (default: a new one)"),
    max_steps: int | None = typer.Option(
        None, min=1, help="Tighten the agent's step budget (default: the agent's)"
    ),
    max_tool_calls: int | None = typer.Option(
        None, min=0, help="Tighten the agent's tool-call budget (default: the agent's)"
    ),
    max_cost_usd: float | None = typer.Option(
        None, min=0, help="Tighten the agent's cost budget (default: the agent's)"
    ),
    timeout: float = typer.Option(300.0, help="Seconds to wait with --wait"),
    thread: str = typer.Option("", "--thread", help="Run it on this conversation thread"),
    metadata: list[str] = typer.Option(
        [], "--meta", help="KEY=VALUE for the event's metadata (e.g. customer_id=c-1); repeatable"
    ),
    priority: str = typer.Option(
        "interactive",
        "--priority",
        help="interactive or batch: which runs start first while runs wait for capacity",
    ),
) -> None:
    """Publish a task for AGENT and print its event id and run id; with --wait, show its
    progress live.

    Exit 2 if it is refused before publishing (unknown agent, malformed --meta) or the event
    was rejected; with --wait, exit 1 unless it succeeds, 3 on timeout.
    """
    meta = parse_meta(metadata)
    check_agent(agent)
    from tether import client
    from tether.transport.wire import BudgetLimits, Priority

    if priority not in Priority.__members__:
        raise typer.BadParameter(
            f"{priority!r} is no priority; use interactive or batch", param_hint="--priority"
        )
    budget = BudgetLimits(
        max_steps=max_steps, max_tool_calls=max_tool_calls, max_cost_usd=max_cost_usd
    )
    # Chosen here rather than by client.submit: --wait looks the refusal up by event id.
    event_id = event_id or uuid.uuid4().hex
    run_id = client.submit(
        agent,
        input,
        event_id=event_id,
        budget=budget,
        metadata=meta,
        thread_id=thread or None,
        priority=Priority(priority),
        runtime=runtime(),
    )
    render.console.print(f"submitted event {event_id}: run {run_id}")
    if wait:
        state = follow(run_id, timeout, event_id=event_id, panel=True)
        raise typer.Exit(0 if state.status == "succeeded" else 1)


def main() -> None:
    load_dev_env()
    try:
        app()
    except TetherError as exc:
        # One line, never wrapped: it is what a script or a person greps for.
        print(f"error: {exc}")
        sys.exit(2)
    except Exception as exc:
        # A Redis that went away mid-command: one line, not a traceback.
        from redis.exceptions import RedisError

        if not isinstance(exc, RedisError):
            raise
        from tether.cli.connection import redis_shown
        from tether.config import get_settings

        url = redis_shown(get_settings().redis_url)
        print(f"error: Redis at {url}: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
