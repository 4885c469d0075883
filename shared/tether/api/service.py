"""The console service: the HTTP API and console over this process's settings.

What ``tether console`` serves, and what ``uvicorn services.console.app:app`` loads.
"""

from __future__ import annotations

from fastapi import FastAPI

from tether.api.app import create_app
from tether.runtime import get_runtime


def service_app(*, anonymous: bool = False, host: str | None = None) -> FastAPI:
    """The app over the process's runtime (TETHER_* settings), bound to ``host``
    (default TETHER_CONSOLE_HOST)."""
    runtime = get_runtime()
    return create_app(runtime, anonymous=anonymous, host=host or runtime.settings.console_host)
