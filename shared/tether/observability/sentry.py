"""Error reports to Sentry: failed runs, dead letters, unhandled task exceptions.

Active only with SENTRY_DSN (or TETHER_SENTRY_DSN) set. Every report carries
the run, agent, agent version, step and error category as tags (taken from
the task's log context when the caller has no run at hand), and nothing
secret: ``before_send`` passes the whole event through the redactor, so API
keys, bearer tokens, TETHER_REDACT_PATTERNS matches and tool arguments that
match them never leave the process. Nor does what a task carries or a frame
holds: a task's arguments (an event's input, a tool's arguments) and local
variables (a model's reply before its guardrails ran) are dropped, since an
agent's guardrails, not this redactor, know what in them is personal.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk
import structlog
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.types import Event, Hint

from tether.config import Settings
from tether.observability.redact import get_redactor
from tether.store.state import RunState

# Log-context keys (tether.worker.task_context) that become tags on every report.
TAG_KEYS = ("service", "run_id", "agent", "agent_version", "step", "action_id", "error_category")


def init(settings: Settings, service: str) -> bool:
    """Start reporting if a DSN is configured; False if none is."""
    if not settings.sentry_dsn:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        integrations=[CeleryIntegration()],
        server_name=service,
        environment=settings.sentry_environment,
        before_send=before_send,
        # Also stripped in before_send, which the tests exercise without this init.
        data_collection={
            "queues": False,
            "stack_frame_variables": False,
            "gen_ai": {"inputs": False, "outputs": False},
            "http_bodies": [],
        },
    )
    return True


def before_send(event: Event, hint: Hint) -> Event | None:
    """Tag the event with the task's context, drop task arguments and frame variables,
    then redact every string in it."""
    job = (event.get("extra") or {}).get("celery-job")
    if isinstance(job, dict):
        job.pop("args", None)
        job.pop("kwargs", None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    tags: dict[str, Any] = dict(event.get("tags") or {})
    for key, value in structlog.contextvars.get_contextvars().items():
        if key in TAG_KEYS and key not in tags and value is not None:
            tags[key] = str(value)
    event["tags"] = tags
    redacted: Event = get_redactor().value(event)
    return redacted


def _report(message: str, tags: dict[str, Any]) -> None:
    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            if value is not None:
                scope.set_tag(key, str(value))
        scope.fingerprint = ["{{ default }}", str(tags.get("error_category", ""))]
        sentry_sdk.capture_message(message, level="error")


def report_run_failed(state: RunState) -> None:
    """A run ended ``failed``: one report, sent from its one winning terminal commit."""
    category = state.error.category if state.error else "unknown"
    _report(
        f"run failed ({category}): {state.error.message if state.error else 'no error recorded'}",
        {
            "run_id": state.run_id,
            "agent": state.agent,
            "agent_version": state.agent_version,
            "step": state.step,
            "error_category": category,
        },
    )


def report_dead_letter(task: str, reason: str, category: str, run_id: str | None) -> None:
    _report(
        f"dead letter from {task} ({category}): {reason}",
        {"task": task, "run_id": run_id, "error_category": category},
    )
