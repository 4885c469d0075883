"""Real workers on a Redis of their own: every service's /metrics, Sentry, logs and redaction.

A success (its event published twice), a failure whose error quotes the API
key, a budget exhaustion and an escalation go through the three services;
then each service's /metrics is scraped over HTTP and read for exact values.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tests.observability_agents import API_KEY
from tether.celery_app import ESCALATIONS_QUEUE, PLAN_QUEUE, TOOLS_QUEUE
from tether.config import Settings
from tether.devstack import DevStack
from tether.messages import TaskEvent
from tether.runtime import Runtime
from tether.store import run_id_for
from tether.testing.sentry_server import SentryServer

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Series:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, SentryServer]]:
    logs = Path(tmp_path_factory.mktemp("obs-logs"))
    ports = {service: free_port() for service in ("planner", "executor", "escalation")}
    with SentryServer() as sentry:
        env = {
            "TETHER_MODEL_API_KEY": API_KEY,
            "SENTRY_DSN": sentry.dsn,
            "TETHER_LOG_JSON": "true",
        }
        with DevStack(
            agent_modules=["tests.observability_agents"],
            env=env,
            log_dir=logs,
            metrics_ports=ports,
        ) as stack:
            yield stack, sentry


def test_every_service_serves_exact_metrics_and_failures_reach_sentry_redacted(
    observed: tuple[DevStack, SentryServer],
) -> None:
    stack, sentry = observed
    rt = Runtime(Settings(redis_url=stack.redis_url))
    events = {
        agent: TaskEvent(event_id=f"evt-obs-{agent}", agent=agent, input="go")
        for agent in ("obs_ok", "obs_failing", "obs_looper", "obs_approver")
    }
    for event in events.values():
        rt.publish_event(event)
    rt.publish_event(events["obs_ok"])  # delivered twice: one run, counted once
    run = {agent: run_id_for(event.event_id) for agent, event in events.items()}

    wait_status(rt, run["obs_ok"], "succeeded", 60)
    wait_status(rt, run["obs_failing"], "failed", 60)
    wait_status(rt, run["obs_looper"], "budget_exhausted", 60)
    wait_status(rt, run["obs_approver"], "waiting_human", 60)
    pending_escalation(rt, run["obs_approver"], 60)

    planner = scrape(stack.metrics_ports["planner"])
    executor = scrape(stack.metrics_ports["executor"])

    def escalation_scraped() -> bool:
        # The escalation's commit comes before its counter moves.
        series = scrape(stack.metrics_ports["escalation"])
        return bool(
            value(
                series,
                "tether_escalations_opened_total",
                agent="obs_approver",
                kind="approval_required",
            )
        )

    wait_for(escalation_scraped, 20, "the escalation's counter")
    escalation = scrape(stack.metrics_ports["escalation"])

    # planner: runs, steps, tokens, errors, budget exhaustion ----------------------------
    for agent in run:
        assert value(planner, "tether_runs_started_total", agent=agent, version="v1") == 1
    for agent, status in (
        ("obs_ok", "succeeded"),
        ("obs_failing", "failed"),
        ("obs_looper", "budget_exhausted"),
    ):
        labels = {"agent": agent, "version": "v1", "status": status}
        assert value(planner, "tether_runs_finished_total", **labels) == 1
        assert value(planner, "tether_run_duration_seconds_count", **labels) == 1
    assert (
        value(
            planner,
            "tether_runs_finished_total",
            agent="obs_approver",
            version="v1",
            status="succeeded",
        )
        is None
    )
    ok = {"agent": "obs_ok", "version": "v1", "status": "succeeded"}
    assert value(planner, "tether_run_steps_sum", **ok) == 2
    assert value(planner, "tether_run_tool_calls_sum", **ok) == 1
    steps = {"obs_ok": 2, "obs_looper": 1, "obs_approver": 1}
    for agent, count in steps.items():
        assert value(planner, "tether_planner_steps_total", agent=agent, version="v1") == count
    assert value(planner, "tether_planner_steps_total", agent="obs_failing", version="v1") is None
    # The event was published twice: both deliveries may have called the model for a
    # step before one commit won. The metric, like the budget, counts each step once.
    per_step = {
        e.step: e.data["input_tokens"] + e.data["output_tokens"]
        for _, e in rt.store.trace(run["obs_ok"])
        if e.kind == "model_call"
    }
    ok_tokens = sum(per_step.values())
    assert ok_tokens > 0
    assert (
        value(
            planner,
            "tether_model_tokens_total",
            agent="obs_ok",
            version="v1",
            model="scripted:obs_ok",
        )
        == ok_tokens
    )
    assert (
        value(
            planner, "tether_model_latency_seconds_count", agent="obs_ok", model="scripted:obs_ok"
        )
        == 2
    )
    assert (
        value(
            planner,
            "tether_errors_total",
            agent="obs_failing",
            category="model_permanent",
            source="run",
        )
        == 1
    )
    assert value(planner, "tether_budget_exhausted_total", agent="obs_looper", limit="steps") == 1
    # Every plan message is observed: 5 events (one twice) and 2 observations, plus whatever
    # the duplicate event re-sent (its action again, so maybe one more observation).
    plan_waits = value(planner, "tether_queue_wait_seconds_count", queue=PLAN_QUEUE) or 0
    assert 7 <= plan_waits <= 8
    assert 0 <= (value(planner, "tether_queue_wait_seconds_sum", queue=PLAN_QUEUE) or 0) < 30
    # The Redis figures are served by the escalation service alone.
    assert value(planner, "tether_escalations_pending") is None

    # executor: tool calls --------------------------------------------------------------
    for agent in ("obs_ok", "obs_looper"):
        assert (
            value(executor, "tether_tool_calls_total", agent=agent, tool="obs_add", outcome="ok")
            == 1
        )
        assert (
            value(executor, "tether_tool_latency_seconds_count", agent=agent, tool="obs_add") == 1
        )
    # Two actions, and maybe the one the duplicate event re-sent.
    assert 2 <= (value(executor, "tether_queue_wait_seconds_count", queue=TOOLS_QUEUE) or 0) <= 3

    # escalation: escalations and the Redis figures ---------------------------------------
    assert (
        value(
            escalation,
            "tether_escalations_opened_total",
            agent="obs_approver",
            kind="approval_required",
        )
        == 1
    )
    assert value(escalation, "tether_queue_wait_seconds_count", queue=ESCALATIONS_QUEUE) == 1
    assert value(escalation, "tether_escalations_pending") == 1
    oldest = value(escalation, "tether_escalation_oldest_pending_age_seconds")
    assert oldest is not None and 0 < oldest < 120
    for queue in (PLAN_QUEUE, TOOLS_QUEUE, ESCALATIONS_QUEUE):
        assert value(escalation, "tether_queue_depth", queue=queue) == 0
        assert value(escalation, "tether_queue_oldest_message_age_seconds", queue=queue) == 0

    # Sentry: the failed run, tagged, with no secret ------------------------------------------
    reports = [
        e
        for e in sentry.wait_for_events(1)
        if e.get("tags", {}).get("run_id") == run["obs_failing"]
    ]
    assert len(reports) == 1
    tags = reports[0]["tags"]
    assert (tags["agent"], tags["agent_version"], tags["step"], tags["error_category"]) == (
        "obs_failing",
        "v1",
        "0",
        "model_permanent",
    )
    assert tags["service"] == "planner"
    assert all(API_KEY not in json.dumps(e) for e in sentry.events())

    # Event log and logs: the key is redacted --------------------------------------------------
    trace = rt.store.trace(run["obs_failing"])
    assert API_KEY not in json.dumps([e.model_dump(mode="json") for _, e in trace])
    (ended,) = [e for _, e in trace if e.kind == "run_finished"]
    assert ended.data["error"]["message"].startswith(
        "401 Unauthorized: invalid api key [redacted] (Authorization: [redacted])"
    )
    assert stack.log_dir is not None
    lines = [
        json.loads(line)
        for path in stack.log_dir.glob("*.log")
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert all(API_KEY not in json.dumps(line) for line in lines)
    finished = [
        line
        for line in lines
        if line.get("event") == "run_finished" and line.get("run_id") == run["obs_failing"]
    ]
    assert len(finished) == 1
    assert (finished[0]["service"], finished[0]["agent"], finished[0]["step"]) == (
        "planner",
        "obs_failing",
        0,
    )
    tool_lines = [
        line for line in lines if line.get("service") == "executor" and line.get("action_id")
    ]
    assert tool_lines, "no executor line bound to its action"
