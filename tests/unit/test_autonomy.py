"""Earned autonomy on real Redis: decisions go through records.decide, the real commit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tether import runtime as runtime_module
from tether.agent.definition import get_agent, load_agent_modules
from tether.cli.main import app
from tether.escalation import records
from tether.rollout import autonomy
from tether.rollout.autonomy import Mode
from tether.runtime import Runtime
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    ToolAction,
    Verdict,
)

AGENT = "sampling_payer"  # EarnedAutonomy(after=3, sample=0.25)


@pytest.fixture(autouse=True)
def agents() -> None:
    load_agent_modules(["tests.evaluation_agents"])


def action(action_id: str, agent: str = AGENT) -> ToolAction:
    return ToolAction(
        action_id=action_id,
        run_id=action_id.split(":")[0],
        agent=agent,
        step=0,
        tool="pay",
        tool_call_id="call_1",
        arguments={"account": "acme", "cents": 100},
        idempotent=False,
    )


def decide(rt: Runtime, action_id: str, verdict: Verdict, reason: str | None = None) -> Decision:
    escalation = Escalation(
        escalation_id=f"esc_{action_id}",
        run_id=action_id.split(":")[0],
        agent=AGENT,
        kind=EscalationKind.approval_required,
        reason="pay needs approval",
        action=action(action_id),
    )
    records.open_escalation(rt, escalation)
    decision = Decision(
        escalation_id=escalation.escalation_id, verdict=verdict, by="alice", reason=reason
    )
    records.decide(rt, decision)
    return decision


def state(rt: Runtime) -> autonomy.PolicyView:
    policy = get_agent(AGENT).autonomy
    assert policy is not None
    return autonomy.view(AGENT, "pay", policy, rt.store.client)


def ask(rt: Runtime, action_id: str) -> bool:
    return autonomy.gate(rt.store.client, get_agent(AGENT), action(action_id)).ask


def test_approvals_relax_the_policy_once_each(runtime: Runtime) -> None:
    for n in range(2):
        decide(runtime, f"run_{n}:0:0", Verdict.approve)
    assert state(runtime).mode == Mode.supervised
    assert state(runtime).record.streak == 2
    assert ask(runtime, "run_x:0:0") is True  # supervised: every call asks

    decision = decide(runtime, "run_2:0:0", Verdict.approve)
    records.decide(runtime, decision)  # a redelivered decision counts nothing more
    view = state(runtime)
    assert (view.mode, view.record.streak, view.record.approvals) == (Mode.earned, 3, 3)
    assert "3 approvals in a row (needs 3)" in view.why


def test_a_sampled_share_still_asks_and_the_same_actions_each_time(runtime: Runtime) -> None:
    for n in range(3):
        decide(runtime, f"run_{n}:0:0", Verdict.approve)
    ids = [f"run_s{n}:1:0" for n in range(400)]
    asked = [i for i in ids if ask(runtime, i)]
    assert asked == [i for i in ids if autonomy.sampled(i, 0.25)]
    assert asked == [i for i in ids if ask(runtime, i)]  # deterministic per action id
    assert 0.18 < len(asked) / len(ids) < 0.32
    sampled_gate = autonomy.gate(runtime.store.client, get_agent(AGENT), action(asked[0]))
    assert sampled_gate.reason.startswith("sampled for review")


def test_a_rejection_tightens_it_again(runtime: Runtime) -> None:
    for n in range(3):
        decide(runtime, f"run_{n}:0:0", Verdict.approve)
    assert state(runtime).mode == Mode.earned
    decide(runtime, "run_9:0:0", Verdict.reject, reason="wrong account")
    view = state(runtime)
    assert (view.mode, view.record.streak, view.record.rejections) == (Mode.supervised, 0, 1)
    assert view.record.last_rejection is not None
    assert view.record.last_rejection.by == "alice"
    assert view.record.last_rejection.ref == "esc_run_9:0:0"
    assert "tightened at" in view.why and "alice: wrong account" in view.why
    assert all(ask(runtime, f"run_t{n}:0:0") for n in range(50))


def test_a_tool_failure_tightens_it(runtime: Runtime) -> None:
    for n in range(3):
        decide(runtime, f"run_{n}:0:0", Verdict.approve)
    failed = Observation(
        action_id="run_f:1:0",
        run_id="run_f",
        step=1,
        tool="pay",
        tool_call_id="call_1",
        ok=False,
        error="tool 'pay' failed: ValueError: cannot pay -5 cents",
        error_category=ErrorCategory.tool_permanent,
    )
    budget_refusal = failed.model_copy(update={"error_category": ErrorCategory.budget})
    assert autonomy.failure_writes(get_agent(AGENT), budget_refusal) == []
    # Through the same compare-and-set the run's commit uses.
    runtime.store.docs.write(
        "tether:test:doc", "{}", 0, side_writes=autonomy.failure_writes(get_agent(AGENT), failed)
    )
    view = state(runtime)
    assert (view.mode, view.record.streak, view.record.failures) == (Mode.supervised, 0, 1)
    assert view.record.last_failure is not None
    assert "cannot pay -5 cents" in view.record.last_failure.reason


def test_cli_shows_state_and_reason(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "_runtime", runtime)
    for n in range(3):
        decide(runtime, f"run_{n}:0:0", Verdict.approve)
    result = CliRunner().invoke(app, ["escalations", "policy", "--agent", AGENT, "--json"])
    assert result.exit_code == 0, result.output
    (shown,) = json.loads(result.output)
    assert (shown["agent"], shown["tool"], shown["mode"]) == (AGENT, "pay", "earned")
    assert shown["policy"] == {"after": 3, "sample": 0.25}
    assert shown["record"]["streak"] == 3
    assert "25% of calls still ask a human" in shown["why"]

    table = CliRunner().invoke(app, ["escalations", "policy", "--agent", AGENT])
    assert table.exit_code == 0 and "earned" in table.output and "sampling_payer" in table.output
