"""Typed results (issue 25): the answer's schema, how an answer is read, and how the
request's response_format reaches the model (scripted, over HTTP, through a fallback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, RootModel

from tests.typed_agents import GOOD, Invoice
from tether import Agent, ScriptedModel
from tether.agent.output import (
    ConfidentAnswer,
    FinalAnswer,
    InvalidAnswer,
    answer_schema,
    read_answer,
    response_format,
)
from tether.errors import ConfigError, ModelPermanentError
from tether.models import FallbackModel, ModelResponse, text
from tether.models.openai import OpenAIModel
from tether.models.scripted import requested_format
from tether.planner import model_call
from tether.store.state import ChatMessage, RunState
from tether.testing.openai_server import ScriptedOpenAIServer

USER = ChatMessage(role="user", content="read the invoice")


class Loose(BaseModel):
    """Extra fields allowed and a default: a schema strict decoding does not take."""

    name: str
    count: int = 1


def test_an_output_type_is_asked_for_by_its_own_schema() -> None:
    asked = response_format(Invoice)

    assert asked == {
        "type": "json_schema",
        "json_schema": {"name": "Invoice", "schema": Invoice.model_json_schema(), "strict": True},
    }


class Bounded(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


class Scores(RootModel[list[int]]):
    pass


@pytest.mark.parametrize(
    "schema",
    [Loose, Bounded, Scores],
    ids=["open object with a default", "a keyword strict refuses", "not an object"],
)
def test_a_schema_strict_decoding_cannot_take_is_asked_for_without_strict(
    schema: type[BaseModel],
) -> None:
    assert response_format(schema)["json_schema"]["strict"] is False


def test_a_confidence_floor_alone_asks_for_an_answer_and_its_confidence() -> None:
    schema = answer_schema(None, True)

    assert schema is ConfidentAnswer
    assert response_format(ConfidentAnswer)["json_schema"]["strict"] is True
    assert answer_schema(None, False) is None


def test_a_floor_with_an_output_type_adds_confidence_to_its_fields() -> None:
    schema = answer_schema(Invoice, True)

    assert schema is not None and schema.__name__ == "InvoiceWithConfidence"
    fields = response_format(schema)["json_schema"]["schema"]["properties"]
    assert set(fields) == {"customer", "total", "items", "confidence"}
    answer = read_answer(json.dumps({**GOOD, "confidence": 0.7}), schema, Invoice)
    assert answer == FinalAnswer(
        result=Invoice.model_validate(GOOD).model_dump_json(), output=GOOD, confidence=0.7
    )


def test_a_valid_answer_reads_as_its_typed_output_and_its_text() -> None:
    answer = read_answer(json.dumps(GOOD), Invoice, Invoice)

    assert answer.output == GOOD and answer.confidence is None
    assert json.loads(answer.result) == GOOD


def test_an_answer_in_a_code_fence_is_read_as_the_json_inside() -> None:
    fenced = "```json\n" + json.dumps(GOOD) + "\n```"

    assert read_answer(fenced, Invoice, Invoice).output == GOOD


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (json.dumps({**GOOD, "total": "a lot"}), "field 'total': Input should be a valid number"),
        (json.dumps({**GOOD, "total": -1}), "field 'total': Input should be greater than"),
        (json.dumps({"customer": "ACME"}), "field 'total': Field required"),
        (json.dumps({**GOOD, "note": "x"}), "field 'note': Extra inputs are not permitted"),
        ("ACME owes 12.50.", "the answer: Invalid JSON"),
        ('The answer: {"customer": "ACME"}', "the answer: Invalid JSON"),
    ],
)
def test_an_answer_that_misses_the_schema_is_refused_naming_the_field(
    content: str, named: str
) -> None:
    with pytest.raises(InvalidAnswer) as refused:
        read_answer(content, Invoice, Invoice)

    assert refused.value.problem.startswith("the final answer does not match the schema Invoice")
    assert named in refused.value.problem


def test_a_blank_answer_is_refused() -> None:
    with pytest.raises(InvalidAnswer, match="field 'answer': Value error, the answer is empty"):
        read_answer('{"answer": "  ", "confidence": 0.9}', ConfidentAnswer, None)


@pytest.mark.parametrize("confidence", [1.5, -0.1, "high", None])
def test_a_confidence_outside_0_to_1_is_refused_not_read_as_low(confidence: Any) -> None:
    content = json.dumps({"answer": "42", "confidence": confidence})

    with pytest.raises(InvalidAnswer, match="field 'confidence'"):
        read_answer(content, ConfidentAnswer, None)


def test_a_confident_answer_reads_as_its_text_without_typed_output() -> None:
    answer = read_answer('{"answer": "42", "confidence": 0.8}', ConfidentAnswer, None)

    assert answer == FinalAnswer(result="42", output=None, confidence=0.8)


def test_an_output_type_must_be_a_pydantic_model() -> None:
    with pytest.raises(ConfigError, match="output_type must be a pydantic BaseModel subclass"):
        Agent(name="bad", instructions=".", model=ScriptedModel([]), output_type=dict)  # type: ignore[arg-type]


def test_an_output_type_with_its_own_confidence_field_cannot_take_a_floor() -> None:
    class Rated(BaseModel):
        confidence: str

    with pytest.raises(ConfigError, match="has a field named 'confidence'"):
        Agent(
            name="rated",
            instructions=".",
            model=ScriptedModel([]),
            output_type=Rated,
            confidence_floor=0.5,
        )


def test_the_output_type_is_part_of_the_agents_version() -> None:
    def agent(output_type: type[BaseModel] | None) -> Agent:
        return Agent(name="v", instructions=".", model=ScriptedModel([]), output_type=output_type)

    assert agent(Invoice).version != agent(None).version
    assert agent(Invoice).version != agent(Loose).version
    assert agent(Invoice).version == agent(Invoice).version


def test_the_reservation_covers_the_schema_sent_with_the_prompt() -> None:
    state = RunState(run_id="r", event_id="e", agent="a", goal="g", messages=[USER])

    def bound(output_type: type[BaseModel] | None) -> int:
        agent = Agent(name="a", instructions=".", model=ScriptedModel([]), output_type=output_type)
        return model_call._model_bounds(agent, state, []).tokens

    schema_size = len(json.dumps(response_format(Invoice)))
    # The byte bound: each byte of the schema may be a token of the prompt.
    assert bound(Invoice) - bound(None) >= schema_size


def test_a_script_reads_the_response_format_it_is_asked_for() -> None:
    seen: list[Any] = []

    def script(messages: list[ChatMessage]) -> ModelResponse:
        seen.append(requested_format())
        return text("ok")

    model = ScriptedModel(script)
    asked = response_format(Invoice)

    model.complete([USER], [], response_format=asked)
    model.complete([USER], [])

    assert seen == [asked, None]
    assert requested_format() is None


@pytest.fixture
def endpoint() -> Iterator[ScriptedOpenAIServer]:
    def script(messages: list[ChatMessage]) -> ModelResponse:
        asked = requested_format()
        return text(json.dumps(GOOD) if asked else "in prose")

    with ScriptedOpenAIServer(script) as server:
        yield server


def _endpoint_model(server: ScriptedOpenAIServer) -> OpenAIModel:
    return OpenAIModel("gpt-4o-mini", base_url=server.base_url, timeout_s=5, max_attempts=1)


def test_the_openai_client_sends_the_response_format(endpoint: ScriptedOpenAIServer) -> None:
    asked = response_format(Invoice)

    answered = _endpoint_model(endpoint).complete([USER], [], response_format=asked)
    plain = _endpoint_model(endpoint).complete([USER], [])

    assert json.loads(answered.content or "") == GOOD
    assert plain.content == "in prose"
    assert endpoint.requests[0]["response_format"] == asked
    assert "response_format" not in endpoint.requests[1]


@pytest.mark.parametrize(
    ("asked", "problem"),
    [
        ({"type": "xml"}, "response_format.type must be"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, ".name must be"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, ".schema must be"),
    ],
)
def test_a_malformed_response_format_is_refused_as_a_real_endpoint_does(
    endpoint: ScriptedOpenAIServer, asked: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ModelPermanentError, match="HTTP 400") as refused:
        _endpoint_model(endpoint).complete([USER], [], response_format=asked)

    assert problem in str(refused.value)


def test_a_fallback_asks_the_next_model_for_the_same_format(
    endpoint: ScriptedOpenAIServer,
) -> None:
    broken = OpenAIModel(
        "gpt-4o-mini", base_url="http://127.0.0.1:9/v1", timeout_s=1, max_attempts=1
    )
    asked = response_format(Invoice)

    answered = FallbackModel(broken, _endpoint_model(endpoint), fallback_on=["transient"]).complete(
        [USER], [], response_format=asked
    )

    assert json.loads(answered.content or "") == GOOD
    assert endpoint.requests[-1]["response_format"] == asked


def test_field_descriptions_travel_in_the_schema() -> None:
    class Described(BaseModel):
        model_config = ConfigDict(extra="forbid")

        city: str = Field(description="The customer's city, in English.")

    schema = response_format(Described)["json_schema"]["schema"]

    assert schema["properties"]["city"]["description"] == "The customer's city, in English."
