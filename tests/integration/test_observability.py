"""Real workers on a Redis of their own: issue 8's "done means", in one test.

A success (its event published twice), a failure whose error quotes the API
key, a budget exhaustion and an escalation go through the three services;
then each service's /metrics is scraped over HTTP and read for exact values,
Sentry, the logs and the event log are checked for the failure and the key.
The escalation is approved, feedback is given (one call retried), and the
escalation service's /metrics, the OTLP traces (one per run, the escalated one
across all three services) and `tether stats --json` are checked against the
runs. Last, the planner restarts as a second version of ``obs_ok`` that takes
more steps, and `tether stats --compare-to` flags the drift.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tests.observability_agents import API_KEY
from tests.stacks import started_stack
from tether import client
from tether.cli.main import app
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.observability.tracing import run_span_id, run_trace_id
from tether.runtime import Runtime
from tether.store.rollups import bucket_value, log_bucket
from tether.store.runs import run_id_for
from tether.store.state import RunState
from tether.testing.otlp_receiver import OTLPReceiver, ReceivedSpan
from tether.testing.sentry_server import SentryServer
from tether.transport.celery_app import ESCALATIONS_QUEUE, PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import TaskEvent, Verdict

SERVICES = {"tether-planner", "tether-executor", "tether-escalation"}

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


def complete_trace(
    receiver: OTLPReceiver, run_id: str, timeout_s: float = 20.0
) -> list[ReceivedSpan]:
    """The run's spans once its root arrived and every parent they name is among them."""
    trace_id, root = f"{run_trace_id(run_id):032x}", f"{run_span_id(run_id):016x}"
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.traces().get(trace_id, [])
        ids = {s.span_id for s in spans}
        if root in ids and all(not s.parent_span_id or s.parent_span_id in ids for s in spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the trace of {run_id} is incomplete after {timeout_s}s: "
                f"{sorted((s.service, s.name, s.parent_span_id) for s in spans)}"
            )
        time.sleep(0.1)


def stats_json(rt: Runtime, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """`tether stats ... --json`, run in this process (so its clock is this test's)."""
    monkeypatch.setattr("tether.cli.stats.runtime", lambda: rt)
    done = CliRunner().invoke(app, ["stats", *args, "--json"])
    assert done.exit_code == 0, done.output
    return dict(json.loads(done.stdout))


def restart_planner(stack: DevStack, env: dict[str, str]) -> None:
    """Stop the planner worker, then start it again with ``env`` added."""
    process = stack.workers["planner"]
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)
    stack.extra_env.update(env)
    stack.start_worker("planner")
    stack.wait_ready(["planner"], 60)


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DevStack, SentryServer, OTLPReceiver]]:
    logs = Path(tmp_path_factory.mktemp("obs-logs"))
    ports = {service: free_port() for service in ("planner", "executor", "escalation")}
    # Both stopped once the workers reporting to them have (started_stack's ``then``).
    sentry = SentryServer().start()
    try:
        receiver = OTLPReceiver().start()
    except BaseException:
        sentry.stop()
        raise
    env = {
        "TETHER_MODEL_API_KEY": API_KEY,
        "SENTRY_DSN": sentry.dsn,
        "TETHER_LOG_JSON": "true",
        "TETHER_OTLP_ENDPOINT": receiver.endpoint,
        # Export within a fraction of a second rather than the SDK's default 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with started_stack(
        DevStack(
            agent_modules=["tests.observability_agents"],
            env=env,
            log_dir=logs,
            metrics_ports=ports,
        ),
        then=[receiver.stop, sentry.stop],
    ) as stack:
        yield stack, sentry, receiver


def test_agents_on_real_workers_are_measured_traced_reported_and_compared(
    observed: tuple[DevStack, SentryServer, OTLPReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, sentry, receiver = observed
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
        for _, e in rt.store.log.read(run["obs_ok"])
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
    # the duplicate event's race made: its action sent again (one more observation), and
    # the loser of the step's commit retried (one more plan message).
    plan_waits = value(planner, "tether_queue_wait_seconds_count", queue=PLAN_QUEUE) or 0
    assert 7 <= plan_waits <= 9
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
    trace = rt.store.log.read(run["obs_failing"])
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

    # The escalation approved; feedback, one call retried ------------------------------------
    record = pending_escalation(rt, run["obs_approver"])
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_status(rt, run["obs_approver"], "succeeded", 30)
    for _ in range(2):  # a retried call with the same feedback_id counts once
        client.feedback(run["obs_ok"], 1, by="alice", feedback_id="fb-obs-ok", runtime=rt)
    client.feedback(run["obs_approver"], 1, by="carol", runtime=rt)
    client.feedback(run["obs_failing"], -1, by="bob", comment="it broke", runtime=rt)
    states: dict[str, RunState] = {agent: rt.store.load(run_id) for agent, run_id in run.items()}
    assert [len(states[agent].feedback) for agent in run] == [1, 1, 0, 1]

    # Feedback is counted by its commit in Redis and served by the escalation service alone.
    escalation = scrape(stack.metrics_ports["escalation"])
    feedback_series = {
        labels: count
        for (name, labels), count in escalation.items()
        if name == "tether_feedback_total"
    }
    assert feedback_series == {
        frozenset({"agent": "obs_ok", "version": "v1", "score": "1"}.items()): 1,
        frozenset({"agent": "obs_approver", "version": "v1", "score": "1"}.items()): 1,
        frozenset({"agent": "obs_failing", "version": "v1", "score": "-1"}.items()): 1,
    }
    assert value(escalation, "tether_escalations_pending") == 0
    planner = scrape(stack.metrics_ports["planner"])
    assert not [name for name, _ in planner if name == "tether_feedback_total"]
    approved = {"agent": "obs_approver", "version": "v1", "status": "succeeded"}
    assert value(planner, "tether_runs_finished_total", **approved) == 1
    assert value(planner, "tether_run_steps_sum", **approved) == 2
    executor = scrape(stack.metrics_ports["executor"])
    assert (
        value(
            executor,
            "tether_tool_calls_total",
            agent="obs_approver",
            tool="obs_transfer",
            outcome="ok",
        )
        == 1
    )

    # One trace per run; the escalated one spans all three services ----------------------------
    services = {
        "obs_ok": {"tether-planner", "tether-executor"},
        "obs_failing": {"tether-planner"},
        "obs_looper": {"tether-planner", "tether-executor"},
        "obs_approver": SERVICES,
    }
    for agent, run_id in run.items():
        spans = complete_trace(receiver, run_id)
        assert {s.service for s in spans} == services[agent], agent
        assert [s.name for s in spans if not s.parent_span_id] == [f"invoke_agent {agent}"]
        root = next(s for s in spans if not s.parent_span_id)
        assert root.attributes["gen_ai.agent.name"] == agent
        assert root.attributes["tether.agent.version"] == "v1"
        assert root.attributes["tether.status"] == str(states[agent].status)
        assert root.error == (agent != "obs_ok" and agent != "obs_approver")
        # Every span that names a run names this one.
        assert {s.attributes.get("tether.run_id", run_id) for s in spans} == {run_id}
        chats = [s for s in spans if s.name == f"chat scripted:{agent}"]
        assert chats, agent
        for chat in chats:
            assert chat.service == "tether-planner"
            assert chat.attributes["gen_ai.operation.name"] == "chat"
            assert chat.attributes["gen_ai.system"] == "tether.scripted"
            assert chat.attributes["gen_ai.request.model"] == f"scripted:{agent}"
            if agent != "obs_failing":  # its model answered nothing, so reported no usage
                assert chat.attributes["gen_ai.response.model"] == f"scripted:{agent}"
                assert chat.attributes["gen_ai.usage.input_tokens"] > 0
                assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    approver = complete_trace(receiver, run["obs_approver"])
    (transfer,) = [s for s in approver if s.name == "execute_tool obs_transfer"]
    assert transfer.service == "tether-executor"
    assert transfer.attributes["gen_ai.operation.name"] == "execute_tool"
    assert transfer.attributes["gen_ai.tool.name"] == "obs_transfer"
    assert {"run/tether.escalations.open", "run/tether.escalations.decide"} <= {
        s.name for s in approver if s.service == "tether-escalation"
    }
    assert [s.attributes["tether.step"] for s in approver if s.name.startswith("chat ")] == [0, 1]
    # No stray traces, and no secret in any span.
    assert set(receiver.traces()) <= {f"{run_trace_id(run_id):032x}" for run_id in run.values()}
    assert API_KEY not in json.dumps([s.model_dump() for s in receiver.spans()])
    failing = complete_trace(receiver, run["obs_failing"])
    (refused,) = [s for s in failing if s.name == "chat scripted:obs_failing"]
    assert refused.error and "invalid api key [redacted]" in refused.status_message
    (raised,) = refused.events
    assert raised["name"] == "exception" and "[redacted]" in raised["exception.stacktrace"]
    (failed_root,) = [s for s in failing if not s.parent_span_id]
    assert failed_root.status_message.startswith("401 Unauthorized: invalid api key [redacted]")

    # `tether stats --json` matches the runs ----------------------------------------------------
    stats = stats_json(rt, monkeypatch, "--since", "10m")
    finished = list(states.values())
    assert stats["runs"] == {
        "total": 4,
        "finished": 4,
        "in_flight": 0,
        "by_status": {"budget_exhausted": 1, "failed": 1, "succeeded": 2},
    }
    rate = stats["success_rate"]
    assert (rate["value"], rate["succeeded"], rate["finished"]) == (0.5, 2, 4)
    assert [s.step for s in finished] == [2, 0, 1, 2]
    assert stats["steps"]["mean"] == pytest.approx(5 / 4)
    assert stats["steps"]["tool_calls"]["mean"] == pytest.approx(
        sum(len(s.completed_actions) for s in finished) / 4
    )
    assert stats["steps"]["tool_calls"]["mean"] == pytest.approx(3 / 4)
    usages = [rt.store.budgets.usage(s.run_id) for s in finished]
    assert stats["cost_usd"]["total"] == pytest.approx(sum(u.cost_usd for u in usages))
    assert stats["cost_usd"]["tokens_total"] == sum(u.tokens for u in usages) > 0
    latencies = sorted(
        (s.finished_at - s.created_at).total_seconds() for s in finished if s.finished_at
    )
    assert len(latencies) == 4
    # Latency is rolled up in log buckets: the p50 is between its buckets' values.
    middle = [bucket_value(log_bucket(latency)) for latency in latencies[1:3]]
    assert stats["latency_s"]["p50"] == pytest.approx(sum(middle) / 2)
    assert stats["errors"] == {
        "budget": {"count": 1, "rate": 0.25},
        "model_permanent": {"count": 1, "rate": 0.25},
    }
    escalated = stats["escalation_rate"]
    assert (escalated["value"], escalated["escalated"], escalated["runs"]) == (0.25, 1, 4)
    assert stats["feedback"] == {
        "count": 3,
        "runs_with_feedback": 3,
        "mean_score": pytest.approx(1 / 3),
        "by_score": {"-1": 1, "0": 0, "1": 2},
    }

    # A second version that takes more steps: the drift is flagged -----------------------------
    restart_planner(stack, {"OBS_OK_VERSION": "v2", "OBS_OK_EXTRA_STEPS": "2"})
    # Stats windows are whole minutes (the rollups' smallest bucket): the v2 runs start in
    # a later minute than the v1 run, so a window can hold the one and not the other.
    v1_at = states["obs_ok"].created_at.timestamp()
    boundary = (v1_at // 60 + 1) * 60
    time.sleep(max(0.0, boundary - time.time()))
    second = [client.submit("obs_ok", "go", runtime=rt) for _ in range(2)]
    v2 = [wait_status(rt, run_id, "succeeded", 30) for run_id in second]
    assert [(s.agent_version, s.step) for s in v2] == [("v2", 4), ("v2", 4)]
    assert min(s.created_at.timestamp() for s in v2) >= boundary
    # The current window starts at that minute; the earlier one, as long, ends there and
    # so holds the v1 run's minute. Not within a second of the next minute, so the
    # command's clock reads the same current window as this one.
    time.sleep(max(0.0, boundary + 1 - time.time()))
    if -time.time() % 60 < 1:
        time.sleep(1.5)
    now = time.time()
    since_s = now - boundary - 0.5
    compare_s = -(-now // 60) * 60 - boundary
    compared = stats_json(
        rt,
        monkeypatch,
        "--agent",
        "obs_ok",
        "--since",
        f"{since_s:.3f}s",
        "--compare-to",
        f"{compare_s:.3f}s",
    )
    assert compared["runs"]["total"] == 2 and compared["compare"]["runs"]["total"] == 1
    assert compared["steps"]["mean"] == 4 and compared["compare"]["steps"]["mean"] == 2
    assert compared["drift"]["steps"]["flagged"] is True
    assert compared["drift"]["steps"]["change"] == pytest.approx(1.0)
    assert compared["drift"]["flagged"] == ["steps"]
    assert stats_json(rt, monkeypatch, "--version", "v2")["runs"]["total"] == 2

    # The restarted planner counts from zero, the v2 runs only.
    planner = scrape(stack.metrics_ports["planner"])
    v2_ok = {"agent": "obs_ok", "version": "v2", "status": "succeeded"}
    assert value(planner, "tether_runs_started_total", agent="obs_ok", version="v2") == 2
    assert value(planner, "tether_runs_finished_total", **v2_ok) == 2
    assert value(planner, "tether_run_steps_sum", **v2_ok) == 8
    assert value(planner, "tether_planner_steps_total", agent="obs_ok", version="v2") == 8
    assert value(planner, "tether_runs_started_total", agent="obs_ok", version="v1") is None
    executor = scrape(stack.metrics_ports["executor"])
    assert (
        value(executor, "tether_tool_calls_total", agent="obs_ok", tool="obs_add", outcome="ok")
        == 1 + 2 * 3
    )
