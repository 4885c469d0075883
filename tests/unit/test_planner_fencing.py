"""The planner on a real Redis with no workers: steps are fenced, duplicates are harmless.

``rt.send_*`` only enqueue Celery messages in the suite's Redis, so every test
drives the run by hand and reads the queues to see what was published.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest

from tests.agents import add, unplanned_calculator_run
from tether import client, planner
from tether.agent.definition import Agent, get_agent, load_agent_modules, register
from tether.config import Settings
from tether.escalation import records
from tether.models import ScriptedModel, tool_call
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import ChatMessage, RunState, RunStatus
from tether.transport.celery_app import (
    ESCALATE,
    ESCALATIONS_QUEUE,
    EXECUTE,
    PLAN_QUEUE,
    RESUME,
    STEP,
    TOOLS_QUEUE,
)
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    TaskEvent,
    ToolAction,
    Verdict,
)

always_invalid = register(
    Agent(
        name="unit_always_invalid",
        instructions="Always send broken arguments.",
        model=ScriptedModel(lambda messages: tool_call("add", "{not json"), label="always_invalid"),
        tools=[add],
        max_invalid_calls=1,
    )
)


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    loaded = load_agent_modules(["tests.agents"])
    assert {"calculator", "self_correcting", "looper", "payer"} <= set(loaded)


# helpers ------------------------------------------------------------------------


def queued(rt: Runtime, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of every Celery message waiting on ``queue``, oldest first."""
    out = []
    for raw in reversed(rt.store.client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], kwargs))
    return out


def kinds(rt: Runtime, run_id: str) -> list[str]:
    return [event.kind for _, event in rt.store.log.read(run_id)]


def observation_for(action: ToolAction, output: Any, ok: bool = True) -> Observation:
    return Observation(
        action_id=action.action_id,
        run_id=action.run_id,
        step=action.step,
        tool=action.tool,
        tool_call_id=action.tool_call_id,
        ok=ok,
        output=output if ok else None,
        error=None if ok else "tool failed",
        latency_ms=1.0,
        error_category=None if ok else ErrorCategory.tool_permanent,
    )


def observe(runtime: Runtime, observation: Observation) -> None:
    """Deliver ``observation`` as the executor does: its result stored first, then sent.

    The planner takes an observation only as the result the executor stored
    (tether.planner.inbox), so a test standing in for the executor stores it too.
    """
    if observation.needs_human is None:
        runtime.store.results.save(observation)
    planner.observe(runtime, observation)


def record_decision(runtime: Runtime, escalation: Escalation, decision: Decision) -> None:
    """Record ``decision`` as the escalation service does before any resume goes out.

    The planner applies a decision only as its escalation's record holds it.
    """
    records.open_escalation(runtime, escalation)
    assert records.decide(runtime, decision) is not None


def calculator_event(event_id: str = "evt-calc") -> dict[str, Any]:
    return {"event_id": event_id, "agent": "calculator", "input": "What is 2 + 3?"}


# the happy path and its duplicates ---------------------------------------------------


def test_start_runs_the_first_step(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id == run_id_for("evt-calc")
    state = runtime.store.load(run_id)
    assert state.step == 1
    assert state.status == RunStatus.waiting_tools
    assert len(state.pending_actions) == 1
    action = state.pending_actions[0]
    assert action.action_id == f"{run_id}:0:0"
    assert (action.tool, action.arguments, action.step, action.agent) == (
        "add",
        {"a": 2, "b": 3},
        0,
        "calculator",
    )
    assert [m.role for m in state.messages] == ["system", "user", "assistant"]
    assert state.messages[-1].tool_calls is not None
    assert state.messages[-1].tool_calls[0].id == action.tool_call_id

    usage = runtime.store.budgets.usage(run_id)
    assert (usage.steps, usage.tool_calls) == (1, 1)
    assert usage.tokens > 0
    assert kinds(runtime, run_id) == ["run_started", "model_call", "decision"]
    assert queued(runtime, TOOLS_QUEUE) == [(EXECUTE, {"action": action.model_dump(mode="json")})]


def test_duplicate_step_delivery_does_not_advance(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    before = runtime.store.load(run_id)

    planner.plan(runtime, run_id, 0)  # step 0 redelivered

    after = runtime.store.load(run_id)
    assert after.step == 1
    assert after.version == before.version
    assert after.pending_actions == before.pending_actions
    assert runtime.store.budgets.usage(run_id).steps == 1
    assert runtime.store.budgets.usage(run_id).tool_calls == 1
    log = kinds(runtime, run_id)
    assert log.count("decision") == 1
    assert log.count("model_call") == 1
    assert log[-1] == "duplicate_step"
    duplicate = runtime.store.log.read(run_id)[-1][1]
    assert duplicate.step == 0
    assert duplicate.data["current_step"] == 1
    # The committed step's actions are re-published (consumers are idempotent by id).
    actions = [kw["action"]["action_id"] for task, kw in queued(runtime, TOOLS_QUEUE)]
    assert actions == [f"{run_id}:0:0", f"{run_id}:0:0"]


def test_an_older_step_delivery_is_dropped_silently(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    runtime.store.update(run_id, lambda s: s.model_copy(update={"step": 3}))
    published = len(queued(runtime, TOOLS_QUEUE))
    planner.plan(runtime, run_id, 0)
    planner.plan(runtime, run_id, 7)  # a step from the future is dropped too
    assert runtime.store.load(run_id).step == 3
    assert len(queued(runtime, TOOLS_QUEUE)) == published
    assert runtime.store.budgets.usage(run_id).steps == 1


def test_duplicate_event_starts_no_second_run(runtime: Runtime) -> None:
    first = planner.start(runtime, calculator_event())
    assert first is not None
    before = runtime.store.load(first)
    again = planner.start(runtime, calculator_event())
    assert again == first
    after = runtime.store.load(first)
    assert after.version == before.version
    assert after.step == 1
    assert [s.run_id for s in runtime.store.recent()] == [first]
    log = kinds(runtime, first)
    assert log.count("run_started") == 1
    assert log.count("duplicate_event") == 1
    assert log.count("decision") == 1
    assert runtime.store.budgets.usage(first).steps == 1
    duplicate = next(e for _, e in runtime.store.log.read(first) if e.kind == "duplicate_event")
    assert duplicate.data == {"event_id": "evt-calc"}


def test_duplicate_observation_is_recorded_once_and_the_run_succeeds(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    action = runtime.store.load(run_id).pending_actions[0]
    observation = observation_for(action, 5)

    observe(runtime, observation)
    observe(runtime, observation)  # redelivered

    state = runtime.store.load(run_id)
    assert state.status == RunStatus.succeeded
    assert state.result == "2 + 3 = 5"
    assert state.error is None
    assert state.partial_result is None
    assert state.finished_at is not None
    assert state.step == 2  # the final answer counts as a committed step
    assert state.completed_actions == [observation]
    assert state.pending_actions == []
    assert [m.role for m in state.messages] == ["system", "user", "assistant", "tool", "assistant"]
    tool_message = state.messages[3]
    assert tool_message.tool_call_id == action.tool_call_id
    assert json.loads(tool_message.content or "") == {"result": 5}

    log = kinds(runtime, run_id)
    assert log.count("observation") == 1
    assert log.count("run_finished") == 1
    assert log.count("decision") == 2
    ignored = [e for _, e in runtime.store.log.read(run_id) if e.kind == "observation_ignored"]
    assert len(ignored) == 1
    assert ignored[0].data["action_id"] == action.action_id
    assert runtime.store.budgets.usage(run_id).steps == 2


def test_the_observation_that_readies_a_step_reserves_its_model_call_in_its_commit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    action = runtime.store.load(run_id).pending_actions[0]
    separate: list[tuple[Any, ...]] = []
    reserve = runtime.store.budgets.reserve

    def counted(*args: Any, **kwargs: Any) -> Any:
        separate.append(args)
        return reserve(*args, **kwargs)

    monkeypatch.setattr(runtime.store.budgets, "reserve", counted)
    observe(runtime, observation_for(action, 5))

    assert runtime.store.load(run_id).status == RunStatus.succeeded
    assert separate == []  # no round trip of its own: it went with the observation's commit
    assert "reserve:model:1" in runtime.store.budgets.applied(run_id)
    usage = runtime.store.budgets.usage(run_id)
    calls = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "model_call"]
    assert usage.steps == len(calls) == 2
    # Settled to what each call used: the estimate reserved ahead was taken back exactly.
    assert usage.tokens == sum(c["input_tokens"] + c["output_tokens"] for c in calls)


def test_observation_for_an_unknown_action_changes_nothing(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    before = runtime.store.load(run_id)
    stray = observation_for(before.pending_actions[0], 5).model_copy(
        update={"action_id": f"{run_id}:9:9"}
    )
    observe(runtime, stray)
    after = runtime.store.load(run_id)
    assert after.version == before.version
    assert after.status == RunStatus.waiting_tools
    assert "observation" not in kinds(runtime, run_id)
    assert kinds(runtime, run_id)[-1] == "observation_ignored"


def test_failed_observation_is_fed_to_the_model(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    action = runtime.store.load(run_id).pending_actions[0]
    observe(runtime, observation_for(action, None, ok=False))
    state = runtime.store.load(run_id)
    assert json.loads(state.messages[3].content or "") == {"error": "tool failed"}
    assert state.status == RunStatus.succeeded  # the scripted model answers anyway


def test_plan_on_a_finished_run_is_a_no_op(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event())
    assert run_id is not None
    observe(runtime, observation_for(runtime.store.load(run_id).pending_actions[0], 5))
    done = runtime.store.load(run_id)
    published = len(queued(runtime, PLAN_QUEUE)), len(queued(runtime, TOOLS_QUEUE))
    for step in (0, 1, 2):
        planner.plan(runtime, run_id, step)
    assert runtime.store.load(run_id).version == done.version
    assert (len(queued(runtime, PLAN_QUEUE)), len(queued(runtime, TOOLS_QUEUE))) == published
    assert planner.finish(runtime, run_id, None, RunStatus.failed, None) is None  # ends once


def test_concurrent_deliveries_of_one_step_commit_once(runtime: Runtime, redis_url: str) -> None:
    event = TaskEvent.model_validate(calculator_event("evt-race"))
    run_id = run_id_for(event.event_id)
    agent = get_agent("calculator")
    state = RunState(
        run_id=run_id,
        event_id=event.event_id,
        agent=agent.name,
        goal=event.input,
        limits=agent.budget,
        messages=[
            ChatMessage(role="system", content=agent.instructions),
            ChatMessage(role="user", content=event.input),
        ],
    )
    _, created = runtime.store.create(event, state)
    assert created
    threads = 8
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            mine = Runtime(Settings(redis_url=redis_url))
            barrier.wait()
            planner.plan(mine, run_id, 0)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=deliver) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    assert not errors
    final = runtime.store.load(run_id)
    assert final.step == 1
    assert final.status == RunStatus.waiting_tools
    assert len(final.pending_actions) == 1
    assert [m.role for m in final.messages].count("assistant") == 1
    usage = runtime.store.budgets.usage(run_id)
    assert (usage.steps, usage.tool_calls) == (1, 1)
    assert kinds(runtime, run_id).count("decision") == 1
    assert {kw["action"]["action_id"] for _, kw in queued(runtime, TOOLS_QUEUE)} == {
        f"{run_id}:0:0"
    }


# rejected events ---------------------------------------------------------------------


def test_malformed_event_is_rejected_and_recorded(runtime: Runtime) -> None:
    assert planner.start(runtime, {"event_id": "", "agent": "calculator", "input": "x"}) is None
    assert (
        planner.start(
            runtime, {"event_id": "e", "agent": "calculator", "input": "x", "schema_version": 2}
        )
        is None
    )
    assert (
        planner.start(
            runtime, {"event_id": "e", "agent": "calculator", "input": "x", "surprise": 1}
        )
        is None
    )
    assert planner.start(runtime, "just a string") is None
    rejected = runtime.store.rejections.recent()
    assert len(rejected) == 4
    reasons = [r["reason"] for r in reversed(rejected)]
    assert all(r.startswith("malformed TaskEvent: ") for r in reasons)
    assert "event_id" in reasons[0]
    assert "schema_version" in reasons[1]
    assert "surprise" in reasons[2]
    assert reasons[0].endswith("fix the publisher")
    assert json.loads(rejected[-1]["payload"]) == {
        "event_id": "",
        "agent": "calculator",
        "input": "x",
    }
    assert runtime.store.recent() == []
    assert queued(runtime, PLAN_QUEUE) == []


def test_unknown_agent_is_rejected_and_recorded(runtime: Runtime) -> None:
    event = {"event_id": "evt-ghost", "agent": "nobody_by_this_name", "input": "hello"}
    assert planner.start(runtime, event) is None
    (entry,) = runtime.store.rejections.recent()
    assert "evt-ghost" in entry["reason"]
    assert "agent 'nobody_by_this_name' is not registered" in entry["reason"]
    assert "calculator" in entry["reason"]  # lists the known agents
    assert json.loads(entry["payload"]) == event
    assert runtime.store.recent() == []
    assert runtime.store.get(run_id_for("evt-ghost")) is None


def test_oversized_event_is_rejected(redis_url: str) -> None:
    rt = Runtime(Settings(redis_url=redis_url, max_event_bytes=300))
    big = {"event_id": "evt-big", "agent": "calculator", "input": "x" * 400}
    assert planner.start(rt, big) is None
    (entry,) = rt.store.rejections.recent()
    assert "over the 300-byte cap" in entry["reason"]
    assert "TETHER_MAX_EVENT_BYTES" in entry["reason"]
    assert len(entry["payload"]) <= 4096
    assert rt.store.get(run_id_for("evt-big")) is None

    small = {"event_id": "evt-small", "agent": "calculator", "input": "x" * 100}
    assert planner.start(rt, small) == run_id_for("evt-small")
    assert len(rt.store.rejections.recent()) == 1


def test_event_budget_narrows_but_never_widens(runtime: Runtime) -> None:
    wide = planner.start(runtime, {**calculator_event("evt-wide"), "budget": {"max_steps": 1000}})
    narrow = planner.start(
        runtime, {**calculator_event("evt-narrow"), "budget": {"max_steps": 3, "max_tokens": 5000}}
    )
    assert wide is not None and narrow is not None
    assert runtime.store.load(wide).limits.max_steps == 20  # the agent's default budget
    limits = runtime.store.load(narrow).limits
    assert (limits.max_steps, limits.max_tokens, limits.max_tool_calls) == (3, 5000, 40)


# invalid model output ------------------------------------------------------------------


def test_malformed_tool_call_is_fed_back_to_the_model(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime, {"event_id": "evt-fix", "agent": "self_correcting", "input": "What is 2 + 3?"}
    )
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.step == 1
    assert state.status == RunStatus.running
    assert state.pending_actions == []
    assert state.invalid_calls == 1
    assert runtime.store.budgets.usage(run_id).tool_calls == 0

    assistant, feedback = state.messages[-2], state.messages[-1]
    assert assistant.role == "assistant"
    assert assistant.tool_calls is not None
    call_id = assistant.tool_calls[0].id
    assert feedback.role == "tool"
    assert feedback.tool_call_id == call_id
    error = json.loads(feedback.content or "")["error"]
    assert "tool 'add'" in error
    assert "not valid JSON" in error

    invalid = [e for _, e in runtime.store.log.read(run_id) if e.kind == "tool_call_invalid"]
    assert len(invalid) == 1
    assert invalid[0].step == 0
    assert invalid[0].data["tool_call_id"] == call_id
    assert invalid[0].data["error"] == error
    assert queued(runtime, TOOLS_QUEUE) == []
    assert queued(runtime, PLAN_QUEUE) == [(STEP, {"run_id": run_id, "step": 1})]


def test_self_correcting_run_recovers_and_succeeds(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime, {"event_id": "evt-fix2", "agent": "self_correcting", "input": "What is 2 + 3?"}
    )
    assert run_id is not None
    planner.plan(runtime, run_id, 1)  # wrong argument type
    planner.plan(runtime, run_id, 2)  # unknown tool
    state = runtime.store.load(run_id)
    assert state.invalid_calls == 3
    errors = [json.loads(m.content or "")["error"] for m in state.messages if m.role == "tool"]
    assert "a: Input should be a valid integer" in errors[1]
    assert "tool 'multiply' does not exist for agent 'self_correcting'" in errors[2]

    planner.plan(runtime, run_id, 3)  # a valid call at last
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_tools
    (action,) = state.pending_actions
    assert action.action_id == f"{run_id}:3:0"
    observe(runtime, observation_for(action, 5))
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.succeeded
    assert state.result == "2 + 3 = 5"
    assert kinds(runtime, run_id).count("tool_call_invalid") == 3


def test_too_many_invalid_answers_escalate_as_repeated_failure(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime, {"event_id": "evt-bad", "agent": always_invalid.name, "input": "go"}
    )
    assert run_id is not None
    assert runtime.store.load(run_id).status == RunStatus.running
    planner.plan(runtime, run_id, 1)
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_human
    (wait,) = state.awaiting_human
    assert wait.kind == EscalationKind.repeated_failure
    assert wait.action is None
    assert "answered unusably 2 times in a row" in wait.reason
    ((task, kwargs),) = [q for q in queued(runtime, ESCALATIONS_QUEUE)]
    assert task == ESCALATE
    assert Escalation.model_validate(kwargs["escalation"]).kind == EscalationKind.repeated_failure

    # A human answers: the model gets the answer and a fresh allowance of attempts.
    escalation = wait.escalation(run_id, state.agent)
    answer = Decision(
        escalation_id=wait.escalation_id, verdict=Verdict.answer, by="ops", answer="use add"
    )
    record_decision(runtime, escalation, answer)
    planner.resume(runtime, escalation, answer)
    state = runtime.store.load(run_id)
    assert state.awaiting_human == []
    assert any(m.role == "user" and m.content == "ops answered: use add" for m in state.messages)
    assert kinds(runtime, run_id).count("resumed") == 1


def test_rejecting_a_repeated_failure_ends_the_run_rejected(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime, {"event_id": "evt-bad-2", "agent": always_invalid.name, "input": "go"}
    )
    assert run_id is not None
    planner.plan(runtime, run_id, 1)
    (wait,) = runtime.store.load(run_id).awaiting_human
    reject = Decision(
        escalation_id=wait.escalation_id, verdict=Verdict.reject, by="ops", reason="broken model"
    )
    record_decision(runtime, wait.escalation(run_id, always_invalid.name), reject)
    planner.resume(runtime, wait.escalation(run_id, always_invalid.name), reject)
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.rejected
    assert state.error is not None
    assert state.error.category == ErrorCategory.human_rejected
    assert "broken model" in state.error.message
    assert state.partial_result is not None


# budgets -------------------------------------------------------------------------------


def test_looper_ends_budget_exhausted_with_a_partial_result(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime,
        {
            "event_id": "evt-loop",
            "agent": "looper",
            "input": "keep going",
            "budget": {"max_steps": 2},
        },
    )
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.limits.max_steps == 2
    assert state.limits.max_tool_calls == 50  # the agent's own limit still applies

    outputs = []
    for _ in range(10):
        state = runtime.store.load(run_id)
        if state.terminal:
            break
        assert state.status == RunStatus.waiting_tools
        (action,) = state.pending_actions
        output = action.arguments["a"] + action.arguments["b"]
        outputs.append(output)
        observe(runtime, observation_for(action, output))

    state = runtime.store.load(run_id)
    assert state.status == RunStatus.budget_exhausted
    assert len(outputs) == 2
    assert state.step == 2
    assert state.result is None
    assert state.pending_actions == []
    assert state.error is not None
    assert state.error.category == ErrorCategory.budget
    assert "before model call 2" in state.error.message
    assert "max_steps=2" in state.error.message
    assert state.partial_result == "\n".join(f"add -> {o}" for o in outputs)
    assert runtime.store.budgets.usage(run_id).steps == 2

    finished = [e for _, e in runtime.store.log.read(run_id) if e.kind == "run_finished"]
    assert len(finished) == 1
    assert finished[0].data["status"] == "budget_exhausted"
    assert finished[0].data["error"]["category"] == "budget"
    assert finished[0].data["partial_result"] == state.partial_result


def test_tool_call_budget_exhaustion(runtime: Runtime) -> None:
    run_id = planner.start(
        runtime,
        {
            "event_id": "evt-tools",
            "agent": "looper",
            "input": "keep going",
            "budget": {"max_tool_calls": 1},
        },
    )
    assert run_id is not None
    (action,) = runtime.store.load(run_id).pending_actions
    observe(runtime, observation_for(action, 4))
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.budget_exhausted
    assert state.error is not None
    assert state.error.category == ErrorCategory.budget
    assert "max_tool_calls=1" in state.error.message
    assert state.partial_result is not None
    assert state.partial_result.startswith("add -> 4")
    assert state.messages[-1].role == "assistant"  # the refused turn is kept for the audit
    assert runtime.store.budgets.usage(run_id).tool_calls == 1


# approvals -----------------------------------------------------------------------------


def test_approval_required_action_waits_for_a_human(runtime: Runtime) -> None:
    run_id = planner.start(runtime, {"event_id": "evt-pay", "agent": "payer", "input": "pay"})
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_human
    assert state.pending_actions == []
    ((action, kind),) = [(w.action, w.kind) for w in state.awaiting_human]
    assert kind == EscalationKind.approval_required
    assert queued(runtime, TOOLS_QUEUE) == []
    ((task, kwargs),) = queued(runtime, ESCALATIONS_QUEUE)
    assert task == ESCALATE
    escalation = Escalation.model_validate(kwargs["escalation"])
    assert escalation.escalation_id == "esc_" + action.action_id.replace(":", "_")
    assert escalation.action == action

    approve = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    record_decision(runtime, escalation, approve)
    planner.resume(runtime, escalation, approve)
    planner.resume(runtime, escalation, approve)  # redelivered decision
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_tools
    assert state.pending_actions == [action]
    assert state.awaiting_human == []
    assert kinds(runtime, run_id).count("resumed") == 1
    assert [kw["action"]["action_id"] for _, kw in queued(runtime, TOOLS_QUEUE)] == [
        action.action_id
    ]


# lost messages --------------------------------------------------------------------


def test_a_run_whose_message_was_lost_is_redriven_once_per_stall(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event("evt-lost"))
    (action,) = runtime.store.load(run_id).pending_actions
    runtime.store.client.delete("tether.tools")  # its action's message is lost
    assert planner.sweep(runtime, stalled_after_s=60) == []  # not stalled yet
    assert planner.sweep(runtime, stalled_after_s=0) == [run_id]
    ((task, kwargs),) = queued(runtime, "tether.tools")
    assert (task, kwargs["action"]["action_id"]) == (EXECUTE, action.action_id)
    assert planner.sweep(runtime, stalled_after_s=1) == []  # once per stall, not every sweep
    assert "run_redriven" in kinds(runtime, run_id)

    observe(runtime, observation_for(action, 5))
    assert runtime.store.load(run_id).status == RunStatus.succeeded
    assert planner.sweep(runtime, stalled_after_s=0) == []  # finished runs leave the index
    assert runtime.store.client.zscore(keys.ACTIVE_RUNS, run_id) is None


def test_a_queued_run_that_never_planned_gets_its_first_step_again(runtime: Runtime) -> None:
    event, state = unplanned_calculator_run("evt-stuck")
    runtime.store.create(event, state)  # the intake died before planning
    assert planner.sweep(runtime, stalled_after_s=0) == [state.run_id]
    assert queued(runtime, "tether.plan") == [(STEP, {"run_id": state.run_id, "step": 0})]


def test_a_run_waiting_for_a_human_is_redriven_only_where_a_message_went_missing(
    runtime: Runtime,
) -> None:
    run_id = planner.start(runtime, {"event_id": "evt-pay-lost", "agent": "payer", "input": "pay"})
    assert run_id is not None
    ((_, kwargs),) = queued(runtime, ESCALATIONS_QUEUE)
    escalation = Escalation.model_validate(kwargs["escalation"])
    runtime.store.client.delete(ESCALATIONS_QUEUE)  # lost before the service recorded it

    assert planner.sweep(runtime, stalled_after_s=0) == [run_id]
    ((task, kwargs),) = queued(runtime, ESCALATIONS_QUEUE)
    assert (task, kwargs["escalation"]["escalation_id"]) == (ESCALATE, escalation.escalation_id)
    runtime.store.client.delete(ESCALATIONS_QUEUE)

    records.open_escalation(runtime, escalation)  # recorded: now it is a human's turn
    assert planner.sweep(runtime, stalled_after_s=0) == []  # however long they take
    assert queued(runtime, ESCALATIONS_QUEUE) == []
    assert kinds(runtime, run_id).count("run_redriven") == 1

    approve = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    records.decide(runtime, approve)
    runtime.store.client.delete(PLAN_QUEUE)  # the decision's resume is lost on its way back
    assert planner.sweep(runtime, stalled_after_s=0) == [run_id]
    ((task, kwargs),) = queued(runtime, PLAN_QUEUE)
    assert (task, kwargs["decision"]["verdict"]) == (RESUME, "approve")


def test_a_run_that_stays_stalled_through_its_redrives_ends_failed(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event("evt-stuck-for-good"))
    for _ in range(2):  # each re-drive's message fails too (here: is lost again)
        runtime.store.client.delete(TOOLS_QUEUE)
        assert planner.sweep(runtime, stalled_after_s=0, max_redrives=2) == [run_id]
    runtime.store.client.delete(TOOLS_QUEUE)
    assert planner.sweep(runtime, stalled_after_s=0, max_redrives=2) == []
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.failed
    assert state.error is not None and state.error.category == ErrorCategory.internal
    assert (
        "through 2 re-drives" in state.error.message and "tether dead list" in state.error.message
    )
    assert queued(runtime, TOOLS_QUEUE) == []
    planner.sweep(runtime, stalled_after_s=0)  # the finished run leaves the index
    assert runtime.store.client.zscore(keys.ACTIVE_RUNS, run_id) is None
    assert runtime.store.client.hget(keys.REDRIVES, run_id) is None


def test_a_run_behind_a_backlog_is_neither_failed_nor_sent_again(runtime: Runtime) -> None:
    event, state = unplanned_calculator_run("evt-backlogged")
    runtime.store.create(event, state)
    others = [calculator_event(f"evt-ahead-{i}") for i in range(3)]
    for other in others:
        runtime.publish_event(TaskEvent.model_validate(other))  # the backlog ahead of it
    for _ in range(4):
        assert planner.sweep(runtime, stalled_after_s=0, max_redrives=1) == []
    assert len(queued(runtime, PLAN_QUEUE)) == 3  # nothing added to the backlog
    assert runtime.store.load(state.run_id).status == RunStatus.queued
    assert kinds(runtime, state.run_id).count("run_not_redriven") == 4

    runtime.store.client.delete(PLAN_QUEUE)  # the backlog drained, its message lost after all
    assert planner.sweep(runtime, stalled_after_s=0, max_redrives=1) == [state.run_id]
    assert queued(runtime, PLAN_QUEUE) == [(STEP, {"run_id": state.run_id, "step": 0})]


def test_a_tool_call_held_by_a_live_executor_is_not_a_stall(runtime: Runtime) -> None:
    run_id = planner.start(runtime, calculator_event("evt-long-tool"))
    (action,) = runtime.store.load(run_id).pending_actions
    runtime.store.client.delete(TOOLS_QUEUE)  # taken by an executor that runs it for long
    runtime.store.client.set(keys.action_lock(action.action_id), "worker", px=10_000)
    for _ in range(3):
        assert planner.sweep(runtime, stalled_after_s=0, max_redrives=1) == []
    assert runtime.store.load(run_id).status == RunStatus.waiting_tools
    assert queued(runtime, TOOLS_QUEUE) == []


# a commit and what describes it ---------------------------------------------------


def _payer_escalation(runtime: Runtime, event_id: str) -> tuple[str, Escalation]:
    run_id = planner.start(runtime, {"event_id": event_id, "agent": "payer", "input": "pay"})
    assert run_id is not None
    ((_, kwargs),) = queued(runtime, ESCALATIONS_QUEUE)
    runtime.store.client.delete(ESCALATIONS_QUEUE)
    return run_id, Escalation.model_validate(kwargs["escalation"])


def test_an_escalation_record_its_indexes_and_log_entry_are_one_write(runtime: Runtime) -> None:
    run_id, escalation = _payer_escalation(runtime, "evt-esc-atomic")
    key = keys.escalation(escalation.escalation_id)
    # A competing record at version 1: this opening loses, and must write nothing at all.
    runtime.store.client.hset(key, mapping={"doc": "{}", "version": 1})
    records.open_escalation(runtime, escalation)
    assert runtime.store.client.zscore(keys.PENDING_ESCALATIONS, escalation.escalation_id) is None
    assert runtime.store.client.zscore(keys.ALL_ESCALATIONS, escalation.escalation_id) is None
    assert "escalation_opened" not in kinds(runtime, run_id)

    runtime.store.client.delete(key)
    records.open_escalation(runtime, escalation)
    records.open_escalation(runtime, escalation)  # redelivered
    assert runtime.store.client.zscore(keys.PENDING_ESCALATIONS, escalation.escalation_id)
    assert runtime.store.client.zscore(keys.ALL_ESCALATIONS, escalation.escalation_id)
    assert kinds(runtime, run_id).count("escalation_opened") == 1


def test_ending_a_run_closes_its_escalations_in_the_same_commit(runtime: Runtime) -> None:
    run_id, escalation = _payer_escalation(runtime, "evt-esc-closed")
    records.open_escalation(runtime, escalation)
    ended = client.cancel(run_id, by="ops", runtime=runtime)
    assert ended is not None and ended.status == RunStatus.cancelled

    assert runtime.store.client.zscore(keys.PENDING_ESCALATIONS, escalation.escalation_id) is None
    record, _ = records.load(runtime, escalation.escalation_id)
    assert record.status == "closed"
    assert runtime.store.client.ttl(keys.escalation(escalation.escalation_id)) > 0
    approve = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    assert records.decide(runtime, approve) is None  # refused: the run is over
    assert queued(runtime, PLAN_QUEUE) == []
    assert kinds(runtime, run_id).count("run_finished") == 1


def test_an_escalation_still_in_flight_when_its_run_ends_is_never_opened(
    runtime: Runtime,
) -> None:
    run_id, escalation = _payer_escalation(runtime, "evt-esc-late")
    client.cancel(run_id, by="ops", runtime=runtime)
    records.open_escalation(runtime, escalation)  # the message arrives after the end
    assert runtime.store.client.zscore(keys.PENDING_ESCALATIONS, escalation.escalation_id) is None
    assert records.list_escalations(runtime) == []
