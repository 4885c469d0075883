"""`tether health SERVICE`: is a worker of that service alive, and is Redis reachable?

For a person's shell, or a supervisor that runs a command to check a worker;
compose's healthchecks and Kubernetes' probes ask the worker over HTTP instead
(/healthz, /readyz: tether.worker.readiness). A worker is named
``SERVICE-PID@HOST`` (`tether worker`), so by default the check pings the
workers of that service on this host: in a container, the one beside it.
"""

from __future__ import annotations

import fnmatch
import socket
from collections.abc import Iterable

import redis

from tether.config import Settings

SERVICES = ("planner", "executor", "escalation")


def node_pattern(service: str, host: str | None) -> str:
    """The glob that a worker's node name matches (see `tether worker`)."""
    return f"{service}-*@{host if host is not None else '*'}"


def matching_nodes(replies: Iterable[dict[str, object]], pattern: str) -> list[str]:
    """Node names in Celery ping replies ([{node: {"ok": "pong"}}, ...]) that match ``pattern``."""
    return sorted(node for reply in replies for node in reply if fnmatch.fnmatchcase(node, pattern))


def check(
    service: str,
    settings: Settings,
    *,
    host: str | None = "",
    timeout_s: float = 5.0,
) -> tuple[list[str], list[str]]:
    """(problems, nodes that answered). No problems means healthy.

    ``host`` "" is this host's name; None accepts a worker on any host.
    """
    if service not in SERVICES:
        return [f"unknown service {service!r}; choose one of {', '.join(SERVICES)}"], []
    if host == "":
        host = socket.gethostname()
    problems: list[str] = []
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        client.ping()
        client.close()
    except redis.RedisError as exc:
        problems.append(f"redis at {_safe(settings.redis_url)} did not answer: {exc}")
        # The worker ping goes through the broker, which is usually the same Redis.
        if not settings.broker_url:
            return problems, []
    # Imported here: Celery's import costs most of a probe's start-up.
    from tether.transport import celery_app

    app = celery_app.create_app(settings, name="tether-health")
    pattern = node_pattern(service, host)
    try:
        # A connection of its own, closed here: the app's pool is kombu's global
        # one for this broker URL, shared with every other app in the process.
        with app.connection_for_write() as connection:
            # Only matching workers answer (they match the glob themselves), and the
            # first answer ends the wait: a healthy probe takes milliseconds.
            replies = app.control.broadcast(
                "ping",
                reply=True,
                timeout=timeout_s,
                limit=1,
                pattern=pattern,
                matcher="glob",
                connection=connection,
            )
    except Exception as exc:  # kombu raises transport-specific errors
        problems.append(f"could not ping workers through the broker: {exc}")
        return problems, []
    nodes = matching_nodes(replies or [], pattern)
    if not nodes:
        problems.append(
            f"no {service} worker matching {pattern} answered a ping within {timeout_s:g} s"
        )
    return problems, nodes


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
