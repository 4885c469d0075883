"""Agents the console's browser tests run on real workers, all on the scripted model."""

from __future__ import annotations

import json
import re

from tether import Agent, ScriptedModel, tool
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage

# What a hostile tool result looks like: the console must show it as text.
HOSTILE = "<script>window.__pwned = true</script><b>bold?</b>"


@tool(requires_approval=True)
def refund(account: str, cents: int) -> str:
    """Refund an account; a person approves each refund."""
    return f"refunded {cents} cents to {account}"


@tool
def lookup_note(note_id: str) -> str:
    """Read a customer's note, which may hold anything the customer typed."""
    return f"note {note_id}: {HOSTILE}"


def _last_tool_result(messages: list[ChatMessage]) -> str | None:
    results = [m.content for m in messages if m.role == "tool" and m.content]
    return json.loads(results[-1]).get("result") if results else None


def _refunder_script(messages: list[ChatMessage]) -> ModelResponse:
    """Refund what the goal says ("refund 900 to acme"), then say what the tool did."""
    done = _last_tool_result(messages)
    if done is not None:
        return text(f"Done: {done}")
    goal = next(m.content or "" for m in messages if m.role == "user")
    found = re.search(r"refund (\d+) to (\w+)", goal)
    cents, account = (int(found.group(1)), found.group(2)) if found else (1, "nobody")
    return tool_call("refund", {"account": account, "cents": cents})


refunder = Agent(
    name="refunder",
    instructions="Refund what the customer asks, once a person approves.",
    model=ScriptedModel(_refunder_script, label="refunder"),
    tools=[refund],
)


def _note_reader_script(messages: list[ChatMessage]) -> ModelResponse:
    done = _last_tool_result(messages)
    if done is not None:
        return text(f"The note says: {done}")
    return tool_call("lookup_note", {"note_id": "n1"})


note_reader = Agent(
    name="note_reader",
    instructions="Read the customer's note and repeat it.",
    model=ScriptedModel(_note_reader_script, label="note_reader"),
    tools=[lookup_note],
)


# The same refunds, under a name of their own for the bulk approval's filter.
bulk_refunder = Agent(
    name="bulk_refunder",
    instructions="Refund what the customer asks, once a person approves.",
    model=ScriptedModel(_refunder_script, label="bulk_refunder"),
    tools=[refund],
)
