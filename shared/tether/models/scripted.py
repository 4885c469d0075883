"""The scripted model: a deterministic stand-in for the offline demo and tests.

It decides from the conversation alone (no hidden state), so any worker that
picks up a run answers the same way, and redelivered steps replay exactly.
Wherever it is used its name reads ``scripted:...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tether.models.base import ModelResponse
from tether.models.prices import estimate_tokens
from tether.state import ChatMessage, ToolCall

Script = Callable[[list[ChatMessage]], ModelResponse]


def text(content: str) -> ModelResponse:
    return ModelResponse(content=content, model="scripted")


def tool_call(
    name: str, arguments: dict[str, Any] | str | None = None, *, call_id: str = ""
) -> ModelResponse:
    """A turn that calls one tool; pass a string to send malformed arguments on purpose."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ModelResponse(
        tool_calls=[ToolCall(id=call_id or f"call_{name}", name=name, arguments=raw)],
        model="scripted",
    )


def _serialise(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> str:
    return json.dumps([m.to_openai() for m in messages]) + json.dumps(tools)


def from_turns(turns: Sequence[ModelResponse]) -> Script:
    """A script that plays ``turns`` in order: turn n answers after n assistant messages."""
    played = list(turns)

    def script(messages: list[ChatMessage]) -> ModelResponse:
        index = sum(1 for m in messages if m.role == "assistant")
        if index < len(played):
            return played[index]
        return text(f"scripted model: the script has {len(played)} turns and no more to say")

    return script


class ScriptedModel:
    def __init__(self, script: Script | Sequence[ModelResponse], *, label: str = "script") -> None:
        self._label = label
        self._script: Script = script if callable(script) else from_turns(script)

    @property
    def name(self) -> str:
        return f"scripted:{self._label}"

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return estimate_tokens(_serialise(messages, tools)) + 256

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        turn = self._script(messages)
        prompt_tokens = estimate_tokens(_serialise(messages, tools))
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
                "output_tokens": estimate_tokens(answer) if answer else 1,
                "cost_usd": 0.0,
            }
        )
