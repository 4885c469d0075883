"""Whole runs through real planner, executor and escalation worker processes."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from celery import Celery

from tests.agents import read_ledger
from tests.integration.helpers import kinds, pending_escalation, wait_for, wait_status
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.transport.wire import Verdict


def new_id() -> str:
    return uuid.uuid4().hex


def test_happy_path_records_every_decision_point(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "2 + 3 = 5"
    assert [obs.output for obs in state.completed_actions] == [5]
    assert kinds(rt, run_id) == [
        "run_started",
        "model_call",
        "decision",
        "tool_call",
        "observation",
        "model_call",
        "decision",
        "run_finished",
    ]
    model_calls = [e for _, e in rt.store.log.read(run_id) if e.kind == "model_call"]
    assert model_calls[0].data["model"] == "scripted:calculator"
    assert [m["role"] for m in model_calls[1].data["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
    ]
    assert all(e.data["input_tokens"] > 0 and "latency_ms" in e.data for e in model_calls)
    usage = rt.store.budgets.usage(run_id)
    assert (usage.steps, usage.tool_calls) == (2, 1)
    assert usage.tokens == sum(
        e.data["input_tokens"] + e.data["output_tokens"] for e in model_calls
    )


def test_invalid_tool_calls_are_fed_back_never_executed(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("self_correcting", "Add two and three", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")

    invalid = [
        e.data["error"] for _, e in rt.store.log.read(run_id) if e.kind == "tool_call_invalid"
    ]
    assert len(invalid) == 3
    assert "not valid JSON" in invalid[0]
    assert "failed validation" in invalid[1] and "a:" in invalid[1]
    assert "'multiply' does not exist" in invalid[2]
    # Only the corrected call ran.
    assert [(obs.tool, obs.output) for obs in state.completed_actions] == [("add", 5)]
    fed_back = [m.content or "" for m in state.messages if m.role == "tool"]
    assert any("not valid JSON" in m for m in fed_back)


def test_approval_approved_runs_the_tool_once(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    wait_status(rt, run_id, "waiting_human")
    record = pending_escalation(rt, run_id)
    assert record.escalation.kind == "approval_required"
    assert not [line for line in read_ledger() if line.startswith(run_id)]

    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "paid acme 500 cents"
    assert [line for line in read_ledger() if line.startswith(run_id)] == [f"{run_id} acme 500"]
    decided = [e for _, e in rt.store.log.read(run_id) if e.kind == "escalation_decided"]
    assert decided[0].data["by"] == "alice" and decided[0].data["verdict"] == "approve"
    assert decided[0].data["at"]


def test_approval_rejected_ends_run_without_side_effect(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    record = pending_escalation(rt, run_id)

    client.decide(
        record.escalation.escalation_id,
        Verdict.reject,
        by="bob",
        reason="acme is not a supplier",
        runtime=rt,
    )
    state = wait_status(rt, run_id, "rejected")

    assert state.error is not None and state.error.category == "human_rejected"
    assert "bob" in state.error.message and "acme is not a supplier" in state.error.message
    assert state.partial_result
    assert not [line for line in read_ledger() if line.startswith(run_id)]


def test_human_answer_replaces_the_tool_and_the_run_goes_on(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    record = pending_escalation(rt, run_id)

    client.decide(
        record.escalation.escalation_id,
        Verdict.answer,
        by="carol",
        answer="already paid by wire yesterday",
        runtime=rt,
    )
    state = wait_status(rt, run_id, "succeeded")

    tool_messages = [m.content or "" for m in state.messages if m.role == "tool"]
    assert any("already paid by wire yesterday" in m for m in tool_messages)
    assert not [line for line in read_ledger() if line.startswith(run_id)]


def test_budget_exhaustion_returns_partial_result(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("looper", "Keep adding", budget={"max_steps": 3}, runtime=rt)
    state = wait_status(rt, run_id, "budget_exhausted")

    assert state.limits.max_steps == 3  # the event tightened the agent's 50
    assert state.error is not None and state.error.category == "budget"
    assert "max_steps=3" in state.error.message
    assert len(state.completed_actions) == 3
    assert state.partial_result and state.partial_result.count("add ->") == 3
    assert rt.store.budgets.usage(run_id).steps == 3


def test_same_event_twice_starts_one_run(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    event_id = new_id()
    first = client.submit("calculator", "What is 2 + 3?", event_id=event_id, runtime=rt)
    second = client.submit("calculator", "What is 2 + 3?", event_id=event_id, runtime=rt)
    assert first == second
    wait_status(rt, first, "succeeded")
    wait_for(lambda: "duplicate_event" in kinds(rt, first), what="the duplicate to be seen")

    trace = kinds(rt, first)
    assert trace.count("run_started") == 1
    assert trace.count("run_finished") == 1
    assert trace.count("tool_call") == 1
    assert rt.store.budgets.usage(first).steps == 2


def test_planner_message_delivered_twice_advances_once(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    wait_status(rt, run_id, "waiting_human")
    record = pending_escalation(rt, run_id)

    # The step-0 message again, twice, as a broker redelivery would.
    rt.send_step(run_id, 0)
    rt.send_step(run_id, 0)
    wait_for(lambda: kinds(rt, run_id).count("duplicate_step") == 2, what="both redeliveries")
    assert rt.store.load(run_id).status == "waiting_human"
    assert kinds(rt, run_id).count("model_call") == 1

    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    final = wait_status(rt, run_id, "succeeded")

    assert kinds(rt, run_id).count("model_call") == 2
    assert final.step == 2
    assert rt.store.budgets.usage(run_id).steps == 2
    assert [line for line in read_ledger() if line.startswith(run_id)] == [f"{run_id} acme 500"]


def test_redelivered_action_and_observation_change_nothing(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("sleeper", "Wait for the API", runtime=rt)
    wait_status(rt, run_id, "waiting_tools")
    action = rt.store.load(run_id).pending_actions[0]
    rt.send_action(action)  # a second delivery while the first is still running
    state = wait_status(rt, run_id, "succeeded")
    stored = rt.store.results.get(action.action_id)
    assert stored is not None

    rt.send_observation(stored)
    wait_for(lambda: "observation_ignored" in kinds(rt, run_id), what="the duplicate observation")

    assert rt.store.load(run_id).version == state.version
    assert kinds(rt, run_id).count("tool_call") == 1
    assert kinds(rt, run_id).count("run_finished") == 1


def _in_hand(rt: Runtime, action_id: str) -> bool:
    """Whether a worker holds a delivery of the action's message (kombu's unacked hash)."""
    for raw in rt.store.client.hvals("unacked"):
        message = json.loads(raw)[0]
        if action_id in base64.b64decode(message["body"]).decode():
            return True
    return False


def test_cancel_stops_the_run_and_keeps_it_cancelled(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("sleeper", "Wait for the API", runtime=rt)
    (action,) = wait_status(rt, run_id, "waiting_tools").pending_actions
    # Cancelled once the executor holds the call (an idempotent tool takes no lease: its
    # delivery in hand shows it); one it starts only after the cancel is skipped.
    wait_for(lambda: _in_hand(rt, action.action_id), what="the executor to take the slow call")

    cancelled = client.cancel(run_id, by="ops", runtime=rt)
    assert cancelled is not None and cancelled.status == "cancelled"
    wait_for(
        lambda: not _in_hand(rt, action.action_id),
        timeout_s=30,
        what="the executor to be done with the slow call",
    )
    if rt.store.client.exists(keys.action_result(action.action_id)):
        # It ran and finished; its observation must not revive the run.
        wait_for(
            lambda: "observation_ignored" in kinds(rt, run_id),
            timeout_s=20,
            what="the slow tool's observation to arrive",
        )

    state = rt.store.load(run_id)
    assert state.status == "cancelled"
    assert state.error is not None and "ops" in state.error.message
    assert kinds(rt, run_id).count("model_call") == 1
    assert client.cancel(run_id, runtime=rt) is None


def test_bad_events_are_recorded_and_nothing_else_is_disturbed(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    marker = new_id()
    rt.celery.send_task(
        "tether.plan.start",
        kwargs={"event": {"event_id": marker, "agent": "calculator"}},
        queue="tether.plan",
    )
    rt.celery.send_task(
        "tether.plan.start",
        kwargs={"event": {"event_id": marker + "x", "agent": "nobody", "input": "hi"}},
        queue="tether.plan",
    )
    good = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    wait_status(rt, good, "succeeded")
    wait_for(
        lambda: sum(marker in r["payload"] for r in rt.store.rejections.recent(200)) == 2,
        what="both bad events to be recorded",
    )

    reasons = {
        r["payload"]: r["reason"] for r in rt.store.rejections.recent(200) if marker in r["payload"]
    }
    assert any("malformed TaskEvent" in reason and "input" in reason for reason in reasons.values())
    assert any("'nobody' is not registered" in reason for reason in reasons.values())


def test_openai_compatible_endpoint_through_the_real_client(
    stack_runtime: Runtime, openai_server: ScriptedOpenAIServer
) -> None:
    rt = stack_runtime
    before = len(openai_server.requests)
    run_id = client.submit("remote_calculator", "What is 2 + 3?", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "2 + 3 = 5"
    requests = openai_server.requests[before:]
    assert [r["model"] for r in requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert requests[0]["tools"][0]["function"]["name"] == "add"
    assert requests[1]["messages"][-1]["role"] == "tool"
    calls = [e.data for _, e in rt.store.log.read(run_id) if e.kind == "model_call"]
    # gpt-4o-mini is in the price table, so the trace and the budget carry real cost.
    assert all(c["cost_usd"] > 0 for c in calls)
    usage = rt.store.budgets.usage(run_id)
    assert usage.cost_usd == pytest.approx(sum(c["cost_usd"] for c in calls))


def test_upstream_publishes_by_task_name_from_a_plain_celery_client(stack: DevStack) -> None:
    upstream = Celery("upstream", broker=stack.redis_url)
    event_id = new_id()
    upstream.send_task(
        "tether.plan.start",
        kwargs={
            "event": {
                "schema_version": 1,
                "event_id": event_id,
                "agent": "calculator",
                "input": "What is 2 + 3?",
                "budget": {"max_steps": 4},
                "metadata": {"source": "crm"},
            }
        },
        queue="tether.plan",
    )
    rt = Runtime(Settings(redis_url=stack.redis_url))
    state = wait_status(rt, run_id_for(event_id), "succeeded")

    assert state.metadata == {"source": "crm"}
    assert state.limits.max_steps == 4
