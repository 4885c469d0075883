"""The app factory: the HTTP API's routers over one Runtime, and the console if present.

``create_app(runtime)`` serves /v1/... (OpenAPI at /openapi.json), /healthz and
/readyz. No Swagger UI or ReDoc page: both load their scripts from a CDN, which on the
console's origin could act as a signed-in operator; any OpenAPI viewer reads the schema.
A request body over ``body_cap(settings)`` is refused (413) before it is read.
``anonymous=True`` lets requests without credentials in as an admin: only for local
development, so the factory refuses it unless ``host`` is a loopback address (and then
answers only requests from this machine, tether.api.auth). The console's pages
(tether.console.pages, where installed) are included unless ``include_console=False``.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tether.agent.definition import load_agent_modules
from tether.api import streams
from tether.api.routes import escalations, events, health, operations, runs
from tether.config import Settings
from tether.errors import ConfigError, TetherError, UnknownAgentError, UnknownRunError
from tether.runtime import Runtime

CONSOLE_MODULE = "tether.console.pages"
# Room for an event at TETHER_MAX_EVENT_BYTES as a publisher may write it (JSON escapes
# such as \u00e9 take up to three times the bytes the event counts).
BODY_CAP_FACTOR = 4
BODY_CAP_SLACK = 64 * 1024


def body_cap(settings: Settings) -> int:
    """The largest request body any route reads, in bytes."""
    return settings.max_event_bytes * BODY_CAP_FACTOR + BODY_CAP_SLACK


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    runtime: Runtime,
    *,
    anonymous: bool = False,
    host: str = "127.0.0.1",
    include_console: bool = True,
) -> FastAPI:
    """The ASGI app. ``host`` is where it will be bound, checked when ``anonymous``."""
    if anonymous and not is_loopback(host):
        raise ConfigError(
            f"anonymous access is for local development only: bind to a loopback address, "
            f"not {host!r}, or configure TETHER_OPERATORS_FILE and drop anonymous access"
        )
    # The agents the planner knows, so an event for any other is refused at once.
    load_agent_modules(runtime.settings.agent_modules)
    app = FastAPI(
        lifespan=_lifespan,
        title="Tether",
        summary="Publish tasks to agents, follow their runs, decide their escalations.",
        version="1",
        docs_url=None,
        redoc_url=None,
        max_body_size=body_cap(runtime.settings),
    )
    app.state.runtime = runtime
    app.state.anonymous = anonymous
    for router in (
        health.router,
        events.router,
        runs.router,
        escalations.router,
        operations.router,
    ):
        app.include_router(router)
    _handle_errors(app)
    if include_console:
        _include_console(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await streams.close(app)


def _include_console(app: FastAPI) -> None:
    try:
        pages = importlib.import_module(CONSOLE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CONSOLE_MODULE:
            raise
        return
    include = getattr(pages, "include", None)
    if callable(include):
        include(app)
    else:
        app.include_router(pages.router)


def _handle_errors(app: FastAPI) -> None:
    def reply(code: int, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    async def unknown(_: Request, exc: Exception) -> JSONResponse:
        return reply(status.HTTP_404_NOT_FOUND, exc)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        errors: list[Any] = exc.errors(include_url=False, include_context=False)
        return JSONResponse(status_code=HTTPStatus.UNPROCESSABLE_ENTITY, content={"detail": errors})

    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return reply(status.HTTP_503_SERVICE_UNAVAILABLE, exc)

    async def tether_error(_: Request, exc: Exception) -> JSONResponse:
        return reply(status.HTTP_409_CONFLICT, exc)

    app.add_exception_handler(UnknownRunError, unknown)
    app.add_exception_handler(UnknownAgentError, unknown)
    app.add_exception_handler(ValidationError, invalid)
    app.add_exception_handler(redis.ConnectionError, redis_down)
    app.add_exception_handler(TetherError, tether_error)
