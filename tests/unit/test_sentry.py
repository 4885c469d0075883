"""Sentry reports, received by a local HTTP endpoint: tagged with the run, and nothing secret."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sentry_sdk
import structlog

from tests.observability_agents import API_KEY
from tether import deadletters, planner, redact, sentry
from tether.agents import load_agent_modules
from tether.config import Settings
from tether.messages import ErrorCategory
from tether.redact import REDACTED
from tether.runtime import Runtime
from tether.testing.sentry_server import SentryServer


@pytest.fixture
def receiver() -> Iterator[SentryServer]:
    load_agent_modules(["tests.observability_agents"])
    redact.configure(Settings(model_api_key=API_KEY))
    structlog.contextvars.clear_contextvars()
    with SentryServer() as server:
        # tether.sentry.init's options, minus the Celery integration, which would patch
        # Celery for the rest of the suite's process.
        sentry_sdk.init(
            dsn=server.dsn,
            default_integrations=False,
            before_send=sentry.before_send,
        )
        yield server
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
    redact.configure(Settings())


def test_a_failed_run_is_reported_once_with_its_tags_and_no_secret(
    runtime: Runtime, receiver: SentryServer
) -> None:
    run_id = planner.start(runtime, {"event_id": "evt-s1", "agent": "obs_failing", "input": "go"})
    assert run_id is not None
    planner.plan(runtime, run_id, 0)  # redelivered after the run ended: no second report
    sentry_sdk.flush()

    (event,) = receiver.wait_for_events(1)
    tags = event["tags"]
    assert {k: tags[k] for k in ("run_id", "agent", "agent_version", "step", "error_category")} == {
        "run_id": run_id,
        "agent": "obs_failing",
        "agent_version": "v1",
        "step": "0",
        "error_category": "model_permanent",
    }
    assert event["level"] == "error"
    text = json.dumps(event)
    assert API_KEY not in text
    message = event.get("logentry", {}).get("message") or event.get("message")
    assert message.startswith("run failed (model_permanent): 401 Unauthorized: invalid api key ")
    assert REDACTED in message


def test_a_dead_letter_is_reported_with_its_run(runtime: Runtime, receiver: SentryServer) -> None:
    kwargs = {"action": {"run_id": "run_dead", "arguments": {"password": API_KEY}}}
    reason = f"ValueError: bad credentials sk-live-abcdefghijklmnopqrstu for {API_KEY}"
    assert deadletters.record(
        runtime, "tether.tools.execute", kwargs, reason, ErrorCategory.internal, "msg-s2"
    )
    sentry_sdk.flush()

    (event,) = receiver.wait_for_events(1)
    assert event["tags"]["run_id"] == "run_dead"
    assert event["tags"]["error_category"] == "internal"
    assert event["tags"]["task"] == "tether.tools.execute"
    text = json.dumps(event)
    assert API_KEY not in text
    assert "sk-live-" not in text


def test_an_unhandled_exception_names_its_task_context_and_leaks_no_tool_argument(
    receiver: SentryServer,
) -> None:
    structlog.contextvars.bind_contextvars(
        service="executor", run_id="run_crash", step=4, action_id="run_crash:4:0", agent="obs_ok"
    )
    arguments = {"note": f"use {API_KEY}", "auth": "Bearer abcdefgh12345678"}
    try:
        raise RuntimeError(f"tool crashed on {arguments['note']}")
    except RuntimeError:
        sentry_sdk.capture_exception()
    finally:
        structlog.contextvars.clear_contextvars()
    sentry_sdk.flush()

    (event,) = receiver.wait_for_events(1)
    assert {k: event["tags"][k] for k in ("service", "run_id", "step", "action_id", "agent")} == {
        "service": "executor",
        "run_id": "run_crash",
        "step": "4",
        "action_id": "run_crash:4:0",
        "agent": "obs_ok",
    }
    text = json.dumps(event)
    assert API_KEY not in text
    assert "abcdefgh12345678" not in text
    assert f"tool crashed on use {REDACTED}" in text
