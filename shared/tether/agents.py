"""Agents, and how workers find them: modules named in TETHER_AGENT_MODULES."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.autonomy import EarnedAutonomy
from tether.errors import ConfigError, InvalidToolCallError, UnknownAgentError
from tether.memory.longterm import MemoryConfig
from tether.messages import BudgetEscalation, BudgetLimits, EscalationKind, ToolAction
from tether.models.base import ModelClient
from tether.state import RunState
from tether.tools import Tool

# A policy looks at a validated tool call in its run and returns why it is
# refused, or None to allow it. A refusal goes back to the model as policy_denied.
Policy = Callable[[ToolAction, RunState], str | None]

DEFAULT_BUDGET = BudgetLimits(max_steps=20, max_tool_calls=40, max_wall_s=600)


@dataclass(frozen=True)
class Agent:
    name: str
    instructions: str
    model: ModelClient
    tools: list[Tool] = field(default_factory=list)
    budget: BudgetLimits = DEFAULT_BUDGET
    max_invalid_calls: int = 3
    policies: list[Policy] = field(default_factory=list)
    # Recorded on every run so figures can be split by version; left empty, it
    # is content_version(): a change to what the model sees gives a new version.
    version: str = ""
    # A candidate version of the agent named here: it gets a copy of that agent's
    # events and runs them as shadow runs, which never cause a side effect
    # (tether.evaluation.shadow).
    shadow_of: str | None = None
    # How approvals of its requires_approval tools relax with a good record (tether.autonomy).
    autonomy: EarnedAutonomy | None = None
    # The model may ask a human (tether.uncertainty): adds the built-in ask_human tool.
    ask_human: bool = False
    # A final answer whose stated confidence is below this escalates as model_uncertain
    # with the draft; the instructions get the format the confidence is read from.
    confidence_floor: float | None = None
    # Running out of budget asks a human to extend it (up to the ceiling) or end the run.
    escalate_on_budget: BudgetEscalation | None = None
    # Threads (tether.memory.threads): how many tokens (tether.models.prices bound) of
    # a thread's history a run starts with; older turns are dropped, or summarised by
    # the agent's model with thread_summary. keep_in_thread names tools whose calls and
    # results stay in the history, as @tool(keep_in_thread=True) does.
    thread_window_tokens: int = 4000
    thread_summary: bool = False
    keep_in_thread: list[str] = field(default_factory=list)
    # Long-term memory per subject: adds the remember and recall tools (tether.memory.longterm).
    memory: MemoryConfig | None = None
    # How long its escalations wait for a decision before they expire and the run ends
    # rejected (escalation_expired): seconds for every kind, or per kind (kinds left out
    # take TETHER_ESCALATION_EXPIRY_S, as does None).
    escalation_expiry_s: float | dict[EscalationKind, float] | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and "remember" not in {t.name for t in self.tools}:
            object.__setattr__(self, "tools", [*self.tools, *self.memory.tools(self.name)])
        from tether.uncertainty import ASK_HUMAN, CONFIDENCE_INSTRUCTIONS, ask_human_tool

        if self.ask_human and ASK_HUMAN not in {t.name for t in self.tools}:
            object.__setattr__(self, "tools", [*self.tools, ask_human_tool])
        if self.confidence_floor is not None:
            if not 0.0 < self.confidence_floor <= 1.0:
                raise ConfigError(
                    f"agent {self.name!r}: confidence_floor must be in (0, 1], "
                    f"got {self.confidence_floor}"
                )
            if CONFIDENCE_INSTRUCTIONS not in self.instructions:
                object.__setattr__(
                    self, "instructions", f"{self.instructions}\n\n{CONFIDENCE_INSTRUCTIONS}"
                )
        expiries = (
            self.escalation_expiry_s.values()
            if isinstance(self.escalation_expiry_s, dict)
            else [self.escalation_expiry_s or 1.0]
        )
        if any(s <= 0 for s in expiries):
            raise ConfigError(
                f"agent {self.name!r}: escalation_expiry_s must be positive seconds, "
                f"got {self.escalation_expiry_s!r}"
            )
        names = [t.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"agent {self.name!r} declares tools twice: {', '.join(duplicates)}")
        if not self.version:
            object.__setattr__(self, "version", self.content_version())

    def content_version(self) -> str:
        """A short hash of the instructions, tool schemas and model name.

        Stable across processes and machines (no Python hash()), so workers
        loading the same agent code record the same version.
        """
        content = json.dumps(
            {
                "instructions": self.instructions,
                "tools": [t.openai_schema() for t in self.tools],
                "model": self.model.name,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(content.encode()).hexdigest()[:12]

    def expiry_s(self, kind: EscalationKind, default: float) -> float:
        """How long an escalation of ``kind`` waits for a human before it expires."""
        declared = self.escalation_expiry_s
        if isinstance(declared, dict):
            return float(declared.get(kind, default))
        return float(default if declared is None else declared)

    def thread_keep(self) -> list[str]:
        """Tools whose calls a thread's history keeps."""
        return [t.name for t in self.tools if t.keep_in_thread or t.name in self.keep_in_thread]

    def check_policies(self, action: ToolAction, state: RunState) -> str | None:
        for policy in self.policies:
            denial = policy(action, state)
            if denial is not None:
                return f"policy refused {action.tool!r}: {denial}"
        return None

    def tool(self, name: str) -> Tool:
        for candidate in self.tools:
            if candidate.name == name:
                return candidate
        known = ", ".join(t.name for t in self.tools) or "none"
        raise InvalidToolCallError(
            f"tool {name!r} does not exist for agent {self.name!r}; available tools: {known}"
        )


_loaded: dict[str, Agent] = {}


def register(agent: Agent) -> Agent:
    existing = _loaded.get(agent.name)
    if existing is not None and existing is not agent:
        raise ConfigError(f"two different agents are named {agent.name!r}; rename one of them")
    _loaded[agent.name] = agent
    return agent


def load_agent_modules(modules: list[str]) -> dict[str, Agent]:
    """Import each module and register every Agent defined at its top level."""
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import agent module {module_name!r} ({exc}); "
                "check TETHER_AGENT_MODULES and the worker's PYTHONPATH"
            ) from exc
        for value in vars(module).values():
            if isinstance(value, Agent):
                register(value)
    return dict(_loaded)


def get_agent(name: str) -> Agent:
    if name not in _loaded and name.startswith("eval:"):
        # An evaluation run: the agent with its model and tools behind the run's scenario.
        from tether.evaluation.harness import eval_agent

        return register(eval_agent(get_agent(name.removeprefix("eval:"))))
    if name not in _loaded:
        from tether.config import get_settings

        load_agent_modules(get_settings().agent_modules)
    try:
        return _loaded[name]
    except KeyError:
        raise UnknownAgentError(name, sorted(_loaded)) from None
