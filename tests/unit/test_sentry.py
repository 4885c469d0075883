"""Sentry reports, received by a local HTTP endpoint: tagged with the run, and nothing secret."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
import structlog

from tests.observability_agents import API_KEY
from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.observability import redact, sentry
from tether.observability.redact import REDACTED
from tether.runtime import Runtime
from tether.testing.sentry_server import SentryServer
from tether.transport.wire import ErrorCategory
from tether.worker import deadletters


@pytest.fixture
def receiver() -> Iterator[SentryServer]:
    load_agent_modules(["tests.observability_agents"])
    redact.configure(Settings(model_api_key=API_KEY))
    structlog.contextvars.clear_contextvars()
    with SentryServer() as server:
        # tether.observability.sentry.init's options, minus the Celery integration, which would patch
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


def test_a_tasks_arguments_and_frame_variables_never_leave_the_process() -> None:
    card = "4111 1111 1111 1111"
    event: Any = {
        "extra": {
            "celery-job": {
                "task_name": "tether.plan.start",
                "args": [],
                "kwargs": {"event": {"input": f"refund card {card}"}},
            }
        },
        "exception": {
            "values": [
                {
                    "type": "RuntimeError",
                    "stacktrace": {
                        "frames": [{"function": "decide", "vars": {"content": f"card {card}"}}]
                    },
                }
            ]
        },
    }
    sent = sentry.before_send(event, {})
    assert sent is not None
    assert card not in json.dumps(sent)
    assert sent["extra"]["celery-job"] == {"task_name": "tether.plan.start"}
    assert sent["exception"]["values"][0]["stacktrace"]["frames"] == [{"function": "decide"}]


def test_init_collects_no_task_arguments_frame_variables_or_model_text() -> None:
    # In a child process: the Celery integration would patch Celery for the whole suite.
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sentry_sdk\n"
            "from tether.config import Settings\n"
            "from tether.observability import sentry\n"
            "assert sentry.init(Settings(sentry_dsn='http://k@127.0.0.1:9/1'), 'planner')\n"
            "print(json.dumps(sentry_sdk.get_client().options['data_collection']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    collected = json.loads(shown.stdout.splitlines()[-1])
    assert collected["queues"] is False and collected["stack_frame_variables"] is False
    assert collected["gen_ai"] == {"inputs": False, "outputs": False}
    assert collected["http_bodies"] == []
