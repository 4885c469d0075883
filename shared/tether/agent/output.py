"""Structured final answers: what an agent asks the model for, and how the answer is read.

An agent with ``output_type`` (a pydantic model) or a ``confidence_floor`` asks for its
final answer as JSON in a schema, through the request's ``response_format`` (json_schema);
the planner validates the answer against the same schema. The schema is the output type,
or ``{"answer": text, "confidence": 0..1}`` for a floor alone, or the output type's fields
plus ``confidence`` for both. An answer that fails validation goes back to the model
(tether.planner.refusal), never into the run's result.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from tether.errors import ConfigError
from tether.models.base import ResponseFormat

CONFIDENCE = "confidence"
_CONFIDENCE_FIELD = Field(
    ge=0.0,
    le=1.0,
    description="How sure you are that the answer is right and complete, from 0 to 1.",
)
# json_schema names: what OpenAI accepts (letters, digits, _ and -, at most 64).
_NAME = re.compile(r"[^A-Za-z0-9_-]")
_FENCE = re.compile(r"^```(?:json)?\s*(?P<body>.*?)\s*```$", re.DOTALL)
# Keywords OpenAI's strict decoding refuses (or pydantic writes where a field is optional).
_NOT_STRICT = frozenset(
    {
        "default",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "uniqueItems",
        "contains",
        "not",
        "if",
        "then",
        "else",
    }
)
# How many of a failed validation's errors the model and the run's error are told.
_SHOWN_ERRORS = 5


class ConfidentAnswer(BaseModel):
    """The final answer of an agent with a confidence floor and no output type."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(description="Your final answer.")
    confidence: float = _CONFIDENCE_FIELD

    @field_validator("answer")
    @classmethod
    def _not_blank(cls, answer: str) -> str:
        # Checked here, not by minLength in the schema, which strict decoding refuses.
        if not answer.strip():
            raise ValueError("the answer is empty; give the answer itself")
        return answer


@dataclass(frozen=True)
class FinalAnswer:
    """A validated final answer: its text, its typed output (an output type's fields, as
    JSON values; None without one) and its stated confidence (None without a floor)."""

    result: str
    output: dict[str, Any] | None
    confidence: float | None


class InvalidAnswer(Exception):
    """A final answer that does not match the schema; ``problem`` says where and why.

    Never leaves the planner: the model is told ``problem`` and answers again.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@functools.cache
def answer_schema(output_type: type[BaseModel] | None, confident: bool) -> type[BaseModel] | None:
    """The model a final answer is validated against; None: a plain text answer."""
    if output_type is None:
        return ConfidentAnswer if confident else None
    if not confident:
        return output_type
    if CONFIDENCE in output_type.model_fields:
        raise ConfigError(
            f"output_type {output_type.__name__} has a field named {CONFIDENCE!r}, which a "
            "confidence_floor adds to the answer's schema: rename the field, or drop the floor"
        )
    return create_model(
        f"{output_type.__name__}WithConfidence",
        __base__=output_type,
        confidence=(float, _CONFIDENCE_FIELD),
    )


@functools.cache
def response_format(schema: type[BaseModel]) -> ResponseFormat:
    """The request's ``response_format`` asking for an answer in ``schema`` (shared: read it only)."""
    json_schema = schema.model_json_schema()
    return {
        "type": "json_schema",
        "json_schema": {
            "name": _NAME.sub("_", schema.__name__)[:64] or "final_answer",
            "schema": json_schema,
            # Strict decoding takes only an object whose every object is closed and fully
            # required, without the keywords it refuses; any other schema is still asked
            # for, and validated here either way.
            "strict": json_schema.get("type") == "object" and _strict_ready(json_schema),
        },
    }


def _strict_ready(node: Any) -> bool:
    if isinstance(node, list):
        return all(_strict_ready(item) for item in node)
    if not isinstance(node, dict):
        return True
    if _NOT_STRICT & node.keys():
        return False
    properties = node.get("properties")
    if isinstance(properties, dict) and (
        node.get("additionalProperties") is not False
        or set(node.get("required", [])) != set(properties)
    ):
        return False
    return all(_strict_ready(value) for value in node.values())


def read_answer(
    content: str, schema: type[BaseModel], output_type: type[BaseModel] | None
) -> FinalAnswer:
    """The final answer ``content`` validated against ``schema``; InvalidAnswer if it is not."""
    stripped = content.strip()
    fenced = _FENCE.match(stripped)
    try:
        validated = schema.model_validate_json(fenced.group("body") if fenced else stripped)
    except ValidationError as exc:
        raise InvalidAnswer(describe(exc, schema)) from exc
    values = validated.model_dump(mode="json")
    confidence = values.pop(CONFIDENCE, None) if schema is not output_type else None
    if output_type is None:
        return FinalAnswer(result=str(values["answer"]), output=None, confidence=confidence)
    typed = output_type.model_validate(values)
    return FinalAnswer(
        result=typed.model_dump_json(), output=typed.model_dump(mode="json"), confidence=confidence
    )


def describe(exc: ValidationError, schema: type[BaseModel]) -> str:
    """What failed in a validation, field by field, in words a model and a person can act on."""
    problems = []
    for error in exc.errors()[:_SHOWN_ERRORS]:
        where = ".".join(str(part) for part in error["loc"])
        given = json.dumps(error.get("input"), default=str)
        shown = given if len(given) <= 80 else given[:77] + "..."
        field = f"field {where!r}" if where else "the answer"
        problems.append(f"{field}: {error['msg']} (got {shown})")
    more = exc.error_count() - len(problems)
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"the final answer does not match the schema {schema.__name__}: "
        + "; ".join(problems)
        + tail
    )
