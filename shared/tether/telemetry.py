"""Logs (structlog), metrics (prometheus-client) and error reporting (Sentry)."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from tether.config import Settings

log = structlog.get_logger("tether")

RUNS_FINISHED = Counter(
    "tether_runs_finished_total", "Runs that reached a terminal status", ["agent", "status"]
)
STEPS = Counter("tether_planner_steps_total", "Planning steps committed", ["agent"])
ERRORS = Counter("tether_errors_total", "Failures by category", ["agent", "category"])
TOKENS = Counter("tether_model_tokens_total", "Model tokens used", ["agent", "model"])
COST = Counter("tether_model_cost_usd_total", "Model cost in USD", ["agent", "model"])
MODEL_LATENCY = Histogram(
    "tether_model_latency_seconds",
    "Model call latency",
    ["agent", "model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
TOOL_LATENCY = Histogram(
    "tether_tool_latency_seconds",
    "Tool call latency",
    ["agent", "tool"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
RUN_STEPS = Histogram(
    "tether_run_steps",
    "Planning steps per finished run",
    ["agent", "status"],
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55),
)


def serve_metrics(port: int) -> None:
    """Expose /metrics; with prefork pools the children write to PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(port, addr="0.0.0.0", registry=registry)
    else:
        start_http_server(port, addr="0.0.0.0")


def configure(settings: Settings, service: str) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    if settings.sentry_dsn:
        import sentry_sdk
        from sentry_sdk.integrations.celery import CeleryIntegration

        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            integrations=[CeleryIntegration()],
            server_name=service,
            traces_sample_rate=0.0,
        )
