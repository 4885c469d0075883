"""TETHER_MAX_RUN_MESSAGES and TETHER_MAX_TOOL_OUTPUT_BYTES: a run cannot grow without bound."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_planner_fencing import calculator_event, observation_for, observe
from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.executor import actions as executor
from tether.executor import calls
from tether.runtime import Runtime
from tether.store.state import RunStatus
from tether.transport.wire import ErrorCategory


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


def test_a_run_past_the_message_cap_ends_failed_before_the_next_model_call(
    redis_url: str,
) -> None:
    rt = Runtime(Settings(redis_url=redis_url, max_run_messages=3))
    run_id = planner.start(rt, calculator_event("evt-cap"))
    assert run_id is not None
    state = rt.store.load(run_id)
    assert len(state.messages) <= 3 and state.status == RunStatus.waiting_tools
    observe(rt, observation_for(state.pending_actions[0], 5))

    ended = rt.store.load(run_id)
    assert ended.status == RunStatus.failed
    assert ended.error is not None
    assert ended.error.category == ErrorCategory.policy_denied
    assert "TETHER_MAX_RUN_MESSAGES (3)" in ended.error.message
    # No model call was made for the step it refused.
    assert rt.store.budgets.usage(run_id).steps == 1


def test_the_default_cap_leaves_ordinary_runs_alone(redis_url: str) -> None:
    rt = Runtime(Settings(redis_url=redis_url))
    run_id = planner.start(rt, calculator_event("evt-nocap"))
    assert run_id is not None
    observe(rt, observation_for(rt.store.load(run_id).pending_actions[0], 5))
    assert rt.store.load(run_id).status == RunStatus.succeeded


def test_a_huge_tool_output_is_kept_cut_to_the_cap_everywhere(redis_url: str) -> None:
    rt = Runtime(Settings(redis_url=redis_url, max_tool_output_bytes=8192))
    run_id = planner.start(rt, {"event_id": "evt-huge", "agent": "repeater", "input": "go"})
    assert run_id is not None
    action = rt.store.load(run_id).pending_actions[0]
    executor.execute(rt, action)
    stored = rt.store.results.get(action.action_id)
    assert stored is not None and stored.ok  # the call happened: no invitation to redo it
    assert isinstance(stored.output, dict)
    assert "300002 bytes of JSON, over the 8192 kept" in stored.output["truncated"]
    assert stored.output["head"].startswith('"abab')
    assert len(json.dumps(stored.output)) <= 8192
    logged = [e for _, e in rt.store.log.read(run_id) if e.kind == "tool_call"]
    assert [e.data["output"] for e in logged] == [stored.output]
    planner.observe(rt, stored)
    state = rt.store.load(run_id)
    assert state.status == RunStatus.succeeded
    assert max(len(m.content or "") for m in state.messages) <= 8192 + 100
    # Under the cap, the output is the tool's own.
    assert calls.capped("ab" * 10, 8192) == "ab" * 10
