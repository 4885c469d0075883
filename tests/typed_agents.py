"""Agents with typed results (issue 25): structured output over an OpenAI-compatible endpoint.

Their model is the real openai client against the tests' ScriptedOpenAIServer at
TYPED_OPENAI_URL, playing ``typed_script``: like a real model it answers in JSON only
when the request's response_format asks for it, and in prose otherwise.
"""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, ConfigDict, Field

from tether import Agent, OpenAIModel
from tether.models import ModelResponse, text
from tether.models.scripted import requested_format
from tether.store.state import ChatMessage


class Invoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str = Field(description="Who the invoice is addressed to.")
    total: float = Field(ge=0)
    items: list[str]


GOOD = {"customer": "ACME", "total": 12.5, "items": ["bolts", "nuts"]}
# What each goal's model gets wrong on its first answer ("never": on every answer).
BAD = {**GOOD, "total": "a lot"}


def typed_script(messages: list[ChatMessage]) -> ModelResponse:
    goal = next(m.content or "" for m in messages if m.role == "user")
    fed_back = sum(1 for m in messages if m.role == "user" and "not accepted" in (m.content or ""))
    asked = requested_format()
    schema = asked["json_schema"]["name"] if asked and asked.get("type") == "json_schema" else None
    if "silent" in goal and not any(m.role == "assistant" for m in messages):
        return ModelResponse(content=None, model="scripted")
    if schema is None:
        # Not asked for structured output: a model answers in prose.
        return text("ACME owes 12.50 for bolts and nuts.")
    if schema == "ConfidentAnswer":
        confidence = 0.2 if "unsure" in goal else 0.9
        return text(json.dumps({"answer": "ACME owes 12.50", "confidence": confidence}))
    answer: dict[str, object] = dict(GOOD)
    if "never" in goal or ("fix" in goal and not fed_back):
        answer = dict(BAD)
    if schema == "InvoiceWithConfidence":
        answer["confidence"] = 0.3 if "unsure" in goal else 0.95
    return text(json.dumps(answer))


def _endpoint() -> OpenAIModel:
    return OpenAIModel(
        "gpt-4o-mini",
        base_url=os.environ.get("TYPED_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=10,
        max_attempts=2,
    )


invoicer = Agent(
    name="invoicer",
    instructions="Read the invoice the task describes.",
    model=_endpoint(),
    output_type=Invoice,
    max_invalid_calls=2,
)

careful = Agent(
    name="careful",
    instructions="Answer the question.",
    model=_endpoint(),
    confidence_floor=0.6,
)

careful_invoicer = Agent(
    name="careful_invoicer",
    instructions="Read the invoice the task describes.",
    model=_endpoint(),
    output_type=Invoice,
    confidence_floor=0.6,
)

prose = Agent(
    name="prose",
    instructions="Answer the question.",
    model=_endpoint(),
)
