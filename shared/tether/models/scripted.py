"""The scripted model: a deterministic stand-in for the offline demo and tests.

It decides from the conversation alone (no hidden state), so any worker that
picks up a run answers the same way, and redelivered steps replay exactly.
Wherever it is used its name reads ``scripted:...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tether.models.base import ModelResponse, ResponseFormat
from tether.models.output_cap import OutputCapped
from tether.models.prices import typical_tokens, typical_tokens_of
from tether.store.state import ChatMessage, ToolCall, openai_json_size

Script = Callable[[list[ChatMessage]], ModelResponse]


def text(content: str) -> ModelResponse:
    return ModelResponse(content=content, model="scripted")


def answer(value: Any) -> ModelResponse:
    """A final answer written as JSON text, as a model asked for structured output replies."""
    return text(json.dumps(value))


# The response_format of the request a script is answering: part of the request, as the
# conversation is, so a script that reads it still answers the same request the same way.
_requested: ContextVar[ResponseFormat | None] = ContextVar("requested_format", default=None)


def requested_format() -> ResponseFormat | None:
    """The ``response_format`` the request being scripted asked for; None: plain text.

    A script reads it as a real model would: answer in the schema when asked for it.
    """
    return _requested.get()


@contextmanager
def answering(response_format: ResponseFormat | None) -> Iterator[None]:
    """Let scripts called inside read ``response_format`` through requested_format()."""
    token = _requested.set(response_format)
    try:
        yield
    finally:
        _requested.reset(token)


def tool_call(
    name: str, arguments: dict[str, Any] | str | None = None, *, call_id: str = ""
) -> ModelResponse:
    """A turn that calls one tool; pass a string to send malformed arguments on purpose."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ModelResponse(
        tool_calls=[ToolCall(id=call_id or f"call_{name}", name=name, arguments=raw)],
        model="scripted",
    )


def _prompt_chars(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
    """Characters of the request's messages and tools as JSON, as a real endpoint reads them."""
    return openai_json_size(messages, utf8=False) + len(json.dumps(tools))


def from_turns(turns: Sequence[ModelResponse]) -> Script:
    """A script that plays ``turns`` in order: turn n answers after n assistant messages."""
    played = list(turns)

    def script(messages: list[ChatMessage]) -> ModelResponse:
        index = sum(1 for m in messages if m.role == "assistant")
        if index < len(played):
            return played[index]
        return text(f"scripted model: the script has {len(played)} turns and no more to say")

    return script


class ScriptedModel(OutputCapped):
    system = "tether.scripted"
    # Free: no cost budget is refused for want of its price.
    billed_models: tuple[str, ...] = ()

    def __init__(
        self,
        script: Script | Sequence[ModelResponse],
        *,
        label: str = "script",
        max_output_tokens: int | None = None,
    ) -> None:
        self._label = label
        self._script: Script = script if callable(script) else from_turns(script)
        self._max_output_tokens = max_output_tokens

    @property
    def name(self) -> str:
        return f"scripted:{self._label}"

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        with answering(response_format):
            turn = self._script(messages)
        # Usage as a real model would report it; an answer longer than the output
        # cap is billed as the cut-off answer a real model would give.
        prompt_tokens = typical_tokens_of(_prompt_chars(messages, tools))
        answer = (turn.content or "") + "".join(c.arguments for c in turn.tool_calls)
        calls = [
            call
            if call.id and call.id != f"call_{call.name}"
            else ToolCall(id=f"call_{len(messages)}_{i}", name=call.name, arguments=call.arguments)
            for i, call in enumerate(turn.tool_calls)
        ]
        return turn.model_copy(
            update={
                "model": self.name,
                "tool_calls": calls,
                "input_tokens": prompt_tokens,
                "output_tokens": min(typical_tokens(answer), self.max_output_tokens),
                "cost_usd": 0.0,
            }
        )
