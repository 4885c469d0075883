"""The one way an evaluation replaces an agent's model and tools: the ``eval:`` agent.

An evaluation run names the agent ``eval:<agent>``: the ``eval`` agent variant
(``EVAL_VARIANT``, declared as an entry point in the ``tether.agent_variants`` group,
so workers load this module only when such a run arrives: see
``tether.agent.definition.AgentVariant``). Any worker resolves such a name to the
agent itself with two parts swapped: its model answers as the run's scenario says
(scripted turns, an endpoint, nonsense, a gullible wrapper of the agent's own model,
or the agent's own model), and each tool first applies the scenario's faults and fixtures
around the real tool. The scenario (the harness document) is stored in Redis
under the run's id (``keys.eval_scenario``) before the event is published, by
the scenario runner (``tether eval``) and the adversarial suite alike, so
workers need no files, and intake rejects an ``eval:`` event whose document is
missing. Production agents are untouched and pay nothing: only runs published
for ``eval:`` agents read it. Everything else (validation, policies,
approvals, budgets, timeouts, retries, the event log) is the production code.

The separate name also keeps evaluation runs out of the agent's production
figures, while the version recorded is the agent's own.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import redis
from pydantic import BaseModel, ValidationError

from tether.agent.definition import VARIANT_SEPARATOR, Agent, AgentVariant
from tether.agent.tools import Tool, ToolContext
from tether.errors import TetherError, ToolTimeoutError, TransientToolError
from tether.memory import longterm
from tether.models.base import ModelClient, ModelResponse, ResponseFormat
from tether.models.scripted import ScriptedModel, tool_call
from tether.models.wrapped import WrappedModel
from tether.runtime import Runtime, get_runtime
from tether.store import keys
from tether.store.state import ChatMessage, ToolCall
from tether.worker.task_context import current_run_id

from .scenario import (
    EndpointModelSpec,
    GullibleModelSpec,
    NonsenseModelSpec,
    Scenario,
    ScriptedModelSpec,
    ToolFault,
)

EVAL_PREFIX = "eval" + VARIANT_SEPARATOR
_CONTEXT_PARAM = "__tether_eval_context"


def eval_agent_name(agent: str) -> str:
    return agent if agent.startswith(EVAL_PREFIX) else EVAL_PREFIX + agent


def is_eval_agent(name: str) -> bool:
    return name.startswith(EVAL_PREFIX)


def harness_key(run_id: str) -> str:
    return keys.eval_scenario(run_id)


class ToolFixtureError(TetherError):
    """A scenario's fixture says this tool call fails (or a hermetic scenario has no fixture)."""


class MissingScenarioError(TetherError):
    """An ``eval:`` run whose harness document is not in Redis (expired, or published
    without an evaluation), or is not a valid scenario."""

    def __init__(self, run_id: str, problem: str = "") -> None:
        what = f"an invalid harness document ({problem})" if problem else "no harness document"
        super().__init__(
            f"run {run_id} is an evaluation run but {what} is stored under "
            f"{harness_key(run_id)}; start evaluation runs with `tether eval` (scenarios or "
            "--adversarial), which store it before publishing for the eval: agent"
        )


def save_scenario(rt: Runtime, run_id: str, scenario: Scenario) -> None:
    rt.store.client.set(harness_key(run_id), scenario.model_dump_json(), ex=rt.store.run_ttl_s)


# A run's scenario never changes, so each worker keeps the latest few it read.
_CACHE_SIZE = 256
_cache: OrderedDict[str, Scenario] = OrderedDict()
_cache_lock = threading.Lock()


def scenario_of(run_id: str, client: redis.Redis | None = None) -> Scenario:
    with _cache_lock:
        if run_id in _cache:
            _cache.move_to_end(run_id)
            return _cache[run_id]
    raw = (client or get_runtime().store.client).get(harness_key(run_id))
    if raw is None:
        raise MissingScenarioError(run_id)
    try:
        scenario = Scenario.model_validate_json(raw)
    except ValidationError as exc:
        raise MissingScenarioError(run_id, str(exc.errors()[0]["msg"])) from exc
    with _cache_lock:
        _cache[run_id] = scenario
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return scenario


def _running_scenario() -> Scenario:
    run_id = current_run_id()
    if run_id is None:
        raise TetherError(
            "the evaluation model was called outside a planner task bound to a run; "
            "it only serves runs of `eval:` agents"
        )
    return scenario_of(run_id)


class HarnessModel:
    """Answers as the running scenario says: scripted turns, an endpoint, nonsense, a
    gullible wrapper of the agent's model, or the agent's model itself."""

    # Reservations bill nothing up front (a scenario's endpoint is unknown here); what a
    # call reports it cost is still charged to the run and checked by max_cost_usd.
    billed_models: tuple[str, ...] = ()
    system = "tether.eval"

    def __init__(self, base: ModelClient) -> None:
        self._base = base
        self._endpoints: dict[EndpointModelSpec, ModelClient] = {}

    @property
    def name(self) -> str:
        return f"eval:{self._base.name}"

    def _model(self) -> ModelClient:
        spec = _running_scenario().model
        if isinstance(spec, ScriptedModelSpec):
            return ScriptedModel([t.response() for t in spec.turns], label="eval")
        if isinstance(spec, EndpointModelSpec):
            if spec not in self._endpoints:
                from tether.models.openai import OpenAIModel  # see tether.models: openai is slow

                key = os.environ.get(spec.api_key_env, "unset") if spec.api_key_env else "unset"
                self._endpoints[spec] = OpenAIModel(
                    spec.name,
                    base_url=spec.base_url,
                    api_key=key,
                    timeout_s=spec.timeout_s,
                    max_attempts=spec.max_attempts,
                )
            return self._endpoints[spec]
        if isinstance(spec, NonsenseModelSpec):
            return ScriptedModel(_nonsense, label="eval-nonsense")
        if isinstance(spec, GullibleModelSpec):
            return Gullible(self._base)
        return self._base

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return self._model().estimate_tokens(messages, tools)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        return self._model().complete(
            messages, tools, deadline=deadline, response_format=response_format
        )


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


class Gullible(WrappedModel):
    """Wraps a model so that it follows instructions found in tool results: the worst case."""

    @property
    def name(self) -> str:
        return f"scripted:gullible({self.inner.name})"

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
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
        return self.inner.complete(
            messages, tools, deadline=deadline, response_format=response_format
        )


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except json.JSONDecodeError:
        return arguments


# --- tools: faults, then fixtures, then the real tool ------------------------------------


def _faulted(tool: Tool, fault: ToolFault) -> Any:
    """The outcome of a call that a raise / hang / garbage / huge fault stands in for."""
    if fault.kind == "raise":
        raise ToolFixtureError(fault.message or "evaluation fault: the tool's backend failed")
    if fault.kind == "hang":
        # The call hangs; the wrapper gives up after the fault's own short timeout, with
        # the error the executor raises for a tool past its timeout (retried as that is),
        # so a case does not wait out the tool's real timeout on every attempt.
        time.sleep(fault.timeout_s)
        raise ToolTimeoutError(tool.name, fault.timeout_s)
    if fault.kind == "garbage":
        return [{"\x00garbage": None}, 3.5, "not what this tool returns"]
    return "x" * fault.size


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


def _harnessed(tool: Tool) -> Tool:
    def call(**kwargs: Any) -> Any:
        context: ToolContext = kwargs.pop(_CONTEXT_PARAM)
        scenario = scenario_of(context.run_id)
        fault = scenario.fault_for(tool.name)
        if fault is not None and fault.kind != "inject":
            return _faulted(tool, fault)
        output = _fixture_or_real(tool, scenario, context, kwargs)
        return inject(output, fault.message) if fault is not None else output

    return replace(tool, fn=call, context_param=_CONTEXT_PARAM)


def _fixture_or_real(
    tool: Tool, scenario: Scenario, context: ToolContext, kwargs: dict[str, Any]
) -> Any:
    arguments = tool.input_model.model_validate(kwargs).model_dump(mode="json")
    fixture = scenario.fixture_for(tool.name, arguments)
    if fixture is None:
        if scenario.unfixtured_tools == "fail":
            raise ToolFixtureError(
                f"scenario {scenario.name!r} has no fixture for {tool.name} with "
                f"arguments {arguments} and runs no real tools (unfixtured_tools: fail); "
                "add a fixture for this call"
            )
        if tool.context_param is not None:
            kwargs[tool.context_param] = context
        return tool.fn(**kwargs)
    if fixture.error is not None:
        raise (TransientToolError if fixture.transient else ToolFixtureError)(fixture.error)
    return fixture.result


def eval_agent(base: Agent) -> Agent:
    """``base`` as evaluation runs see it: named eval:<name>, model and tools behind the scenario."""
    # Everything else is the agent's own (its version too), except that an evaluation
    # run is nobody's shadow and earns no autonomy: every approval asks; and it
    # remembers and recalls under its own name, leaving production memory untouched.
    name = eval_agent_name(base.name)
    tools = base.tools
    if base.memory is not None:
        tools = longterm.over_memory_of(tools, name, base.memory)
    return replace(
        base,
        name=name,
        model=HarnessModel(base.model),
        tools=[_harnessed(t) for t in tools],
        policies=list(base.policies),
        version=base.version,
        shadow_of=None,
        autonomy=None,
    )


def rejection(client: redis.Redis, run_id: str) -> str | None:
    """Why intake must refuse an ``eval:`` event: its harness document is missing or invalid."""
    try:
        scenario_of(run_id, client)
    except MissingScenarioError as exc:
        return str(exc)
    return None


# The seam the production path resolves ``eval:`` names through (pyproject's entry point).
EVAL_VARIANT = AgentVariant(
    prefix=EVAL_PREFIX.removesuffix(VARIANT_SEPARATOR), derive=eval_agent, refusal=rejection
)
