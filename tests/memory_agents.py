"""Agents for the memory tests (threads, long-term memory), all on the scripted model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tether import Agent, BudgetLimits, ScriptedModel, tool
from tether.memory import MemoryConfig
from tether.memory.threads import SUMMARY_INSTRUCTIONS
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage


def ledger_path() -> Path:
    return Path(os.environ.get("LEDGER_DIR", ".tether")) / "memory-ledger.txt"


@tool(keep_in_thread=True)
def pause(note: str, seconds: float = 0.3) -> dict[str, float | str]:
    """Wait a little and note when, so overlapping runs of one thread would show."""
    started = time.time()
    time.sleep(seconds)
    with ledger_path().open("a") as ledger:
        ledger.write(f"{note} {started:.3f} {time.time():.3f}\n")
    return {"note": note, "started": started}


def _history_answers(messages: list[ChatMessage]) -> list[str]:
    """Final answers of earlier turns: assistant texts before the last user message."""
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    return [
        (m.content or "")[:80] for m in messages[:last_user] if m.role == "assistant" and m.content
    ]


def thread_script(messages: list[ChatMessage]) -> ModelResponse:
    if messages[0].content == SUMMARY_INSTRUCTIONS:
        return text("SUMMARY " + " | ".join((messages[1].content or "").split("\n")[:2]))
    goal = [m for m in messages if m.role == "user"][-1].content or ""
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    mine = messages[last_user + 1 :]
    if goal.startswith("slow") and not any(m.role == "tool" for m in mine):
        return tool_call("pause", {"note": goal})
    summary = [m.content for m in messages if m.role == "system" and "Summary" in (m.content or "")]
    return text(
        json.dumps({"input": goal, "earlier": _history_answers(messages), "summary": summary})
    )


threaded = Agent(
    name="threaded",
    instructions="Answer with what you remember of the thread.",
    model=ScriptedModel(thread_script, label="threaded"),
    tools=[pause],
    budget=BudgetLimits(max_steps=5, max_tool_calls=5),
)

narrow = Agent(
    name="narrow",
    instructions="Answer with what you remember of the thread.",
    model=ScriptedModel(thread_script, label="narrow"),
    tools=[pause],
    thread_window_tokens=2000,
)

summarising = Agent(
    name="summarising",
    instructions="Answer with what you remember of the thread.",
    model=ScriptedModel(thread_script, label="summarising"),
    tools=[pause],
    thread_window_tokens=2000,
    thread_summary=True,
)


def memo_script(messages: list[ChatMessage]) -> ModelResponse:
    goal = [m for m in messages if m.role == "user"][-1].content or ""
    tools = [json.loads(m.content or "{}") for m in messages if m.role == "tool"]
    if goal.startswith("remember ") and not tools:
        key, _, value = goal.removeprefix("remember ").partition("=")
        return tool_call("remember", {"key": key, "value": value})
    if goal.startswith("recall") and not tools:
        return tool_call("recall", {"query": goal.removeprefix("recall").strip()})
    return text(json.dumps(tools[-1] if tools else {}))


memo = Agent(
    name="memo",
    instructions="Remember and recall.",
    model=ScriptedModel(memo_script, label="memo"),
    memory=MemoryConfig(subject_key="customer_id", max_items=3, max_bytes=4096, ttl_s=3600),
)
