"""A person may approve a held tool call with arguments they edited (the console's and
the CLI's "edit, then approve"): only with an approval of a held call, and signed with
the rest of the decision, so edited arguments no one signed are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.config import Settings
from tether.errors import DecisionRefusedError
from tether.escalation import operators, records
from tether.store.state import EscalationRecord
from tether.transport.wire import Decision, Escalation, EscalationKind, ToolAction, Verdict

ACTION = ToolAction(
    action_id="run_1:0:0",
    run_id="run_1",
    agent="refunder",
    step=0,
    tool="refund",
    tool_call_id="call_1",
    arguments={"account": "acme", "cents": 900},
)


def _record(action: ToolAction | None) -> EscalationRecord:
    return EscalationRecord(
        escalation=Escalation(
            escalation_id="esc_1",
            run_id="run_1",
            agent="refunder",
            kind=EscalationKind.approval_required if action else EscalationKind.model_uncertain,
            reason="held",
            action=action,
            question=None if action else "which account?",
        )
    )


def _decision(verdict: Verdict, **fields: object) -> Decision:
    return Decision.model_validate(
        {"escalation_id": "esc_1", "verdict": verdict, "by": "alice", **fields}
    )


def test_edited_arguments_go_only_with_an_approval_of_a_held_call() -> None:
    edited = {"account": "acme", "cents": 500}
    records.check_decision(_record(ACTION), _decision(Verdict.approve, arguments=edited))
    with pytest.raises(DecisionRefusedError, match="edited arguments"):
        records.check_decision(
            _record(ACTION), _decision(Verdict.reject, arguments=edited, reason="no")
        )
    with pytest.raises(DecisionRefusedError, match="holds no tool call"):
        records.check_decision(
            _record(None), _decision(Verdict.answer, answer="acme", arguments=edited)
        )


def test_the_signature_covers_the_edited_arguments(tmp_path: Path) -> None:
    token, key = operators.new_token()
    path = tmp_path / "operators.json"
    path.write_text(json.dumps({"operators": [{"name": "alice", "key_sha256": key}]}))
    settings = Settings(operators_file=str(path))
    signed = operators.sign(_decision(Verdict.approve, arguments={"cents": 500}), token)
    assert operators.refusal(settings, signed) is None
    swapped = signed.model_copy(update={"arguments": {"cents": 50_000}})
    assert "signature does not match" in str(operators.refusal(settings, swapped))
