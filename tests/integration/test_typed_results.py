"""Typed results (issue 25): an agent's final answer as validated structured output.

Real planner, executor and escalation workers on a Redis of their own; the model is
the real openai client against a local OpenAI-compatible server whose script answers
in JSON only when the request's response_format asks for it, as a real model does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tests.integration.helpers import kinds, pending_escalation, wait_status
from tests.stacks import started_stack
from tests.typed_agents import GOOD, Invoice, invoicer, typed_script
from tether import client
from tether.api import create_app
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.errors import RunResultError
from tether.escalation import operators
from tether.runtime import Runtime
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.transport.wire import Verdict

AGENTS = ["tests.typed_agents"]


class Receipt(BaseModel):
    customer: str
    paid_by: str


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(typed_script) as served:
        yield served


@pytest.fixture(scope="module")
def rt(server: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    logs = Path(tmp_path_factory.mktemp("typed-logs"))
    stack = DevStack(
        agent_modules=AGENTS,
        concurrency=1,
        log_dir=logs,
        env={"TYPED_OPENAI_URL": server.base_url},
    )
    with started_stack(stack) as running:
        yield Runtime(Settings(redis_url=running.redis_url, agent_modules=AGENTS))


def _asked(server: ScriptedOpenAIServer, goal: str) -> list[dict[str, Any]]:
    """The requests the server got for the run with ``goal``."""
    return [
        r
        for r in list(server.requests)
        if any(m.get("role") == "user" and m.get("content") == goal for m in r["messages"])
    ]


def test_a_typed_agent_returns_a_validated_model(rt: Runtime, server: ScriptedOpenAIServer) -> None:
    goal = "read invoice 1"
    run_id = client.submit("invoicer", goal, runtime=rt)

    invoice = client.result(run_id, Invoice, timeout_s=30, runtime=rt)

    assert invoice == Invoice.model_validate(GOOD)
    # Given the agent, or left to the agent that ran it, the same validated model.
    assert client.result(run_id, runtime=rt) == invoice
    assert client.result(run_id, agent=invoicer, runtime=rt) == invoice
    assert client.result(run_id, agent="invoicer", runtime=rt) == invoice
    with pytest.raises(RunResultError, match=r"its output is not a Receipt: .*field 'paid_by'"):
        client.result(run_id, Receipt, runtime=rt)
    state = rt.store.load(run_id)
    assert state.output == GOOD and json.loads(state.result or "") == GOOD
    (request,) = _asked(server, goal)
    asked = request["response_format"]
    assert asked["type"] == "json_schema"
    assert asked["json_schema"]["name"] == "Invoice"
    assert asked["json_schema"]["strict"] is True
    assert asked["json_schema"]["schema"] == Invoice.model_json_schema()
    # The audit trail says what the model was asked for.
    (called,) = [e for _, e in rt.store.log.read(run_id) if e.kind == "model_call"]
    assert called.data["answer_schema"] == "Invoice"


def test_an_invalid_answer_is_fed_back_and_fixed_within_the_budget(
    rt: Runtime, server: ScriptedOpenAIServer
) -> None:
    goal = "fix invoice 2"
    run_id = client.submit("invoicer", goal, runtime=rt)

    invoice = client.result(run_id, Invoice, timeout_s=30, runtime=rt)

    assert invoice.total == 12.5
    log = [event for _, event in rt.store.log.read(run_id)]
    (refused,) = [e for e in log if e.kind == "tool_call_invalid"]
    assert "field 'total'" in refused.data["error"]
    assert refused.data["error_category"] == "model_invalid_output"
    assert [e.data["decision"] for e in log if e.kind == "decision"] == [
        "fed_back",
        "final_answer",
    ]
    # The model read what was wrong before it answered again.
    second = _asked(server, goal)[1]["messages"][-1]
    assert second["role"] == "user" and "field 'total'" in second["content"]
    state = rt.store.load(run_id)
    assert state.output == GOOD and state.step == 2


def test_an_empty_reply_is_told_to_answer_in_the_schema(
    rt: Runtime, server: ScriptedOpenAIServer
) -> None:
    goal = "silent at first: read invoice 7"
    run_id = client.submit("invoicer", goal, runtime=rt)

    assert client.result(run_id, Invoice, timeout_s=30, runtime=rt) == Invoice.model_validate(GOOD)
    nudge = _asked(server, goal)[1]["messages"][-1]["content"]
    assert nudge.endswith("reply with the final answer in the schema you were given.")


def test_an_answer_never_fixed_fails_the_run_with_the_validation_error(
    rt: Runtime, server: ScriptedOpenAIServer
) -> None:
    goal = "never get invoice 3 right"
    run_id = client.submit("invoicer", goal, runtime=rt)

    state = wait_status(rt, run_id, "failed", timeout_s=30)

    assert state.error is not None and state.error.category == "model_invalid_output"
    assert "field 'total'" in state.error.message
    assert "max_invalid_calls 2" in state.error.message
    assert state.output is None and state.result is None
    # max_invalid_calls (2) answers fed back, the third ends the run: three model calls.
    assert len(_asked(server, goal)) == 3
    assert kinds(rt, run_id).count("tool_call_invalid") == 3
    with pytest.raises(RunResultError, match="failed: the model answered unusably"):
        client.result(run_id, Invoice, runtime=rt)


def test_the_api_returns_the_typed_output(rt: Runtime, tmp_path: Path) -> None:
    run_id = client.submit("invoicer", "read invoice 4", runtime=rt)
    client.result(run_id, Invoice, timeout_s=30, runtime=rt)
    token, key = operators.new_token()
    operators_file = tmp_path / "operators.json"
    operators_file.write_text(
        json.dumps({"operators": [{"name": "vic", "key_sha256": key, "role": "viewer"}]})
    )
    settings = rt.settings.model_copy(update={"operators_file": str(operators_file)})

    with TestClient(create_app(Runtime(settings), include_console=False)) as http:
        got = http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"})

    assert got.status_code == 200, got.text
    assert got.json()["output"] == GOOD


def test_a_text_agent_is_asked_for_no_schema_and_returns_text(
    rt: Runtime, server: ScriptedOpenAIServer
) -> None:
    goal = "what does ACME owe?"
    run_id = client.submit("prose", goal, runtime=rt)

    answer = client.result(run_id, timeout_s=30, runtime=rt)

    assert answer == "ACME owes 12.50 for bolts and nuts."
    assert "response_format" not in _asked(server, goal)[0]
    assert rt.store.load(run_id).output is None
    (called,) = [e for _, e in rt.store.log.read(run_id) if e.kind == "model_call"]
    assert called.data["answer_schema"] is None
    with pytest.raises(RunResultError, match="no typed output to read as Invoice"):
        client.result(run_id, Invoice, runtime=rt)


def test_a_confident_structured_answer_passes_the_floor(
    rt: Runtime, server: ScriptedOpenAIServer
) -> None:
    goal = "how much does ACME owe?"
    run_id = client.submit("careful", goal, runtime=rt)

    state = wait_status(rt, run_id, "succeeded", timeout_s=30)

    assert state.result == "ACME owes 12.50"
    assert _asked(server, goal)[0]["response_format"]["json_schema"]["name"] == "ConfidentAnswer"
    assert "escalation_opened" not in kinds(rt, run_id)


def test_a_structured_answer_below_the_floor_escalates_with_its_draft(rt: Runtime) -> None:
    run_id = client.submit("careful", "unsure: how much does ACME owe?", runtime=rt)

    record = pending_escalation(rt, run_id)

    assert record.escalation.kind == "model_uncertain"
    assert record.escalation.draft == "ACME owes 12.50"
    assert "confidence 0.2" in record.escalation.reason
    assert rt.store.load(run_id).status == "waiting_human"


def test_a_typed_draft_below_the_floor_becomes_the_output_once_approved(rt: Runtime) -> None:
    run_id = client.submit("careful_invoicer", "unsure: read invoice 5", runtime=rt)
    record = pending_escalation(rt, run_id)
    assert "confidence 0.3" in record.escalation.reason
    assert json.loads(record.escalation.draft or "") == GOOD

    client.decide(record.escalation.escalation_id, Verdict.approve, by="ops", runtime=rt)

    assert client.result(run_id, Invoice, timeout_s=30, runtime=rt) == Invoice.model_validate(GOOD)
    # The confidence is the floor's business: the typed output holds the type's fields only.
    assert rt.store.load(run_id).output == GOOD


def test_a_typed_answer_above_the_floor_succeeds_without_its_confidence(rt: Runtime) -> None:
    run_id = client.submit("careful_invoicer", "read invoice 6", runtime=rt)

    assert client.result(run_id, timeout_s=30, runtime=rt) == Invoice.model_validate(GOOD)
    assert "escalation_opened" not in kinds(rt, run_id)
