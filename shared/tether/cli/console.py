"""`tether console`: serve the HTTP API and the web console."""

from __future__ import annotations

import typer

from tether.cli import render


def console(
    host: str = typer.Option(
        "", "--host", help="Address to bind (default TETHER_CONSOLE_HOST, 127.0.0.1)"
    ),
    port: int = typer.Option(
        0, "--port", help="Port to serve on (default TETHER_CONSOLE_PORT, 8680)", show_default=False
    ),
    anonymous: bool = typer.Option(
        False,
        "--anonymous",
        help="Let requests without credentials in as an admin: local development only, "
        "refused unless bound to a loopback address",
    ),
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /openapi.json) and the console."""
    # Imported here: `tether --help` loads no web stack.
    import uvicorn

    from tether.api.service import service_app
    from tether.config import get_settings
    from tether.errors import ConfigError

    settings = get_settings()
    bind = host or settings.console_host
    serve_port = port or settings.console_port
    try:
        app = service_app(anonymous=anonymous, host=bind)
    except ConfigError as exc:
        render.console.print(f"[red]tether console:[/] {exc}")
        raise typer.Exit(2) from None
    shown = "localhost" if bind in ("127.0.0.1", "::1") else bind
    render.console.print(f"console and HTTP API on http://{shown}:{serve_port}/", markup=False)
    uvicorn.run(app, host=bind, port=serve_port, log_level="info")


def serve_in_background(redis_url: str, agent_modules: list[str], port: int) -> str:
    """Serve the console for `tether dev` on a daemon thread, anonymous on loopback;
    its URL. It stops with the process."""
    import threading

    import uvicorn

    from tether.api.app import create_app
    from tether.config import get_settings
    from tether.runtime import Runtime

    settings = get_settings().model_copy(
        update={"redis_url": redis_url, "agent_modules": agent_modules}
    )
    app = create_app(Runtime(settings), anonymous=True, host="127.0.0.1")
    # The peer is the socket's: anonymous use must never take it from a forwarding header.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="tether-console", daemon=True).start()
    return f"http://localhost:{port}/"
