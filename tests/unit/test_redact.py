"""Secrets never reach the logs or the event log: the API key, key shapes, configured patterns."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog
from celery import Task

from tests.observability_agents import API_KEY
from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.errors import ConfigError
from tether.observability import logs as telemetry
from tether.observability import redact
from tether.observability.redact import REDACTED, Redactor
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunStatus
from tether.worker import task_context


@pytest.fixture(autouse=True)
def _redactor() -> Iterator[None]:
    load_agent_modules(["tests.observability_agents"])
    redact.configure(Settings(model_api_key=API_KEY, redact_patterns=[r"acct-\d{6}"]))
    yield
    redact.configure(Settings())


def test_the_redactor_covers_the_key_key_shapes_bearer_tokens_and_configured_patterns() -> None:
    redactor = Redactor(literals=[API_KEY, "unset"], patterns=[r"acct-\d{6}"])
    data = {
        "note": f"key={API_KEY}",
        "nested": [
            ("Authorization: Bearer abc.DEF-123_xyz",),
            {"k": "sk-proj-abcdefghijklmnop1234"},
        ],
        "account": "acct-123456 and acct-12",
        "count": 3,
        "plain": "nothing unset here",
    }
    assert redactor.value(data) == {
        "note": f"key={REDACTED}",
        "nested": [(f"Authorization: {REDACTED}",), {"k": REDACTED}],
        "account": f"{REDACTED} and acct-12",
        "count": 3,
        # A placeholder key value is no secret: ordinary words stay.
        "plain": "nothing unset here",
    }


def test_a_redact_pattern_that_is_no_regex_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="TETHER_REDACT_PATTERNS"):
        Settings(redact_patterns=["acct-(\\d"])


def test_the_event_log_holds_no_api_key(runtime: Runtime) -> None:
    run_id = planner.start(runtime, {"event_id": "evt-r1", "agent": "obs_failing", "input": "go"})
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.failed
    raw = json.dumps(runtime.store.client.xrange(keys.run_log(run_id)))
    assert API_KEY not in raw
    events = {e.kind: e.data for _, e in runtime.store.log.read(run_id)}
    assert events["model_failed"]["error"] == (
        f"401 Unauthorized: invalid api key {REDACTED} (Authorization: {REDACTED})"
    )
    assert REDACTED in events["run_finished"]["error"]["message"]
    assert API_KEY not in events["run_finished"]["error"]["message"]


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Logging as a service sets it up; configured by the test itself, where capsys's
    stderr is the one the test writes to."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog.contextvars.clear_contextvars()
    yield capsys
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_log_lines_are_json_bound_to_the_task_and_redacted(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    telemetry.configure(
        Settings(log_json=True, model_api_key=API_KEY, redact_patterns=[r"acct-\d{6}"]), "planner"
    )
    task = cast(
        Task, SimpleNamespace(name="tether.tools.execute", request=SimpleNamespace(retries=0))
    )
    action = {
        "action_id": "run_1:2:0",
        "run_id": "run_1",
        "step": 2,
        "agent": "obs_ok",
        "arguments": {"token": API_KEY},
    }
    task_context.begin(task, {"action": action})
    structlog.get_logger("t").error(
        "tool_failed", detail=f"endpoint said {API_KEY}", account="acct-654321"
    )
    logging.getLogger("celery.worker").warning("retrying with key %s", API_KEY)
    task_context.end()
    structlog.get_logger("t").info("idle")

    tool_line, celery_line, idle_line = lines(json_logs)
    assert {k: tool_line[k] for k in ("service", "run_id", "step", "action_id", "agent")} == {
        "service": "planner",
        "run_id": "run_1",
        "step": 2,
        "action_id": "run_1:2:0",
        "agent": "obs_ok",
    }
    assert tool_line["detail"] == f"endpoint said {REDACTED}"
    assert tool_line["account"] == REDACTED
    assert celery_line["event"] == f"retrying with key {REDACTED}"
    assert celery_line["run_id"] == "run_1"
    assert "run_id" not in idle_line  # cleared when the task ended
    assert idle_line["service"] == "planner"


def test_a_tasks_identifiers_are_read_from_whichever_message_it_carries() -> None:
    assert task_context.describe({"run_id": "r", "step": 3}) == {"run_id": "r", "step": 3}
    escalation = {
        "escalation_id": "esc_1",
        "run_id": "r",
        "agent": "payer",
        "action": {"action_id": "r:1:0", "step": 1},
    }
    assert task_context.describe({"escalation": escalation, "decision": {"by": "x"}}) == {
        "escalation_id": "esc_1",
        "run_id": "r",
        "agent": "payer",
        "action_id": "r:1:0",
        "step": 1,
    }


@pytest.mark.parametrize("as_json", [True, False])
def test_an_exception_is_logged_with_its_traceback_in_either_format(
    json_logs: pytest.CaptureFixture[str], as_json: bool
) -> None:
    telemetry.configure(Settings(log_json=as_json, model_api_key=API_KEY), "planner")
    try:
        raise ValueError(f"a corrupt payload near {API_KEY}")
    except ValueError:
        # It must not raise: a heartbeat thread logs its failures this way and goes on.
        structlog.get_logger("t").exception("consumer_heartbeat_recovery_failed")
    written = json_logs.readouterr().err
    assert "consumer_heartbeat_recovery_failed" in written
    assert "ValueError" in written and "a corrupt payload near" in written
    assert API_KEY not in written
