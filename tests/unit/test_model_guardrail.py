"""A guardrail that asks a model: what it records of the model's answer."""

from __future__ import annotations

import pytest

from tether.guardrails import GuardContext, GuardrailOutcome, GuardrailPlace, ModelGuardrail
from tether.models.base import ModelClient, ModelResponse
from tether.models.scripted import ScriptedModel, text
from tether.store.state import ChatMessage

CARD = "4111 1111 1111 1111"
SECRET = "sk-proj-ModelGuardrail0123456789abcdef"


class Charge:
    """Pays for nothing: calls the model straight away."""

    def complete(self, key: str, model: ModelClient, messages: list[ChatMessage]) -> ModelResponse:
        return model.complete(messages, [])


def judged(answer: str) -> tuple[GuardrailOutcome, str]:
    guardrail = ModelGuardrail("judge", ScriptedModel([text(answer)]), "Flag card numbers.")
    context = GuardContext(
        run_id="r", agent="a", place=GuardrailPlace.output, step=1, charge=Charge()
    )
    verdict = guardrail.check(f"pay with {CARD}", context)
    return verdict.outcome, verdict.reason


@pytest.mark.parametrize(
    "answer",
    [f"FLAG: it holds the card {CARD}", f"FLAG: it holds the key {SECRET}"],
)
def test_a_flag_is_recorded_without_what_the_judge_repeated(answer: str) -> None:
    outcome, reason = judged(answer)
    assert outcome == GuardrailOutcome.block
    assert CARD not in reason and SECRET not in reason and "[REDACTED" in reason


def test_an_answer_it_cannot_read_blocks_without_being_quoted() -> None:
    outcome, reason = judged(f"The text contains {CARD}.")
    assert outcome == GuardrailOutcome.block
    assert "4111" not in reason and "neither PASS nor FLAG" in reason


def test_a_pass_passes() -> None:
    assert judged("PASS")[0] == GuardrailOutcome.passed
