"""How a scenario's model and tool fixtures reach the real planner and executor workers.

An evaluation run names the agent ``eval:<agent>``. ``tether.agents.get_agent``
resolves such a name, in any worker, to the agent itself with two parts
swapped: its model asks the run's scenario for scripted turns (or an endpoint),
and each tool first looks for a matching fixture. The scenario is stored in
Redis under the run's id by the eval runner before it publishes the event, so
workers need no scenario files, and production agents are untouched: only
runs published for ``eval:`` agents read it. Everything else (validation,
policies, approvals, budgets, the event log) is the production code path.

The separate name also keeps evaluation runs out of the agent's production
figures, while the version recorded is the agent's own.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import redis

from tether.agents import Agent
from tether.errors import TetherError, TransientToolError
from tether.models.base import ModelClient, ModelResponse
from tether.models.openai import OpenAIModel
from tether.models.prices import prompt_token_bound
from tether.models.scripted import ScriptedModel
from tether.runtime import Runtime, get_runtime
from tether.state import ChatMessage
from tether.task_context import current_run_id
from tether.tools import Tool, ToolContext

from .scenario import EndpointModelSpec, Scenario, ScriptedModelSpec

EVAL_PREFIX = "eval:"
_CONTEXT_PARAM = "__tether_eval_context"


def eval_agent_name(agent: str) -> str:
    return agent if agent.startswith(EVAL_PREFIX) else EVAL_PREFIX + agent


def harness_key(run_id: str) -> str:
    return f"tether:eval:scenario:{run_id}"


class ToolFixtureError(TetherError):
    """A scenario's fixture says this tool call fails (or a hermetic scenario has no fixture)."""


class MissingScenarioError(TetherError):
    """An ``eval:`` run whose scenario is not in Redis (expired, or published without the runner)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} is an evaluation run but no scenario is stored under "
            f"{harness_key(run_id)}; start evaluation runs with `tether eval` or "
            "tether.evaluation.run_scenarios, which store it before publishing"
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
    scenario = Scenario.model_validate_json(raw)
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
    """Answers as the running scenario says: its scripted turns, its endpoint, or the agent's model."""

    # Reservations bill nothing up front (a scenario's endpoint is unknown here); what a
    # call reports it cost is still charged to the run and checked by max_cost_usd.
    billed_models: tuple[str, ...] = ()

    def __init__(self, base: ModelClient) -> None:
        self._base = base
        self._endpoints: dict[EndpointModelSpec, OpenAIModel] = {}

    @property
    def name(self) -> str:
        return f"eval:{self._base.name}"

    def _model(self) -> ModelClient:
        spec = _running_scenario().model
        if isinstance(spec, ScriptedModelSpec):
            return ScriptedModel([t.response() for t in spec.turns], label="eval")
        if isinstance(spec, EndpointModelSpec):
            if spec not in self._endpoints:
                key = os.environ.get(spec.api_key_env, "unset") if spec.api_key_env else "unset"
                self._endpoints[spec] = OpenAIModel(
                    spec.name, base_url=spec.base_url, api_key=key, timeout_s=spec.timeout_s
                )
            return self._endpoints[spec]
        return self._base

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        model = self._model()
        estimate = getattr(model, "estimate_tokens", None)
        if estimate is None:
            return prompt_token_bound(messages, tools)
        return int(estimate(messages, tools))

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        return self._model().complete(messages, tools, deadline=deadline)


def _with_fixtures(tool: Tool) -> Tool:
    def call(**kwargs: Any) -> Any:
        context: ToolContext = kwargs.pop(_CONTEXT_PARAM)
        scenario = scenario_of(context.run_id)
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

    return replace(tool, fn=call, context_param=_CONTEXT_PARAM)


def eval_agent(base: Agent) -> Agent:
    """``base`` as evaluation runs see it: named eval:<name>, model and tools behind the scenario."""
    return Agent(
        name=eval_agent_name(base.name),
        instructions=base.instructions,
        model=HarnessModel(base.model),
        tools=[_with_fixtures(t) for t in base.tools],
        budget=base.budget,
        max_invalid_calls=base.max_invalid_calls,
        policies=list(base.policies),
        version=base.version,
    )
