"""Fitting a thread's history into a token window: newest turns first, older ones dropped.

Deterministic: the same turns and window give the same messages on every worker, so
a redelivered intake builds the same conversation. An agent with ``thread_summary``
has the dropped turns summarised by its own model instead (``tether.memory.threads``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tether.models.prices import prompt_token_bound
from tether.store.state import ChatMessage, ToolCall


class KeptCall(BaseModel):
    """A tool call the agent keeps in the thread (``@tool(keep_in_thread=True)``)."""

    model_config = ConfigDict(frozen=True)

    tool: str
    arguments: str
    ok: bool
    output: Any = None
    error: str | None = None


class Turn(BaseModel):
    """One finished run of a thread, as the thread's later runs see it."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    event_id: str
    input: str
    status: str
    answer: str | None = None
    calls: list[KeptCall] = Field(default_factory=list)

    def messages(self, index: int) -> list[ChatMessage]:
        """The turn as chat messages; tool call ids are unique within the thread."""
        out = [ChatMessage(role="user", content=self.input)]
        if self.calls:
            ids = [f"thread_{index}_{i}" for i in range(len(self.calls))]
            out.append(
                ChatMessage(
                    role="assistant",
                    tool_calls=[
                        ToolCall(id=call_id, name=c.tool, arguments=c.arguments)
                        for call_id, c in zip(ids, self.calls, strict=True)
                    ],
                )
            )
            for call_id, c in zip(ids, self.calls, strict=True):
                body = {"result": c.output} if c.ok else {"error": c.error}
                out.append(ChatMessage(role="tool", tool_call_id=call_id, content=json.dumps(body)))
        answer = self.answer if self.answer is not None else f"(this run ended {self.status})"
        out.append(ChatMessage(role="assistant", content=answer))
        return out

    def text(self) -> str:
        """Plain text of the turn, for a summary request."""
        lines = [f"user: {self.input}"]
        lines += [
            f"tool {c.tool}({c.arguments}) -> {c.output if c.ok else 'error: ' + str(c.error)}"
            for c in self.calls
        ]
        lines.append(f"assistant: {self.answer if self.answer is not None else self.status}")
        return "\n".join(lines)


class Fitted(BaseModel):
    """Which turns go into the window: ``included`` (oldest first) and ``dropped``."""

    included: list[tuple[int, Turn]]
    dropped: list[tuple[int, Turn]]
    tokens: int


def turn_tokens(turn: Turn, index: int) -> int:
    """An upper bound on the tokens the turn adds to a prompt (tether.models.prices)."""
    # The bound of the prompt with the turn, less that of the prompt without it: the
    # template allowance is the whole prompt's, counted once.
    return prompt_token_bound(turn.messages(index), []) - prompt_token_bound([], [])


def fit(turns: list[Turn], window_tokens: int) -> Fitted:
    """Keep the newest turns whose token bounds add up to at most ``window_tokens``.

    A turn is never cut in half: the first one (from the newest) that does not fit
    is dropped with everything older than it, so the history has no gaps.
    """
    included: list[tuple[int, Turn]] = []
    used = 0
    cut = 0
    for index in range(len(turns) - 1, -1, -1):
        cost = turn_tokens(turns[index], index)
        if used + cost > window_tokens:
            cut = index + 1
            break
        used += cost
        included.append((index, turns[index]))
    included.reverse()
    return Fitted(included=included, dropped=[(i, turns[i]) for i in range(cut)], tokens=used)
