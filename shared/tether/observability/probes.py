"""The metrics port also answers Kubernetes' HTTP probes: /healthz and /readyz.

An exec probe starts a Python process that imports Celery (about a second of
CPU) every few seconds in every pod; these two routes are answered by the
thread that already serves /metrics, in the worker's own process.

- /healthz: 200 while the process can answer at all (liveness).
- /readyz: 200 when the readiness check finds no problem, 503 with the problems
  otherwise (readiness: the pod leaves the Service, but is not restarted).

Everything else is the Prometheus exposition, as prometheus_client serves it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

HEALTHZ = "/healthz"
READYZ = "/readyz"

# The problems that keep a process from being ready; none means ready.
ReadinessCheck = Callable[[], list[str]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _always_ready() -> list[str]:
    return []


def probe_app(registry: CollectorRegistry, readiness: ReadinessCheck | None = None) -> WSGIApp:
    """The /metrics app with /healthz and /readyz in front of it."""
    metrics_app = make_wsgi_app(registry)
    check = readiness or _always_ready

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == HEALTHZ:
            return _text(start_response, "200 OK", "alive\n")
        if path == READYZ:
            try:
                problems = check()
            except Exception as exc:  # a broken check must read as not ready, not crash
                problems = [f"the readiness check failed: {exc!r}"]
            if problems:
                body = "not ready: " + "; ".join(problems) + "\n"
                return _text(start_response, "503 Service Unavailable", body)
            return _text(start_response, "200 OK", "ready\n")
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    return app


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # A probe every few seconds would drown the worker's own log lines.
        return


def start_server(
    port: int,
    *,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry,
    readiness: ReadinessCheck | None = None,
) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on ``port`` from a daemon thread; returns the server."""
    server = make_server(
        addr,
        port,
        probe_app(registry, readiness),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(
        target=server.serve_forever, daemon=True, name=f"tether-metrics-{port}"
    )
    thread.start()
    return server
