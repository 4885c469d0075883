"""Logs: structlog JSON lines (or console lines), redacted, bound to the task at hand.

Metrics live in tether.observability.metrics, error reports in tether.observability.sentry; ``configure``
sets up logging, redaction and Sentry for a service at start.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from tether.config import Settings
from tether.observability import redact, sentry

log = structlog.get_logger("tether")


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no API key or configured secret pattern reaches a log line."""
    redacted: MutableMapping[str, Any] = redact.redact(event_dict)
    return redacted


def configure(settings: Settings, service: str) -> None:
    """Logs, redaction and Sentry for ``service``; every line is bound to the service."""
    redact.configure(settings)
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    # Celery's and the libraries' stdlib records get the same context, redaction and
    # format, so with TETHER_LOG_JSON every line a service writes is one JSON object.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A traceback becomes data (JSON) or text (console) before redaction reads it; the
    # console renderer fails on one turned into a list (every log.exception would raise).
    tracebacks: structlog.types.Processor = (
        structlog.processors.dict_tracebacks
        if settings.log_json
        else structlog.processors.format_exc_info
    )
    structlog.configure(
        processors=[*shared, tracebacks, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    sentry.init(settings, service)
