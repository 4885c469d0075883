"""An output guardrail's escalation of a typed agent's answer (issues 25, items 3-4):
what a person approves is the validated answer, result and typed output alike, and an
answer that does not match the schema goes back to the model rather than to a person.

Real planner, executor and escalation workers on a Redis of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guardrail_typed_agents import FLAG, Refund
from tests.integration.helpers import pending_escalation, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.escalation import records
from tether.runtime import Runtime
from tether.transport.wire import Verdict

AGENTS = ["tests.guardrail_typed_agents"]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    stack = DevStack(
        agent_modules=AGENTS,
        concurrency=1,
        log_dir=Path(tmp_path_factory.mktemp("guardrail-typed-logs")),
    )
    with started_stack(stack) as running:
        yield Runtime(Settings(redis_url=running.redis_url, agent_modules=AGENTS))


def _approve(rt: Runtime, run_id: str) -> str:
    wait_status(rt, run_id, "waiting_human")
    record = pending_escalation(rt, run_id)
    assert record.escalation.kind == "guardrail"
    client.decide(record.escalation.escalation_id, Verdict.approve, by="ops", runtime=rt)
    return record.escalation.draft or ""


def test_an_approved_typed_answer_is_the_runs_typed_output(rt: Runtime) -> None:
    run_id = client.submit("guarded_refunder", "refund the order", runtime=rt)
    draft = _approve(rt, run_id)
    expected = Refund(customer=f"ACME {FLAG}", amount=12.5)
    # The person saw the answer as the run would keep it.
    assert draft == expected.model_dump_json()
    state = wait_status(rt, run_id, "succeeded")
    assert state.output == expected.model_dump(mode="json")
    assert client.result(run_id, Refund, runtime=rt) == expected


def test_an_approved_confident_answer_is_its_text_not_its_json(rt: Runtime) -> None:
    run_id = client.submit("guarded_confident", "who owes what", runtime=rt)
    assert _approve(rt, run_id) == f"ACME owes 12.50 {FLAG}"
    assert wait_status(rt, run_id, "succeeded").result == f"ACME owes 12.50 {FLAG}"


def test_an_answer_off_the_schema_goes_back_to_the_model_not_to_a_person(rt: Runtime) -> None:
    run_id = client.submit("guarded_refunder", "refund the invalid order", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")
    assert client.result(run_id, Refund, runtime=rt) == Refund(customer="ACME", amount=12.5)
    assert not [r for r in records.list_escalations(rt) if r.escalation.run_id == run_id]
    assert any("not accepted" in (m.content or "") for m in state.messages if m.role == "user")
