"""Decisions respect roles and policies, whichever client sent them.

On a real Redis, handlers called in this process: the escalation service refuses a
decision a viewer signed (roles gated only the HTTP API and the console before), and
an approval whose edited arguments the tool's schema or the agent's policies refuse
(they were taken as written and failed, or ran past a cap, later); the planner checks
an edit again before its commit, so one the service could not check never runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tether import client, planner
from tether import runtime as runtime_module
from tether.agent.definition import Agent, load_agent_modules, register
from tether.agent.tools import tool
from tether.api import create_app
from tether.cli import connection
from tether.cli.main import app
from tether.config import Settings, get_settings
from tether.errors import DecisionRefusedError
from tether.escalation import edits, operators
from tether.escalation import records as escalations
from tether.models import ScriptedModel, text, tool_call
from tether.runtime import Runtime
from tether.store.state import RunState, RunStatus
from tether.transport.wire import Decision, Escalation, ToolAction, Verdict

CAP_CENTS = 1000


@tool(idempotent=False, requires_approval=True)
def capped_pay(account: str, cents: int) -> str:
    """Pay an account (held for approval)."""
    return f"paid {cents} to {account}"


def _under_cap(action: ToolAction, state: RunState) -> str | None:
    cents = int(action.arguments.get("cents", 0))
    return None if cents <= CAP_CENTS else f"{cents} cents is over the {CAP_CENTS}-cent cap"


CAPPED = Agent(
    name="capped_payer",
    instructions="Pay what the user asks, with approval, within the cap.",
    model=ScriptedModel(
        [tool_call("capped_pay", {"account": "acme", "cents": 500}), text("paid")],
        label="capped",
    ),
    tools=[capped_pay],
    policies=[_under_cap],
)


@pytest.fixture(autouse=True)
def _agents() -> Iterator[None]:
    load_agent_modules(["tests.agents"])
    register(CAPPED)
    yield


def _operators(tmp_path: Path) -> tuple[str, dict[str, str]]:
    entries, tokens = [], {}
    for name, role in (("vic", "viewer"), ("alice", "approver"), ("ada", "admin")):
        token, key = operators.new_token()
        tokens[name] = token
        entries.append({"name": name, "key_sha256": key, "role": role})
    path = tmp_path / "operators.json"
    path.write_text(json.dumps({"operators": entries}))
    return str(path), tokens


def _held(rt: Runtime, agent: str, event_id: str) -> tuple[str, Escalation]:
    run_id = planner.start(rt, {"event_id": event_id, "agent": agent, "input": "pay acme"})
    assert run_id is not None
    (wait,) = rt.store.load(run_id).awaiting_human
    escalation = wait.escalation(run_id, agent)
    escalations.open_escalation(rt, escalation)
    return run_id, escalation


def _refusals(rt: Runtime, run_id: str) -> list[str]:
    return [
        str(e.data["reason"]) for _, e in rt.store.log.read(run_id) if e.kind == "decision_refused"
    ]


def test_only_an_approver_or_an_admin_may_decide(tmp_path: Path) -> None:
    path, tokens = _operators(tmp_path)
    settings = Settings(operators_file=path)
    for name, allowed in (("vic", False), ("alice", True), ("ada", True)):
        signed = operators.sign(
            Decision(escalation_id="esc_1", verdict=Verdict.approve, by=name), tokens[name]
        )
        refused = operators.refusal(settings, signed)
        if allowed:
            assert refused is None, name
        else:
            assert refused is not None and refused.code == "role"
            assert "'vic' is a viewer" in refused.reason
            assert "approver" in refused.reason


def test_the_escalation_service_refuses_a_viewers_decision(redis_url: str, tmp_path: Path) -> None:
    path, tokens = _operators(tmp_path)
    rt = Runtime(Settings(redis_url=redis_url, operators_file=path))
    run_id, escalation = _held(rt, "payer", "evt-rights-viewer")
    by_viewer = operators.sign(
        Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="vic"),
        tokens["vic"],
    )
    assert escalations.decide(rt, by_viewer) is None
    (reason,) = _refusals(rt, run_id)
    assert "'vic' is a viewer" in reason
    assert escalations.load(rt, escalation.escalation_id)[0].status == "pending"
    assert rt.store.load(run_id).status == RunStatus.waiting_human
    by_approver = operators.sign(
        Decision(escalation_id=escalation.escalation_id, verdict=Verdict.approve, by="alice"),
        tokens["alice"],
    )
    decided = escalations.decide(rt, by_approver)
    assert decided is not None and decided.status == "decided"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"account": "acme", "cents": "a lot"}, "cents: Input should be a valid integer"),
        ({"cents": 700}, "account: Field required"),
        ({"account": "acme", "cents": 50_000}, "50000 cents is over the 1000-cent cap"),
    ],
)
def test_an_edit_the_tool_or_its_policies_refuse_is_refused_when_decided(
    runtime: Runtime, arguments: dict[str, object], problem: str
) -> None:
    run_id, escalation = _held(runtime, "capped_payer", f"evt-rights-edit-{len(problem)}")
    edited = Decision(
        escalation_id=escalation.escalation_id,
        verdict=Verdict.approve,
        by="alice",
        arguments=arguments,
    )
    # The client that sends it (CLI, HTTP API, console) says so at once...
    with pytest.raises(DecisionRefusedError, match=problem):
        client.decide(
            escalation.escalation_id,
            Verdict.approve,
            by="alice",
            arguments=arguments,
            runtime=runtime,
        )
    # ...and the escalation service, whoever sent it, records the refusal and keeps waiting.
    assert escalations.decide(runtime, edited) is None
    (reason,) = _refusals(runtime, run_id)
    assert problem in reason
    assert escalations.load(runtime, escalation.escalation_id)[0].status == "pending"
    fixed = edited.model_copy(update={"arguments": {"account": "acme", "cents": 900}})
    decided = escalations.decide(runtime, fixed)
    assert decided is not None and decided.status == "decided"
    planner.resume(runtime, escalation, fixed)
    (action,) = runtime.store.load(run_id).pending_actions
    assert action.arguments == {"account": "acme", "cents": 900}


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"account": "acme", "cents": "a lot"}, "cents: Input should be a valid integer"),
        ({"account": "acme", "cents": 50_000}, "50000 cents is over the 1000-cent cap"),
    ],
)
def test_the_planner_runs_no_edit_the_service_could_not_check(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, arguments: dict[str, object], problem: str
) -> None:
    """An escalation service that does not load the agent records the edit unchecked."""
    run_id, escalation = _held(runtime, "capped_payer", f"evt-rights-planner-{len(problem)}")
    monkeypatch.setattr(edits, "_agent", lambda name: None)
    edited = Decision(
        escalation_id=escalation.escalation_id,
        verdict=Verdict.approve,
        by="alice",
        arguments=arguments,
    )
    assert escalations.decide(runtime, edited) is not None
    planner.resume(runtime, escalation, edited)
    state = runtime.store.load(run_id)
    assert state.pending_actions == []
    # The model reads why the call did not run, and plans again.
    (result,) = [m for m in state.messages if m.tool_call_id == escalation.action.tool_call_id]  # type: ignore[union-attr]
    said = json.loads(result.content or "{}")
    assert said["tool_not_run"] is True and problem in said["error"]
    (resumed,) = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "resumed"]
    assert problem in str(resumed["edit_refused"])
    assert state.status == RunStatus.succeeded


def test_the_http_api_answers_409_naming_what_refuses_an_edit(
    redis_url: str, tmp_path: Path
) -> None:
    path, tokens = _operators(tmp_path)
    rt = Runtime(Settings(redis_url=redis_url, agent_modules=["tests.agents"], operators_file=path))
    _, escalation = _held(rt, "capped_payer", "evt-rights-api")
    with TestClient(create_app(rt, include_console=False)) as http:
        reply = http.post(
            f"/v1/escalations/{escalation.escalation_id}/decision",
            json={"verdict": "approve", "arguments": {"account": "acme", "cents": 50_000}},
            headers={"Authorization": f"Bearer {tokens['alice']}"},
        )
    assert reply.status_code == 409, reply.text
    assert "50000 cents is over the 1000-cent cap" in reply.json()["detail"]
    assert escalations.load(rt, escalation.escalation_id)[0].status == "pending"


def test_the_cli_says_at_once_why_the_service_refused_a_viewers_decision(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, tokens = _operators(tmp_path)
    service = Runtime(Settings(redis_url=redis_url, operators_file=path))
    _, escalation = _held(service, "payer", "evt-rights-cli")
    monkeypatch.setenv("TETHER_REDIS_URL", redis_url)
    get_settings.cache_clear()
    cli = Runtime(Settings(redis_url=redis_url))
    # The escalation service takes the decision as it is sent.
    monkeypatch.setattr(
        cli, "send_decision", lambda decision, run_id=None: escalations.decide(service, decision)
    )
    monkeypatch.setattr(runtime_module, "_runtime", cli)
    monkeypatch.setattr(connection, "_checked", None)
    (tmp_path / "token").write_text(tokens["vic"])
    started = time.monotonic()
    try:
        result = CliRunner().invoke(
            app,
            [
                *("escalations", "approve", escalation.escalation_id, "--by", "vic"),
                *("--token-file", str(tmp_path / "token"), "--wait", "20"),
            ],
        )
    finally:
        get_settings.cache_clear()
    assert isinstance(result.exception, DecisionRefusedError), result.output
    assert "'vic' is a viewer" in str(result.exception)
    assert "still pending" in str(result.exception)
    assert time.monotonic() - started < 10  # not after --wait ran out
    assert escalations.load(service, escalation.escalation_id)[0].status == "pending"
