"""Agents, and how workers find them: modules named in TETHER_AGENT_MODULES, and variants.

A variant is another form of every declared agent, named ``<prefix>:<agent>``
(``eval:support_desk``). The production path knows variants only through this
seam (``AgentVariant``): a package declares one as an entry point in the
``tether.agent_variants`` group (evaluation declares ``eval``), and a worker loads
it on the first name that needs it, so a worker that never sees such a name never
imports the package behind it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import redis
from pydantic import BaseModel

from tether.agent import output
from tether.agent.options import EarnedAutonomy
from tether.agent.tools import Tool
from tether.agent.uncertainty import ASK_HUMAN, CONFIDENCE_INSTRUCTIONS, ask_human_tool
from tether.config import get_settings
from tether.errors import ConfigError, InvalidToolCallError, UnknownAgentError
from tether.guardrails.verdict import Guardrail
from tether.memory.longterm import MemoryConfig
from tether.models.base import ModelClient, ResponseFormat
from tether.store.ratelimits import RateLimit
from tether.store.state import RunState
from tether.transport.wire import BudgetEscalation, BudgetLimits, EscalationKind, ToolAction

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
    # (tether.rollout.shadow).
    shadow_of: str | None = None
    # How approvals of its requires_approval tools relax with a good record (tether.rollout.autonomy).
    autonomy: EarnedAutonomy | None = None
    # The model may ask a human (tether.agent.uncertainty): adds the built-in ask_human tool.
    ask_human: bool = False
    # A final answer whose stated confidence is below this escalates as model_uncertain
    # with the draft; the instructions get the format the confidence is read from.
    confidence_floor: float | None = None
    # The final answer is structured output validated against this pydantic model
    # (tether.agent.output); the run stores it as ``output`` and client.result returns it.
    output_type: type[BaseModel] | None = None
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
    # Its model's endpoint and model shared by every worker (tether.store.ratelimits), where
    # TETHER_MODEL_RATE_LIMITS names none for them.
    model_rate_limit: RateLimit | None = None
    # How long its escalations wait for a decision before they expire and the run ends
    # rejected (escalation_expired): seconds for every kind, or per kind (kinds left out
    # take TETHER_ESCALATION_EXPIRY_S, as does None).
    escalation_expiry_s: float | dict[EscalationKind, float] | None = None
    # Guardrails (tether.guardrails), run in order: on the task's input before anything
    # stores it, on the final answer before the run ends, and on every tool's arguments
    # and results (before each tool's own, @tool(argument_guardrails=, result_guardrails=)).
    input_guardrails: list[Guardrail] = field(default_factory=list)
    output_guardrails: list[Guardrail] = field(default_factory=list)
    tool_argument_guardrails: list[Guardrail] = field(default_factory=list)
    tool_result_guardrails: list[Guardrail] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.memory is not None and "remember" not in {t.name for t in self.tools}:
            object.__setattr__(self, "tools", [*self.tools, *self.memory.tools(self.name)])
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
        if self.output_type is not None and not (
            isinstance(self.output_type, type) and issubclass(self.output_type, BaseModel)
        ):
            raise ConfigError(
                f"agent {self.name!r}: output_type must be a pydantic BaseModel subclass, "
                f"got {self.output_type!r}"
            )
        # Built now, so a schema that cannot be made fails where the agent is declared.
        self.answer_schema()
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
        guards = [
            *self.input_guardrails,
            *self.output_guardrails,
            *self.tool_argument_guardrails,
            *self.tool_result_guardrails,
            *(g for t in self.tools for g in (*t.argument_guardrails, *t.result_guardrails)),
        ]
        unfit = [repr(g) for g in guards if not isinstance(g, Guardrail)]
        if unfit:
            raise ConfigError(
                f"agent {self.name!r}: {', '.join(unfit)} are not guardrails; give each a "
                "`name` and a `check(value, context)` returning a GuardrailVerdict"
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
                # Only where set, so agents without one keep their versions.
                **({"output": self.response_format()} if self.output_type else {}),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(content.encode()).hexdigest()[:12]

    def answer_schema(self) -> type[BaseModel] | None:
        """The model its final answer is validated against; None: a plain text answer."""
        return output.answer_schema(self.output_type, self.confidence_floor is not None)

    def response_format(self) -> ResponseFormat | None:
        """What its model calls ask for as ``response_format``; None: plain text."""
        schema = self.answer_schema()
        return None if schema is None else output.response_format(schema)

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


# Modules whose agents are registered. Loading one again registers nothing: intake looks
# for shadow candidates on every event, and registering the module's agents again would
# meet the copy a replay serves under the same name (tether.evaluation.replay_runtime).
_registered_modules: set[str] = set()


def load_agent_modules(modules: list[str]) -> dict[str, Agent]:
    """Import each module and register every Agent defined at its top level, once."""
    for module_name in modules:
        if module_name in _registered_modules:
            continue
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
        _registered_modules.add(module_name)
    return dict(_loaded)


def get_agent(name: str) -> Agent:
    if name not in _loaded:
        variant = variant_of(name)
        if variant is not None:
            derived = variant.derive(get_agent(name.partition(VARIANT_SEPARATOR)[2]))
            # Two greenlets deriving at once keep the first: both derived the same agent.
            return _loaded.setdefault(name, derived)
        load_agent_modules(get_settings().agent_modules)
    try:
        return _loaded[name]
    except KeyError:
        raise UnknownAgentError(name, sorted(_loaded)) from None


VARIANT_SEPARATOR = ":"
VARIANT_ENTRY_POINTS = "tether.agent_variants"


@dataclass(frozen=True)
class AgentVariant:
    """Another form of every declared agent, named ``<prefix>:<agent>``.

    ``derive`` makes the variant of a declared agent, in whichever worker resolves
    the name first; ``refusal`` tells intake why a run of the variant cannot start
    (given the Redis client and the run id), or None, before the run is created.
    """

    prefix: str
    derive: Callable[[Agent], Agent]
    refusal: Callable[[redis.Redis, str], str | None]


_variants: dict[str, AgentVariant] = {}
_declared_variants: dict[str, EntryPoint] | None = None


def register_variant(variant: AgentVariant) -> AgentVariant:
    """Make ``variant`` resolvable in this process without an entry point (tests, scripts)."""
    existing = _variants.get(variant.prefix)
    if existing is not None and existing is not variant:
        raise ConfigError(
            f"two agent variants use the prefix {variant.prefix!r}; "
            f"rename one of them (entry points group {VARIANT_ENTRY_POINTS})"
        )
    _variants[variant.prefix] = variant
    return variant


def variant_of(name: str) -> AgentVariant | None:
    """The variant that ``name`` (``eval:support_desk``) names; None for any other name."""
    prefix, separator, _ = name.partition(VARIANT_SEPARATOR)
    if not separator:
        return None
    if prefix not in _variants:
        declared = _entry_points().get(prefix)
        if declared is None:
            return None
        loaded = declared.load()
        if not isinstance(loaded, AgentVariant) or loaded.prefix != prefix:
            raise ConfigError(
                f"entry point {prefix!r} = {declared.value!r} in group {VARIANT_ENTRY_POINTS} "
                f"is not an AgentVariant with prefix {prefix!r}; fix the package that declares it"
            )
        register_variant(loaded)
    return _variants[prefix]


def declared_name(name: str) -> str:
    """The declared agent that ``name`` is a form of: itself, unless it names a variant.

    Reads only what is registered and the entry points' names: loads no variant.
    """
    prefix, separator, agent = name.partition(VARIANT_SEPARATOR)
    if separator and (prefix in _variants or prefix in _entry_points()):
        return agent
    return name


def _entry_points() -> dict[str, EntryPoint]:
    global _declared_variants
    if _declared_variants is None:
        _declared_variants = {e.name: e for e in entry_points(group=VARIANT_ENTRY_POINTS)}
    return _declared_variants
