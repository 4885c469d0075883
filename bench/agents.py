"""Agents the benchmark runs on real workers (TETHER_AGENT_MODULES=["bench.agents"]).

- ``bench_stepper``: a scripted model (zero latency) that calls the no-op tool
  ``steps=N`` times (N read from the task's input), then answers. One agent
  step = one model call + one tool call + the observation back.
- ``bench_remote``: the same script served by a local OpenAI-compatible server
  with 1 s latency (bench.model_server), reached through the real openai client.
- ``bench_peer``: like ``bench_stepper``, but its tool returns 200 bytes: the loop
  the peer (bench.peer, LangGraph on PostgreSQL) runs beside it.
- ``bench_long``: like ``bench_stepper``, but its tool returns 4 KB each call: a long
  run whose state grows, for the long-run measurement (bench.longrun).
- ``bench_idler``: calls a tool that needs approval, so its run waits in
  ``waiting_human``: an idle run, for the cost of state.
- ``bench_surveyor``: one long tool call, then a slow answer: what the
  recovery measurement (bench.recovery) kills its workers under.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from bench import hooks
from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel, ToolContext, tool
from tether.models import text, tool_call
from tether.models.base import ModelResponse
from tether.store.state import ChatMessage

hooks.install()

BENCH_BUDGET = BudgetLimits(max_steps=100_000, max_tool_calls=100_000, max_wall_s=3600)
_STEPS = re.compile(r"steps=(\d+)")


@tool
def noop(i: int) -> int:
    """Return the number it was given, at once."""
    return i


@tool
def blob(i: int) -> str:
    """Return 4 KB of text, at once."""
    return f"{i:08d}" * 512


@tool
def text200(i: int) -> str:
    """Return 200 bytes of text, at once."""
    return f"{i:08d}" * 25


@tool(requires_approval=True)
def approved_noop(i: int) -> int:
    """Return the number it was given, once a human approves."""
    return i


def steps_asked(messages: list[ChatMessage]) -> int:
    for message in messages:
        if message.role == "user" and message.content:
            found = _STEPS.search(message.content)
            if found:
                return int(found.group(1))
    return 1


def calling(tool_name: str) -> Callable[[list[ChatMessage]], ModelResponse]:
    """A script that calls ``tool_name`` until the input's steps=N are done, then answers."""

    def script(messages: list[ChatMessage]) -> ModelResponse:
        done = sum(1 for m in messages if m.role == "assistant")
        if done < steps_asked(messages):
            return tool_call(tool_name, {"i": done})
        return text(f"done after {done} tool steps")

    return script


stepper_script = calling("noop")


stepper = Agent(
    name="bench_stepper",
    instructions="Call noop as many times as the task says, then answer.",
    model=ScriptedModel(stepper_script, label="bench"),
    tools=[noop],
    budget=BENCH_BUDGET,
)


long = Agent(
    name="bench_long",
    instructions="Call blob as many times as the task says, then answer.",
    model=ScriptedModel(calling("blob"), label="bench-long"),
    tools=[blob],
    budget=BENCH_BUDGET,
)

peer = Agent(
    name="bench_peer",
    instructions="Call text200 as many times as the task says, then answer.",
    model=ScriptedModel(calling("text200"), label="bench-peer"),
    tools=[text200],
    budget=BENCH_BUDGET,
)

remote = Agent(
    name="bench_remote",
    instructions="Call noop as many times as the task says, then answer.",
    model=OpenAIModel(
        "bench-model",
        base_url=os.environ.get("BENCH_MODEL_URL", "http://127.0.0.1:9/v1"),
        timeout_s=30,
        max_attempts=1,
        max_output_tokens=64,
    ),
    tools=[noop],
    budget=BENCH_BUDGET,
)

idler = Agent(
    name="bench_idler",
    instructions="Call approved_noop once, then answer.",
    model=ScriptedModel([tool_call("approved_noop", {"i": 1}), text("approved")], label="idle"),
    tools=[approved_noop],
    budget=BENCH_BUDGET,
)


def _started(what: str, run_id: str) -> None:
    marks = Path(os.environ.get("BENCH_MARKS", ".tether/bench-marks"))
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{run_id}.{what}").touch()


@tool(timeout_s=60)
def survey(ctx: ToolContext, seconds: float) -> str:
    """A long, idempotent call; it marks each attempt's start."""
    _started("tool", ctx.run_id)
    time.sleep(seconds)
    return "surveyed"


def surveyor_script(messages: list[ChatMessage]) -> ModelResponse:
    if not any(m.role == "tool" for m in messages):
        return tool_call("survey", {"seconds": 4.0})
    run = next((m.content for m in messages if m.role == "user"), "") or ""
    _started("answer", run.split()[-1])
    time.sleep(4.0)  # a slow model call: the planner is killed under it
    return text("surveyed and reported")


surveyor = Agent(
    name="bench_surveyor",
    instructions="Survey, then report.",
    model=ScriptedModel(surveyor_script, label="surveyor"),
    tools=[survey],
    budget=BENCH_BUDGET,
)
