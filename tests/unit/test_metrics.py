"""Metrics on a real Redis with no workers: each fact counted once, however often delivered.

The registry is the process's own, shared with other tests, so every check is
on how far a series moved, never on its absolute value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from tests.memory_agents import summarising
from tests.observability_agents import obs_approver
from tether import planner
from tether.agent.definition import load_agent_modules
from tether.escalation import records
from tether.executor import actions as executor
from tether.insights import feedback
from tether.memory import threads
from tether.memory.window import Turn
from tether.observability import metrics
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import Feedback, RunStatus
from tether.transport.celery_app import ESCALATIONS_QUEUE, PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import ErrorCategory, Observation, ToolAction
from tether.worker import deadletters


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.observability_agents"])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def moved(name: str, labels: dict[str, str], action: Callable[[], object]) -> float:
    before = sample(name, **labels)
    action()
    return sample(name, **labels) - before


def event(agent: str, event_id: str) -> dict[str, str]:
    return {"event_id": event_id, "agent": agent, "input": "go"}


def delivered(runtime: Runtime, observation: Observation) -> None:
    """Deliver ``observation`` as the executor does: its result stored first, then sent."""
    runtime.store.results.save(observation)
    planner.observe(runtime, observation)


def observed(action: ToolAction, output: int) -> Observation:
    return Observation(
        action_id=action.action_id,
        run_id=action.run_id,
        step=action.step,
        tool=action.tool,
        tool_call_id=action.tool_call_id,
        ok=True,
        output=output,
    )


OK = {"agent": "obs_ok", "version": "v1"}


def test_a_run_started_twice_counts_once(runtime: Runtime) -> None:
    assert (
        moved(
            "tether_runs_started_total",
            OK,
            lambda: [planner.start(runtime, event("obs_ok", "evt-m1")) for _ in range(2)],
        )
        == 1
    )


def test_a_step_delivered_twice_counts_its_step_and_model_call_once(runtime: Runtime) -> None:
    tokens = {**OK, "model": "scripted:obs_ok"}
    before = sample("tether_model_tokens_total", **tokens)
    steps = moved(
        "tether_planner_steps_total", OK, lambda: planner.start(runtime, event("obs_ok", "evt-m2"))
    )
    run_id = runtime.store.recent(1)[0].run_id
    logged = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "model_call"]
    assert steps == 1
    assert sample("tether_model_tokens_total", **tokens) - before == sum(
        d["input_tokens"] + d["output_tokens"] for d in logged
    )
    latency_count = sample(
        "tether_model_latency_seconds_count", agent="obs_ok", model="scripted:obs_ok"
    )
    # Step 0 delivered again: nothing commits, nothing counts.
    assert moved("tether_planner_steps_total", OK, lambda: planner.plan(runtime, run_id, 0)) == 0
    assert sample("tether_model_tokens_total", **tokens) - before == sum(
        d["input_tokens"] + d["output_tokens"] for d in logged
    )
    assert (
        sample("tether_model_latency_seconds_count", agent="obs_ok", model="scripted:obs_ok")
        == latency_count
    )


def test_a_run_ends_once_with_its_steps_tool_calls_and_duration(runtime: Runtime) -> None:
    run_id = planner.start(runtime, event("obs_ok", "evt-m3"))
    assert run_id is not None
    (action,) = runtime.store.load(run_id).pending_actions
    finished = {**OK, "status": "succeeded"}
    steps_sum = sample("tether_run_steps_sum", **finished)
    tools_sum = sample("tether_run_tool_calls_sum", **finished)
    duration_count = sample("tether_run_duration_seconds_count", **finished)

    def observe_twice() -> None:
        delivered(runtime, observed(action, 5))
        delivered(runtime, observed(action, 5))  # redelivered
        assert planner.finish(runtime, run_id, None, RunStatus.failed, None) is None

    assert moved("tether_runs_finished_total", finished, observe_twice) == 1
    assert runtime.store.load(run_id).status == RunStatus.succeeded
    assert sample("tether_run_steps_sum", **finished) - steps_sum == 2
    assert sample("tether_run_tool_calls_sum", **finished) - tools_sum == 1
    assert sample("tether_run_duration_seconds_count", **finished) - duration_count == 1


def test_a_tool_action_executed_twice_counts_one_tool_call(runtime: Runtime) -> None:
    run_id = planner.start(runtime, event("obs_ok", "evt-m4"))
    assert run_id is not None
    (action,) = runtime.store.load(run_id).pending_actions
    labels = {"agent": "obs_ok", "tool": "obs_add", "outcome": "ok"}
    latency = sample("tether_tool_latency_seconds_count", agent="obs_ok", tool="obs_add")
    assert (
        moved(
            "tether_tool_calls_total",
            labels,
            lambda: [executor.execute(runtime, action) for _ in range(2)],
        )
        == 1
    )
    assert (
        sample("tether_tool_latency_seconds_count", agent="obs_ok", tool="obs_add") == latency + 1
    )
    stored = runtime.store.results.get(action.action_id)
    assert stored is not None and stored.output == 5


def test_budget_exhaustion_counts_its_limit_once(runtime: Runtime) -> None:
    run_id = planner.start(runtime, event("obs_looper", "evt-m5"))
    assert run_id is not None
    (action,) = runtime.store.load(run_id).pending_actions
    labels = {"agent": "obs_looper", "limit": "steps"}
    assert (
        moved(
            "tether_budget_exhausted_total",
            labels,
            lambda: [delivered(runtime, observed(action, 3)) for _ in range(2)],
        )
        == 1
    )
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.budget_exhausted
    # The limit comes from the budget script's refusal, not from reading the message.
    assert state.error is not None and state.error.limit == "steps"
    assert sample("tether_errors_total", agent="obs_looper", category="budget", source="run") >= 1


def test_feedback_is_counted_by_its_commit_once_and_served_from_redis(runtime: Runtime) -> None:
    run_id = planner.start(runtime, event("obs_ok", "evt-m-fb"))
    assert run_id is not None
    registry = CollectorRegistry()
    registry.register(metrics.RedisStateCollector(runtime.store.client))

    def count(score: str) -> float:
        labels = {"agent": "obs_ok", "version": "v1", "score": score}
        return registry.get_sample_value("tether_feedback_total", labels) or 0.0

    before = count("1"), count("-1")
    given = Feedback(feedback_id="fb-m1", score=1, by="alice")
    for _ in range(2):  # a retried call: the second commit declines, and counts nothing
        feedback.record(runtime.store, run_id, given)
    feedback.record(runtime.store, run_id, Feedback(feedback_id="fb-m2", score=-1, by="bob"))
    assert (count("1"), count("-1")) == (before[0] + 1, before[1] + 1)
    assert len(runtime.store.load(run_id).feedback) == 2


def test_an_escalation_opened_twice_counts_once(runtime: Runtime) -> None:
    run_id = planner.start(runtime, event("obs_approver", "evt-m6"))
    assert run_id is not None
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, obs_approver.name)
    labels = {"agent": "obs_approver", "kind": "approval_required"}
    assert (
        moved(
            "tether_escalations_opened_total",
            labels,
            lambda: [records.open_escalation(runtime, escalation) for _ in range(2)],
        )
        == 1
    )


def test_a_dead_letter_recorded_twice_for_one_message_counts_once(runtime: Runtime) -> None:
    labels = {"task": "tether.tools.execute", "category": "internal"}
    assert (
        moved(
            "tether_dead_letters_total",
            labels,
            lambda: [
                deadletters.record(
                    runtime,
                    "tether.tools.execute",
                    {},
                    "boom",
                    ErrorCategory.internal,
                    "msg-1",
                )
                for _ in range(2)
            ],
        )
        == 1
    )


def test_every_message_carries_its_publish_time_and_its_wait_is_observed(
    runtime: Runtime,
) -> None:
    before = time.time()
    runtime.send_step("run_x", 0)
    (raw,) = runtime.store.client.lrange(PLAN_QUEUE, 0, -1)
    published = metrics.published_at(raw)
    assert published is not None and before <= published <= time.time()

    count = sample("tether_queue_wait_seconds_count", queue=PLAN_QUEUE)
    total = sample("tether_queue_wait_seconds_sum", queue=PLAN_QUEUE)
    metrics.queue_wait(PLAN_QUEUE, {metrics.PUBLISHED_AT_HEADER: published}, now=published + 2.5)
    metrics.queue_wait(PLAN_QUEUE, {})  # published by someone else: no figure
    assert sample("tether_queue_wait_seconds_count", queue=PLAN_QUEUE) == count + 1
    assert sample("tether_queue_wait_seconds_sum", queue=PLAN_QUEUE) == pytest.approx(total + 2.5)


def _kombu_message(published_at: float) -> str:
    return json.dumps(
        {"body": "", "headers": {metrics.PUBLISHED_AT_HEADER: published_at}, "properties": {}}
    )


def test_the_redis_collector_reads_queues_and_pending_escalations(runtime: Runtime) -> None:
    client = runtime.store.client
    now = time.time()
    # kombu pushes on the left: the right end is the oldest message.
    client.lpush(TOOLS_QUEUE, _kombu_message(now - 30), _kombu_message(now - 5))
    client.lpush(PLAN_QUEUE, "not a kombu message")
    client.zadd(keys.PENDING_ESCALATIONS, {"esc_a": now - 120, "esc_b": now - 10})
    registry = CollectorRegistry()
    registry.register(metrics.RedisStateCollector(client))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("tether_queue_depth", queue=TOOLS_QUEUE) == 2
    assert value("tether_queue_depth", queue=PLAN_QUEUE) == 1
    assert value("tether_queue_depth", queue=ESCALATIONS_QUEUE) == 0
    tools_age = value("tether_queue_oldest_message_age_seconds", queue=TOOLS_QUEUE)
    assert tools_age is not None and 30 <= tools_age < 40
    # No publish time to read: no age rather than a wrong one.
    assert value("tether_queue_oldest_message_age_seconds", queue=PLAN_QUEUE) == 0
    assert value("tether_queue_oldest_message_age_seconds", queue=ESCALATIONS_QUEUE) == 0
    assert value("tether_escalations_pending") == 2
    oldest = value("tether_escalation_oldest_pending_age_seconds")
    assert oldest is not None and 120 <= oldest < 130


def test_each_worker_gets_its_own_wiped_multiprocess_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    stale = tmp_path / "executor-9101" / "counter_123.db"
    stale.parent.mkdir()
    stale.write_text("left by a worker that died")
    path = metrics.prepare_multiproc_dir("executor", 9101)
    assert path == str(tmp_path / "executor-9101")
    assert list(Path(path).iterdir()) == []
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert metrics.prepare_multiproc_dir("planner", 9100) == str(tmp_path / "planner-9100")


def test_a_thread_summary_is_made_and_counted_once_however_often_its_event_comes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_agent_modules(["tests.memory_agents"])
    thread = "t-metrics-summary"
    for i in range(4):  # more history than the agent's 2,000-token window holds
        turn = Turn(run_id=f"run_old{i}", event_id=f"old{i}", input="x" * 3000, status="succeeded")
        runtime.store.client.rpush(keys.thread_turns(thread), turn.model_dump_json())
    summaries: list[int] = []
    complete = summarising.model.complete

    def counting(messages: list[Any], tools: list[Any], **options: Any) -> Any:
        if messages and messages[0].content == threads.SUMMARY_INSTRUCTIONS:
            summaries.append(1)
        return complete(messages, tools, **options)

    monkeypatch.setattr(summarising.model, "complete", counting)
    labels = {"agent": "summarising", "version": summarising.version}
    tokens = {**labels, "model": "scripted:summarising"}
    before = sample("tether_model_tokens_total", **tokens)
    message = {**event("summarising", "evt-m-summary"), "thread_id": thread, "thread_seq": 1}
    for _ in range(2):
        planner.start(runtime, message)
    run_id = planner.start(runtime, message)
    assert run_id is not None
    assert summaries == [1]  # the redeliveries fit nothing again
    (context,) = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "thread_context"]
    step_tokens = sum(
        int(e.data["input_tokens"]) + int(e.data["output_tokens"])
        for _, e in runtime.store.log.read(run_id)
        if e.kind == "model_call"
    )
    summary_tokens = int(context["summary_tokens"])
    assert summary_tokens > 0
    assert sample("tether_model_tokens_total", **tokens) - before == summary_tokens + step_tokens
    assert runtime.store.budgets.usage(run_id).tokens == summary_tokens + step_tokens
