"""Redeliveries and forged messages on a real Redis, handlers called in this process.

Each test stands for a mutant of the executor or the planner that the
integration tests would let live (issue 22, item 14): a redelivery after a
lapsed lease that runs the tool again instead of returning its stored result,
a tool call or a step counted per delivery or on a lost commit, a redelivered
decision that sends no resume. The rest pin what a message meets when it looks
almost right: a decision that differs from the recorded one is refused; what is
genuine but late or skewed is not counted as forged: an observation that differs
from the stored result (the loser of the first-writer-wins store), an action the
committed state holds pending for a tool its agent no longer declares (a rolling
deploy), a copy of an attempt that asked a human arriving after its approved
re-run was queued, and a decision recorded by an operator removed since.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.unit.test_planner_fencing import queued
from tether import planner
from tether.agent import definition as agents
from tether.agent.definition import Agent, load_agent_modules, register
from tether.agent.tools import ToolContext, tool
from tether.config import Settings
from tether.escalation import operators
from tether.escalation import records as escalations
from tether.executor import actions as executor
from tether.models import ModelResponse, ScriptedModel, text, tool_call
from tether.planner import inbox
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import ChatMessage, RunStatus
from tether.transport.celery_app import EXECUTE, OBSERVE, PLAN_QUEUE, RESUME
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    EscalationKind,
    GuardrailFinding,
    GuardrailOutcome,
    GuardrailPlace,
    Observation,
    ToolAction,
    Verdict,
)
from tether.worker import deadletters

# What a tool or the model does in the middle of its call, once: a second delivery
# of the same message that runs meanwhile, as after a stalled worker's lease lapsed.
MEANWHILE: list[Callable[[], object]] = []
ran: list[str] = []


def _meanwhile() -> None:
    if MEANWHILE:
        MEANWHILE.pop()()


@tool(idempotent=False)
def trust_transfer(ctx: ToolContext, cents: int) -> str:
    """Move money: a side effect that must not happen twice."""
    ran.append(ctx.action_id)
    return f"moved {cents}"


@tool
def trust_lookup(ctx: ToolContext, key: str) -> str:
    """Look something up (idempotent)."""
    ran.append(ctx.action_id)
    _meanwhile()
    return f"found {key}"


def _then_answer(name: str, arguments: dict[str, Any]) -> Callable[[list[ChatMessage]], Any]:
    def script(messages: list[ChatMessage]) -> ModelResponse:
        _meanwhile()
        if any(m.role == "tool" for m in messages):
            return text("done")
        return tool_call(name, arguments)

    return script


AGENTS = [
    Agent(
        name="trust_transferer",
        instructions="Transfer.",
        model=ScriptedModel(_then_answer("trust_transfer", {"cents": 5}), label="trust"),
        tools=[trust_transfer],
    ),
    Agent(
        name="trust_looker",
        instructions="Look it up.",
        model=ScriptedModel(_then_answer("trust_lookup", {"key": "k"}), label="trust"),
        tools=[trust_lookup],
    ),
]


@pytest.fixture(autouse=True)
def _agents() -> Iterator[None]:
    load_agent_modules(["tests.agents"])
    for agent in AGENTS:
        register(agent)
    MEANWHILE.clear()
    ran.clear()
    yield
    MEANWHILE.clear()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def start(rt: Runtime, agent: str, event_id: str) -> str:
    run_id = planner.start(rt, {"event_id": event_id, "agent": agent, "input": "go"})
    assert run_id is not None
    return run_id


def sent_observations(rt: Runtime) -> list[Observation]:
    return [
        Observation.model_validate(kwargs["observation"])
        for task, kwargs in queued(rt, PLAN_QUEUE)
        if task == OBSERVE
    ]


def tool_calls_logged(rt: Runtime, run_id: str) -> int:
    return sum(1 for _, e in rt.store.log.read(run_id) if e.kind == "tool_call")


def test_a_redelivery_after_a_lapsed_lease_sends_the_stored_result(runtime: Runtime) -> None:
    """Mutant: executor._perform without ``if stored is not None: return stored``."""
    run_id = start(runtime, "trust_transferer", "evt-trust-lapsed")
    (action,) = runtime.store.load(run_id).pending_actions
    executor.execute(runtime, action)
    stored = runtime.store.results.get(action.action_id)
    assert stored is not None and stored.ok
    # Its worker stalled after sending: the lease lapses, and the message comes back.
    runtime.store.client.delete(keys.action_lock(action.action_id))
    executor.execute(runtime, action)
    assert ran == [action.action_id]
    # The same result both times: no question for a human about a call that completed.
    assert sent_observations(runtime) == [stored, stored]
    assert tool_calls_logged(runtime, run_id) == 1


def test_a_tool_call_run_by_two_deliveries_is_counted_once(runtime: Runtime) -> None:
    """Mutant: metrics.tool_result_stored not guarded by ``stored is observation``."""
    run_id = start(runtime, "trust_looker", "evt-trust-twice")
    (action,) = runtime.store.load(run_id).pending_actions

    def redelivered() -> None:
        # The first delivery stalls mid-call past its lease; the second runs it whole.
        runtime.store.client.delete(keys.action_lock(action.action_id))
        executor.execute(runtime, action)

    MEANWHILE.append(redelivered)
    labels = {"agent": "trust_looker", "tool": "trust_lookup", "outcome": "ok"}
    before = sample("tether_tool_calls_total", **labels)
    latency = sample("tether_tool_latency_seconds_count", agent="trust_looker", tool="trust_lookup")
    executor.execute(runtime, action)
    assert ran == [action.action_id, action.action_id]  # idempotent: it may run twice
    assert sample("tether_tool_calls_total", **labels) - before == 1
    assert (
        sample("tether_tool_latency_seconds_count", agent="trust_looker", tool="trust_lookup")
        == latency + 1
    )
    # The first stored result is the action's, and the one both deliveries sent.
    stored = runtime.store.results.get(action.action_id)
    assert sent_observations(runtime) == [stored, stored]


def test_a_step_whose_commit_lost_counts_nothing(runtime: Runtime) -> None:
    """Mutant: step metrics counted whether or not the step's commit won (step.py)."""
    run_id = run_id_for("evt-trust-step")
    # While step 0's model call is out, a second delivery of step 0 plans and commits it.
    MEANWHILE.append(lambda: planner.plan(runtime, run_id, 0))
    version = AGENTS[0].version
    labels = {"agent": "trust_transferer", "version": version}
    before = sample("tether_planner_steps_total", **labels)
    start(runtime, "trust_transferer", "evt-trust-step")
    state = runtime.store.load(run_id)
    assert state.agent_version == version
    assert state.step == 1 and len(state.pending_actions) == 1
    assert [e.kind for _, e in runtime.store.log.read(run_id)].count("decision") == 1
    assert sample("tether_planner_steps_total", **labels) - before == 1


def test_a_redelivered_decision_sends_its_resume_again(runtime: Runtime) -> None:
    """Mutant: escalations.decide's redelivery branch without ``rt.send_resume``."""
    run_id = start(runtime, "payer", "evt-trust-resume")
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "payer")
    escalations.open_escalation(runtime, escalation)
    decision = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="ops")
    assert escalations.decide(runtime, decision) is not None
    # The resume was lost (its worker died after the record's commit, before sending).
    runtime.store.client.delete(PLAN_QUEUE)
    assert escalations.decide(runtime, decision) is not None  # the decision, redelivered
    resumes = [kwargs for task, kwargs in queued(runtime, PLAN_QUEUE) if task == RESUME]
    assert [Decision.model_validate(r["decision"]) for r in resumes] == [decision]
    planner.resume(runtime, escalation, Decision.model_validate(resumes[0]["decision"]))
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_tools
    assert [a.action_id for a in state.pending_actions] == [wait.action.action_id]  # type: ignore[union-attr]


def test_a_resume_unlike_the_recorded_decision_is_refused(runtime: Runtime) -> None:
    run_id = start(runtime, "payer", "evt-trust-differs")
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "payer")
    escalations.open_escalation(runtime, escalation)
    rejected = Decision(escalation_id=escalation.escalation_id, verdict=Verdict.reject, by="ops")
    assert escalations.decide(runtime, rejected) is not None
    before = sample("tether_forged_messages_total", queue=RESUME, reason="differs_from_record")
    approved = rejected.model_copy(update={"verdict": Verdict.approve})
    planner.resume(runtime, escalation, approved)
    assert runtime.store.load(run_id).status == RunStatus.waiting_human
    assert sample("tether_forged_messages_total", queue=RESUME, reason="differs_from_record") == (
        before + 1
    )
    # The recorded decision itself goes through.
    planner.resume(runtime, escalation, rejected)
    assert runtime.store.load(run_id).status == RunStatus.rejected


def forged_total() -> float:
    return sum(
        m.value
        for family in REGISTRY.collect()
        if family.name == "tether_forged_messages"
        for m in family.samples
        if m.name == "tether_forged_messages_total"
    )


def test_an_observation_unlike_the_stored_result_goes_on_as_the_stored_one(
    runtime: Runtime,
) -> None:
    """The loser of the first-writer-wins store sends its own outcome (save_result hands
    the caller's observation back when it defers the write): no forgery; the stored
    result is what the planner records."""
    run_id = start(runtime, "trust_looker", "evt-trust-obs")
    (action,) = runtime.store.load(run_id).pending_actions
    executor.execute(runtime, action)
    (stored,) = sent_observations(runtime)
    before = forged_total()
    loser = stored.model_copy(update={"latency_ms": stored.latency_ms + 7.5, "attempts": 2})
    planner.observe(runtime, loser)
    done = runtime.store.load(run_id)
    assert done.status == RunStatus.succeeded
    assert done.completed_actions == [stored]
    assert forged_total() == before
    assert [d for d in deadletters.list_dead(runtime) if d.run_id == run_id] == []


def test_an_observation_with_nothing_stored_is_refused(runtime: Runtime) -> None:
    run_id = start(runtime, "trust_looker", "evt-trust-obs-none")
    (action,) = runtime.store.load(run_id).pending_actions
    before = sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor")
    lie = Observation(
        action_id=action.action_id,
        run_id=run_id,
        step=action.step,
        tool=action.tool,
        tool_call_id=action.tool_call_id,
        ok=True,
        output="the attacker's result",
    )
    version = runtime.store.load(run_id).version
    planner.observe(runtime, lie)
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_tools and state.version == version
    assert not any(e.kind == "observation" for _, e in runtime.store.log.read(run_id))
    assert sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor") == (
        before + 1
    )


def _executed(rt: Runtime, event_id: str) -> tuple[str, Observation]:
    """A trust_looker run whose one action the executor ran: its id and what it sent."""
    run_id = start(rt, "trust_looker", event_id)
    (action,) = rt.store.load(run_id).pending_actions
    executor.execute(rt, action)
    (sent,) = sent_observations(rt)
    return run_id, sent


def test_an_observation_as_stored_is_vouched_for_by_its_commit_without_a_read(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case: the message is the stored result byte for byte, and the commit
    checks that itself, so no read of the stored result goes first."""
    run_id, sent = _executed(runtime, "evt-trust-vouch-commit")

    def no_read(*_: object) -> None:
        raise AssertionError("the stored result was read before the commit")

    monkeypatch.setattr(inbox, "_vouched", no_read)
    planner.observe(runtime, sent)
    done = runtime.store.load(run_id)
    assert done.status == RunStatus.succeeded
    assert done.completed_actions == [sent]


def test_an_observation_forged_over_a_stored_result_is_never_recorded_as_it_says(
    runtime: Runtime,
) -> None:
    """Mutant: the observation's commit without its check of the stored result
    (versioned.lua's held keys, or inbox passing no ``holding``)."""
    run_id, stored = _executed(runtime, "evt-trust-vouch-forged")
    lie = stored.model_copy(update={"output": "the attacker's result"})
    planner.observe(runtime, lie)
    done = runtime.store.load(run_id)
    assert done.status == RunStatus.succeeded
    assert done.completed_actions == [stored]
    assert not any("attacker" in (m.content or "") for m in done.messages)
    logged = [e for _, e in runtime.store.log.read(run_id) if e.kind == "observation"]
    assert len(logged) == 1


def _blocked(action: ToolAction, output: str) -> Observation:
    """An observation of ``action`` whose result a guardrail blocked."""
    return Observation(
        action_id=action.action_id,
        run_id=action.run_id,
        step=action.step,
        tool=action.tool,
        tool_call_id=action.tool_call_id,
        ok=True,
        output=output,
        guardrails=[
            GuardrailFinding(
                place=GuardrailPlace.tool_result,
                guardrail="length",
                outcome=GuardrailOutcome.block,
                tool=action.tool,
                tool_call_id=action.tool_call_id,
            )
        ],
    )


def test_a_blocked_result_ends_the_run_only_as_the_executor_stored_it(runtime: Runtime) -> None:
    """A blocked result ends the run outside the observation's commit, so it is read and
    vouched for first: a forged one with nothing stored ends nothing; the stored one
    ends the run."""
    run_id = start(runtime, "trust_looker", "evt-trust-vouch-blocked")
    (action,) = runtime.store.load(run_id).pending_actions
    before = sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor")
    planner.observe(runtime, _blocked(action, "forged"))
    assert runtime.store.load(run_id).status == RunStatus.waiting_tools
    assert sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor") == (
        before + 1
    )
    stored = runtime.store.results.save(_blocked(action, "too long"))
    planner.observe(runtime, stored)
    ended = runtime.store.load(run_id)
    assert ended.status == RunStatus.rejected and ended.completed_actions == []


def test_a_replayed_observation_is_ignored_and_a_forged_one_for_no_action_refused(
    runtime: Runtime,
) -> None:
    """A run that declines an observation says so only of one vouched for: a replay of
    the stored result is logged as ignored; a claim for an action with no stored result
    is refused as forged and logs nothing in the run."""
    run_id, sent = _executed(runtime, "evt-trust-vouch-replay")
    planner.observe(runtime, sent)
    assert runtime.store.load(run_id).status == RunStatus.succeeded
    before = forged_total()
    planner.observe(runtime, sent)
    ignored = [e for _, e in runtime.store.log.read(run_id) if e.kind == "observation_ignored"]
    assert [e.data["action_id"] for e in ignored] == [sent.action_id]
    assert forged_total() == before

    refused = sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor")
    planner.observe(runtime, sent.model_copy(update={"action_id": f"{run_id}:0:9"}))
    again = [e for _, e in runtime.store.log.read(run_id) if e.kind == "observation_ignored"]
    assert len(again) == 1
    assert sample("tether_forged_messages_total", queue=OBSERVE, reason="not_from_executor") == (
        refused + 1
    )


def test_a_pending_action_for_a_tool_no_longer_declared_is_deploy_skew(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed state holds the action, planned while the agent declared the tool; a
    rolling deploy took the tool away since: not run, and the model hears why (as for a
    removed agent), rather than a forged-message refusal."""
    run_id = start(runtime, "trust_looker", "evt-trust-undeclared")
    (action,) = runtime.store.load(run_id).pending_actions
    looker = AGENTS[1]
    redeployed = Agent(name=looker.name, instructions=looker.instructions, model=looker.model)
    monkeypatch.setitem(agents._loaded, "trust_looker", redeployed)
    before = forged_total()
    executor.execute(runtime, action)
    assert ran == []
    assert forged_total() == before
    assert not any(e.kind == "forged_message_refused" for _, e in runtime.store.log.read(run_id))
    (observation,) = sent_observations(runtime)
    assert not observation.ok
    assert observation.error_category == ErrorCategory.tool_permanent
    assert "no longer declares tool 'trust_lookup'" in (observation.error or "")
    assert "redeploy" in (observation.error or "")
    planner.observe(runtime, observation)  # the model goes on without it
    assert runtime.store.load(run_id).status == RunStatus.succeeded


def test_a_late_redelivery_of_an_action_a_human_was_asked_about_is_no_forgery(
    runtime: Runtime,
) -> None:
    run_id = start(runtime, "trust_transferer", "evt-trust-asked")
    (action,) = runtime.store.load(run_id).pending_actions
    # An earlier attempt died mid-call: its in-flight mark is all it left.
    runtime.store.client.set(keys.action_inflight(action.action_id), "1")
    executor.execute(runtime, action)
    (asked,) = sent_observations(runtime)
    assert asked.needs_human == "unsafe_retry"
    planner.observe(runtime, asked)  # the planner takes it: the executor recorded the question
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_human and state.pending_actions == []
    # The attempt that asked dies before its ack: the action comes back.
    before = sample("tether_forged_messages_total", queue=EXECUTE, reason="not_pending")
    runtime.store.client.delete(keys.action_lock(action.action_id))
    executor.execute(runtime, action)
    assert ran == []
    assert sample("tether_forged_messages_total", queue=EXECUTE, reason="not_pending") == before
    assert [d for d in deadletters.list_dead(runtime) if d.run_id == run_id] == []
    skipped = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "action_skipped"]
    assert skipped and "human" in str(skipped[-1]["reason"])
    # A question the executor never asked is refused, though.
    forged = asked.model_copy(update={"needs_human": EscalationKind.approval_required})
    planner.observe(runtime, forged)
    refusals = [
        e.data for _, e in runtime.store.log.read(run_id) if e.kind == "forged_message_refused"
    ]
    assert [r["reason"] for r in refusals] == ["not_from_executor"]


def test_a_question_about_one_attempt_vouches_for_no_other(runtime: Runtime) -> None:
    run_id = start(runtime, "trust_transferer", "evt-trust-attempts")
    (action,) = runtime.store.load(run_id).pending_actions
    runtime.store.client.set(keys.action_inflight(action.action_id), "1")
    executor.execute(runtime, action)
    (asked,) = sent_observations(runtime)
    planner.observe(runtime, asked)
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "trust_transferer")
    escalations.open_escalation(runtime, escalation)
    approve = Decision(escalation_id=wait.escalation_id, verdict=Verdict.approve, by="ops")
    assert escalations.decide(runtime, approve) is not None
    planner.resume(runtime, escalation, approve)
    (rerun,) = runtime.store.load(run_id).pending_actions
    assert rerun.rerun_approval == wait.escalation_id
    # The first attempt's question again, now that the approved re-run is pending.
    planner.observe(runtime, asked)
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.waiting_tools and state.pending_actions == [rerun]
    refusals = [
        e.data for _, e in runtime.store.log.read(run_id) if e.kind == "forged_message_refused"
    ]
    assert [r["reason"] for r in refusals] == ["differs_from_pending"]
    # The approved re-run itself runs, once.
    runtime.store.client.delete(PLAN_QUEUE)
    executor.execute(runtime, rerun)
    assert ran == [action.action_id]
    (result,) = sent_observations(runtime)
    assert result.ok
    planner.observe(runtime, result)
    assert runtime.store.load(run_id).status == RunStatus.succeeded


def test_a_copy_of_the_attempt_that_asked_arriving_after_its_rerun_is_no_forgery(
    runtime: Runtime,
) -> None:
    """The first attempt asked a human, whose approval queued the re-run; then a copy of the
    first attempt (its worker died before the ack) comes back: skipped and logged."""
    run_id = start(runtime, "trust_transferer", "evt-trust-late-copy")
    (action,) = runtime.store.load(run_id).pending_actions
    runtime.store.client.set(keys.action_inflight(action.action_id), "1")
    executor.execute(runtime, action)
    (asked,) = sent_observations(runtime)
    planner.observe(runtime, asked)
    (wait,) = runtime.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "trust_transferer")
    escalations.open_escalation(runtime, escalation)
    approve = Decision(escalation_id=wait.escalation_id, verdict=Verdict.approve, by="ops")
    assert escalations.decide(runtime, approve) is not None
    planner.resume(runtime, escalation, approve)
    (rerun,) = runtime.store.load(run_id).pending_actions
    runtime.store.client.delete(PLAN_QUEUE, keys.action_lock(action.action_id))
    before = forged_total()
    executor.execute(runtime, action)  # the first attempt's copy: rerun_approval None
    assert ran == []
    assert forged_total() == before
    assert [d for d in deadletters.list_dead(runtime) if d.run_id == run_id] == []
    skipped = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "action_skipped"]
    assert skipped and wait.escalation_id in str(skipped[-1]["reason"])
    assert sent_observations(runtime) == []
    # The approved re-run still runs, once.
    executor.execute(runtime, rerun)
    assert ran == [action.action_id]
    (result,) = sent_observations(runtime)
    planner.observe(runtime, result)
    assert runtime.store.load(run_id).status == RunStatus.succeeded


@pytest.mark.parametrize("later", ["alice_removed", "no_file"])
def test_a_decision_by_an_operator_removed_since_still_resumes(
    redis_url: str, tmp_path: Path, later: str
) -> None:
    """The escalation service checked alice's signature when it recorded her decision; the
    planner trusts the record, whatever the operators file says now (or where it is absent:
    it is mounted only in the escalation service)."""
    token, key = operators.new_token()
    path = tmp_path / "operators.json"
    path.write_text(json.dumps({"operators": [{"name": "alice", "key_sha256": key}]}))
    deciding = Runtime(Settings(redis_url=redis_url, operators_file=str(path)))
    run_id = start(deciding, "payer", f"evt-trust-removed-{later}")
    (wait,) = deciding.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, "payer")
    escalations.open_escalation(deciding, escalation)
    approve = operators.sign(
        Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="alice"),
        token,
    )
    record = escalations.decide(deciding, approve)
    assert record is not None and record.status == "decided"
    if later == "alice_removed":
        _, bob = operators.new_token()
        path.write_text(json.dumps({"operators": [{"name": "bob", "key_sha256": bob}]}))
    else:
        path.unlink()
    planning = Runtime(Settings(redis_url=redis_url, operators_file=str(path)))
    before = forged_total()
    planner.resume(planning, escalation, approve)
    state = planning.store.load(run_id)
    assert state.status == RunStatus.waiting_tools
    assert [a.action_id for a in state.pending_actions] == [wait.action.action_id]  # type: ignore[union-attr]
    assert forged_total() == before
