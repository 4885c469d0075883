"""Wire messages: budget merging, TaskEvent validation, JSON round trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from tether.transport.wire import (
    SCHEMA_VERSION,
    BudgetLimits,
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    TaskEvent,
    ToolAction,
    Verdict,
)

# BudgetLimits.tightened_by ------------------------------------------------------


def test_tightened_by_none_returns_the_same_limits() -> None:
    base = BudgetLimits(max_steps=20, max_tool_calls=40, max_wall_s=600)
    assert base.tightened_by(None) == base


def test_tightened_by_takes_the_minimum_on_every_axis() -> None:
    base = BudgetLimits(
        max_steps=20, max_tool_calls=40, max_tokens=5000, max_cost_usd=1.0, max_wall_s=600
    )
    event = BudgetLimits(
        max_steps=5, max_tool_calls=100, max_tokens=1000, max_cost_usd=2.0, max_wall_s=30
    )
    merged = base.tightened_by(event)
    assert merged == BudgetLimits(
        max_steps=5, max_tool_calls=40, max_tokens=1000, max_cost_usd=1.0, max_wall_s=30
    )


def test_an_event_cannot_widen_a_limit() -> None:
    base = BudgetLimits(max_steps=3, max_cost_usd=0.10)
    merged = base.tightened_by(BudgetLimits(max_steps=1000, max_cost_usd=50.0))
    assert merged.max_steps == 3
    assert merged.max_cost_usd == 0.10


def test_none_is_unbounded_so_the_other_side_wins() -> None:
    agent = BudgetLimits(max_steps=20)  # tokens unbounded
    event = BudgetLimits(max_tokens=100)  # steps unbounded
    merged = agent.tightened_by(event)
    assert merged.max_steps == 20
    assert merged.max_tokens == 100
    # Unbounded on both sides stays unbounded.
    assert merged.max_tool_calls is None
    assert merged.max_cost_usd is None
    assert merged.max_wall_s is None


def test_tightening_is_symmetric() -> None:
    a = BudgetLimits(max_steps=7, max_tokens=900, max_wall_s=10)
    b = BudgetLimits(max_steps=3, max_tool_calls=2, max_wall_s=20)
    assert a.tightened_by(b) == b.tightened_by(a)


def test_zero_tool_calls_is_a_limit_not_unbounded() -> None:
    # max_tool_calls=0 is falsy but is a real (strictest) limit.
    merged = BudgetLimits(max_tool_calls=10).tightened_by(BudgetLimits(max_tool_calls=0))
    assert merged.max_tool_calls == 0
    merged = BudgetLimits(max_tool_calls=0).tightened_by(BudgetLimits())
    assert merged.max_tool_calls == 0


def test_budget_limits_validate_their_bounds() -> None:
    with pytest.raises(ValidationError):
        BudgetLimits(max_steps=0)
    with pytest.raises(ValidationError):
        BudgetLimits(max_tool_calls=-1)
    with pytest.raises(ValidationError):
        BudgetLimits(max_wall_s=0)
    with pytest.raises(ValidationError):
        BudgetLimits(max_cost_usd=-0.01)
    with pytest.raises(ValidationError):
        BudgetLimits(max_step=3)  # type: ignore[call-arg]  # misspelt axis is rejected


# TaskEvent ---------------------------------------------------------------------


def _event(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {"event_id": "evt-1", "agent": "calculator", "input": "add 2 and 3"}
    raw.update(overrides)
    return raw


def test_task_event_defaults() -> None:
    event = TaskEvent.model_validate(_event())
    assert event.schema_version == SCHEMA_VERSION == 1
    assert event.budget is None
    assert event.metadata == {}


def test_task_event_with_budget_and_metadata() -> None:
    event = TaskEvent.model_validate(_event(budget={"max_steps": 2}, metadata={"ticket": 42}))
    assert event.budget == BudgetLimits(max_steps=2)
    assert event.metadata == {"ticket": 42}


@pytest.mark.parametrize("field", ["event_id", "agent", "input"])
def test_task_event_rejects_empty_strings(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskEvent.model_validate(_event(**{field: ""}))
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("field", ["event_id", "agent", "input"])
def test_task_event_requires_its_fields(field: str) -> None:
    raw = _event()
    del raw[field]
    with pytest.raises(ValidationError) as info:
        TaskEvent.model_validate(raw)
    assert info.value.errors()[0]["type"] == "missing"


def test_task_event_rejects_overlong_event_id() -> None:
    with pytest.raises(ValidationError):
        TaskEvent.model_validate(_event(event_id="x" * 201))
    assert TaskEvent.model_validate(_event(event_id="x" * 200)).event_id == "x" * 200


def test_task_event_rejects_extra_fields() -> None:
    with pytest.raises(ValidationError) as info:
        TaskEvent.model_validate(_event(urgency="high"))
    error = info.value.errors()[0]
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ("urgency",)


def test_task_event_rejects_extra_fields_in_its_budget() -> None:
    with pytest.raises(ValidationError) as info:
        TaskEvent.model_validate(_event(budget={"max_steps": 2, "max_retries": 9}))
    assert info.value.errors()[0]["loc"] == ("budget", "max_retries")


@pytest.mark.parametrize("version", [0, 2, "2", None])
def test_task_event_rejects_other_schema_versions(version: object) -> None:
    with pytest.raises(ValidationError) as info:
        TaskEvent.model_validate(_event(schema_version=version))
    assert info.value.errors()[0]["loc"] == ("schema_version",)


def test_task_event_accepts_schema_version_1_explicitly() -> None:
    assert TaskEvent.model_validate(_event(schema_version=1)).schema_version == 1


def test_task_event_is_frozen() -> None:
    event = TaskEvent.model_validate(_event())
    with pytest.raises(ValidationError):
        event.agent = "other"  # type: ignore[misc]


# JSON round trips --------------------------------------------------------------


def _action() -> ToolAction:
    return ToolAction(
        action_id="run_x:0:0",
        run_id="run_x",
        agent="calculator",
        step=0,
        tool="add",
        tool_call_id="call_1",
        arguments={"a": 2, "b": [1, {"c": None}]},
        idempotent=False,
    )


def test_tool_action_round_trip() -> None:
    action = _action()
    text = action.model_dump_json()
    assert json.loads(text)["schema_version"] == 1
    again = ToolAction.model_validate_json(text)
    assert again == action
    assert again.idempotent is False
    assert again.arguments == {"a": 2, "b": [1, {"c": None}]}


def test_observation_round_trip_ok_and_error() -> None:
    ok = Observation(
        action_id="a",
        run_id="r",
        step=1,
        tool="add",
        tool_call_id="c",
        ok=True,
        output={"sum": 5},
        latency_ms=1.5,
    )
    failed = Observation(
        action_id="b",
        run_id="r",
        step=1,
        tool="add",
        tool_call_id="d",
        ok=False,
        error="boom",
        error_category=ErrorCategory.timeout,
    )
    for obs in (ok, failed):
        assert Observation.model_validate_json(obs.model_dump_json()) == obs
    raw = json.loads(failed.model_dump_json())
    assert raw["error_category"] == "timeout"
    assert Observation.model_validate_json(failed.model_dump_json()).error_category is (
        ErrorCategory.timeout
    )


def test_observation_rejects_unknown_error_category() -> None:
    raw = json.loads(
        Observation(
            action_id="a", run_id="r", step=0, tool="t", tool_call_id="c", ok=False
        ).model_dump_json()
    )
    raw["error_category"] = "exploded"
    with pytest.raises(ValidationError):
        Observation.model_validate(raw)


def test_escalation_round_trip_with_nested_action() -> None:
    created = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    escalation = Escalation(
        escalation_id="esc_1",
        run_id="run_x",
        agent="payer",
        kind=EscalationKind.approval_required,
        reason="needs approval",
        action=_action(),
        created_at=created,
    )
    again = Escalation.model_validate_json(escalation.model_dump_json())
    assert again == escalation
    assert again.action == _action()
    assert again.created_at == created
    assert again.kind is EscalationKind.approval_required


def test_escalation_without_action_round_trip() -> None:
    escalation = Escalation(
        escalation_id="e",
        run_id="r",
        agent="a",
        kind=EscalationKind.model_uncertain,
        reason="unsure",
    )
    again = Escalation.model_validate_json(escalation.model_dump_json())
    assert again == escalation
    assert again.action is None
    assert again.created_at.tzinfo is not None


def test_decision_round_trip() -> None:
    decided_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    for decision in (
        Decision(escalation_id="esc_1", verdict=Verdict.approve, by="alice", at=decided_at),
        Decision(escalation_id="esc_2", verdict=Verdict.reject, by="bob", reason="too much"),
        Decision(escalation_id="esc_3", verdict=Verdict.answer, by="carol", answer="42"),
    ):
        again = Decision.model_validate_json(decision.model_dump_json())
        assert again == decision
        assert again.verdict is decision.verdict


def test_decision_requires_who_decided() -> None:
    with pytest.raises(ValidationError):
        Decision(escalation_id="e", verdict=Verdict.approve, by="")
    with pytest.raises(ValidationError):
        Decision.model_validate({"escalation_id": "e", "verdict": "maybe", "by": "x"})


def test_messages_reject_other_schema_versions_on_the_wire() -> None:
    for model, message in (
        (ToolAction, _action()),
        (Decision, Decision(escalation_id="e", verdict=Verdict.approve, by="x")),
    ):
        raw = json.loads(message.model_dump_json())
        raw["schema_version"] = 2
        with pytest.raises(ValidationError):
            model.model_validate(raw)
        raw["schema_version"] = 1
        raw["unexpected"] = True
        with pytest.raises(ValidationError):
            model.model_validate(raw)
