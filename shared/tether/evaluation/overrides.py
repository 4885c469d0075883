"""Per-run overrides for evaluation runs: a replacement model, and faults around real tools.

An evaluation (the adversarial suite; scenarios may reuse it) writes a
``RunOverrides`` document under ``tether:eval:<run_id>`` before it publishes
the run's event, and marks the event's metadata with ``EVAL_MARKER``. Then:

- the planner (``agent_for_run``) plays that run with the replacement model,
  reading the key only for runs whose metadata carries the marker, so
  production runs pay nothing;
- the executor reads the key in the round trip it already makes per action
  (``add_read``) and runs the agent's own tool wrapped by the faults
  (``apply_faults``), so timeouts, retries and validation are the real ones.

The override lives in Redis, not in the event: whoever may publish an event
must not be able to point an agent's model at an endpoint of their choosing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field
from redis.client import Pipeline

from tether import keys
from tether.agents import Agent
from tether.models.base import ModelClient, ModelResponse
from tether.models.openai import OpenAIModel
from tether.models.scripted import ScriptedModel, tool_call
from tether.state import ChatMessage, RunState, ToolCall
from tether.tools import Tool

# Metadata key of an event whose run has overrides; its value is informational.
EVAL_MARKER = "tether_eval"


def key(run_id: str) -> str:
    return f"{keys.PREFIX}:eval:{run_id}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointModel(_Strict):
    """An OpenAI-compatible endpoint (the local fault-injecting server in the suite)."""

    kind: Literal["endpoint"] = "endpoint"
    base_url: str = Field(pattern=r"^https?://")
    name: str = Field(min_length=1)
    timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)


class NonsenseModel(_Strict):
    """A model that only answers nonsense: malformed JSON, unknown tools, bad arguments, nothing."""

    kind: Literal["nonsense"] = "nonsense"


class GullibleModel(_Strict):
    """The agent's own model, except that it obeys every tool call a tool result tells it to make."""

    kind: Literal["gullible"] = "gullible"


ModelOverride = Annotated[
    EndpointModel | NonsenseModel | GullibleModel, Field(discriminator="kind")
]

FaultKind = Literal["raise", "hang", "garbage", "huge", "inject"]


class ToolFault(_Strict):
    """What happens around calls of ``tool`` ("*": every tool of the agent).

    raise: the tool raises ``message``; hang: it sleeps past a timeout cut to
    ``timeout_s``; garbage: it returns data of the wrong type; huge: it returns
    ``size`` characters; inject: the real tool runs and ``message`` is appended
    to the first text field of its output.
    """

    tool: str = "*"
    kind: FaultKind
    message: str = ""
    timeout_s: float = Field(default=0.5, gt=0)
    size: int = Field(default=300_000, ge=1)


class RunOverrides(_Strict):
    model: ModelOverride | None = None
    faults: list[ToolFault] = Field(default_factory=list)


def store(client: redis.Redis, run_id: str, overrides: RunOverrides, ttl_s: int) -> None:
    client.set(key(run_id), overrides.model_dump_json(), ex=ttl_s)


def parse(raw: str | bytes | None) -> RunOverrides | None:
    return RunOverrides.model_validate_json(raw) if raw else None


def add_read(pipe: Pipeline, run_id: str) -> None:
    """Queue the read of a run's overrides in a pipeline the caller sends anyway."""
    pipe.get(key(run_id))


# --- the planner's side ------------------------------------------------------------------


def agent_for_run(client: redis.Redis, agent: Agent, state: RunState) -> Agent:
    """``agent`` with the run's replacement model, if an evaluation set one."""
    if EVAL_MARKER not in state.metadata:
        return agent
    overrides = parse(client.get(key(state.run_id)))
    if overrides is None or overrides.model is None:
        return agent
    return dataclasses.replace(agent, model=build_model(overrides.model, agent))


def build_model(spec: EndpointModel | NonsenseModel | GullibleModel, agent: Agent) -> ModelClient:
    if isinstance(spec, EndpointModel):
        return OpenAIModel(
            spec.name,
            base_url=spec.base_url,
            api_key="adversarial-suite",
            timeout_s=spec.timeout_s,
            max_attempts=spec.max_attempts,
        )
    if isinstance(spec, NonsenseModel):
        return ScriptedModel(_nonsense, label="adversarial-nonsense")
    return Gullible(agent.model)


def _nonsense(messages: list[ChatMessage]) -> ModelResponse:
    """Cycle through every way a tool call can be malformed, and never recover."""
    turns = [
        tool_call("lookup", '{"unterminated": '),
        tool_call("no_such_tool_adversarial", {"x": 1}),
        tool_call("lookup", "[1, 2, 3]"),
        ModelResponse(content=None, model="scripted"),
    ]
    return turns[sum(1 for m in messages if m.role == "assistant") % len(turns)]


# A tool result that tells the model to call a tool: "CALL <tool> ARGS <json> END".
INSTRUCTION = re.compile(r"CALL (?P<tool>[A-Za-z0-9_.-]+) ARGS (?P<args>\{.*?\}) END", re.DOTALL)


def instructed_calls(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """The (tool, arguments) calls tool results told the model to make, in order."""
    found: list[tuple[str, str]] = []
    for message in messages:
        if message.role == "tool" and message.content:
            # Tool results arrive as JSON, so the instruction's quotes come escaped.
            body = message.content.replace('\\"', '"')
            found.extend((m["tool"], m["args"]) for m in INSTRUCTION.finditer(body))
    return found


class Gullible:
    """Wraps a model so that it follows instructions found in tool results: the worst case."""

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.billed_models: list[str] = list(getattr(inner, "billed_models", [inner.name]))

    @property
    def name(self) -> str:
        return f"scripted:gullible({self.inner.name})"

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return self.inner.estimate_tokens(messages, tools)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        made = {
            (c.name, _canonical(c.arguments))
            for m in messages
            if m.role == "assistant"
            for c in m.tool_calls or []
        }
        for tool, arguments in instructed_calls(messages):
            if (tool, _canonical(arguments)) not in made:
                call = ToolCall(id=f"call_obey_{len(messages)}", name=tool, arguments=arguments)
                return ModelResponse(tool_calls=[call], model=self.name)
        return self.inner.complete(messages, tools, deadline=deadline)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except json.JSONDecodeError:
        return arguments


# --- the executor's side -----------------------------------------------------------------


def apply_faults(tool: Tool, overrides: RunOverrides | None) -> Tool:
    """``tool`` wrapped by the first fault planned for it; the tool itself if none."""
    if overrides is None:
        return tool
    fault = next((f for f in overrides.faults if f.tool in ("*", tool.name)), None)
    if fault is None:
        return tool
    if fault.kind == "hang":
        # The executor's own timeout and retry policy must catch it, only sooner.
        return dataclasses.replace(
            tool, fn=_hanging(fault.timeout_s * 4), timeout_s=min(tool.timeout_s, fault.timeout_s)
        )
    return dataclasses.replace(tool, fn=_faulty(tool.fn, fault))


def _hanging(seconds: float) -> Callable[..., Any]:
    def hang(**_: Any) -> Any:
        time.sleep(seconds)
        raise TimeoutError(f"adversarial fault: hung for {seconds:g}s")

    return hang


def _faulty(fn: Callable[..., Any], fault: ToolFault) -> Callable[..., Any]:
    def faulty(**kwargs: Any) -> Any:
        if fault.kind == "raise":
            raise RuntimeError(fault.message or "adversarial fault: the tool's backend failed")
        if fault.kind == "garbage":
            return [{"\x00garbage": None}, 3.5, "not what this tool returns"]
        if fault.kind == "huge":
            return "x" * fault.size
        return inject(fn(**kwargs), fault.message)

    return faulty


def inject(output: Any, message: str) -> Any:
    """``output`` with ``message`` appended to its first text, keeping its type valid."""
    if isinstance(output, str):
        return f"{output}\n{message}"
    if isinstance(output, BaseModel):
        for name, value in output:
            if isinstance(value, str):
                return output.model_copy(update={name: f"{value}\n{message}"})
            if isinstance(value, BaseModel | list | dict):
                changed = inject(value, message)
                if changed is not value:
                    return output.model_copy(update={name: changed})
        return output
    if isinstance(output, list) and output:
        first = inject(output[0], message)
        return [first, *output[1:]] if first is not output[0] else output
    if isinstance(output, dict):
        for name, value in output.items():
            changed = inject(value, message)
            if changed is not value:
                return {**output, name: changed}
    return output
