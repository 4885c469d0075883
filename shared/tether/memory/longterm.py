"""Long-term memory per subject: the built-in ``remember`` and ``recall`` tools.

An agent opts in with ``Agent(memory=MemoryConfig(subject_key="customer_id"))``. Its
runs then get two tools over one Redis hash per agent and subject
(``tether:memory:<agent>:<subject>``), the subject being the value of that key in the
event's metadata. A write is checked against ``max_items`` and ``max_bytes``, refreshes
the TTL, and writes its ``memory_write`` entry into the run's event log in the same
script (remember.lua). Each item records the action that wrote it, so a redelivered
action writes and logs nothing twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from tether.agent.tools import Tool, ToolContext, tool
from tether.errors import TetherError
from tether.store import keys, spill
from tether.store.log import LIFECYCLE_MAXLEN, log_appends
from tether.store.scripts import Script
from tether.transport.wire import EventKind, RunEvent, utcnow

if TYPE_CHECKING:
    from tether.runtime import Runtime

REMEMBER = Script.load("tether.memory", "remember.lua")
assert LIFECYCLE_MAXLEN == 100_000  # remember.lua caps the lifecycle stream the same way
RECALL_LIMIT = 20
MEMORY_TOOLS = ("remember", "recall")


class MemoryToolError(TetherError):
    """A memory tool could not do what the model asked; the model is told why."""


@dataclass(frozen=True)
class MemoryConfig:
    """How an agent remembers: per subject named by ``subject_key`` in the event's metadata."""

    subject_key: str
    max_items: int = 100
    max_bytes: int = 64 * 1024
    ttl_s: int = 90 * 24 * 3600
    max_value_chars: int = 2000

    def tools(self, agent: str) -> list[Tool]:
        return _memory_tools(agent, self)


class MemoryItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    value: str
    run_id: str
    action_id: str
    at: str = Field(default_factory=lambda: utcnow().isoformat())


def subject_of(metadata: dict[str, Any], config: MemoryConfig) -> str:
    subject = metadata.get(config.subject_key)
    if subject is None or str(subject).strip() == "":
        raise MemoryToolError(
            f"the event's metadata has no {config.subject_key!r}: there is no one to remember "
            "things about in this run; carry on without memory"
        )
    return str(subject)


class Remembering(Protocol):
    """What ``run_index`` reads of an agent (a tether.agent.definition.Agent, which
    imports this module: named by what it offers, so neither imports the other)."""

    @property
    def name(self) -> str: ...

    @property
    def memory(self) -> MemoryConfig | None: ...


def run_index(
    agent: Remembering, metadata: dict[str, Any], run_ttl_s: int
) -> list[tuple[str, int]]:
    """The subject index a run of ``agent`` joins at its creation (none without memory).

    It lives as long as what it points at may: the memory (its TTL from the last write)
    or a run (TETHER_RUN_TTL_S after it ends), counted from the newest run.
    """
    if agent.memory is None:
        return []
    subject = metadata.get(agent.memory.subject_key)
    if subject is None or str(subject).strip() == "":
        return []
    return [(keys.memory_runs(agent.name, str(subject)), agent.memory.ttl_s + run_ttl_s)]


def runs_about(client: Any, agent: str, subject: str) -> list[str]:
    return cast(list[str], client.zrange(keys.memory_runs(agent, subject), 0, -1))


def items(client: Any, agent: str, subject: str) -> list[MemoryItem]:
    raw = cast(dict[str, str], client.hgetall(keys.memory(agent, subject)))
    found = [MemoryItem.model_validate_json(v) for v in raw.values()]
    return sorted(found, key=lambda item: item.at)


def agents(client: Any) -> list[str]:
    return sorted(cast(set[str], client.smembers(keys.MEMORY_AGENTS)))


def over_memory_of(tools: Sequence[Tool], agent: str, config: MemoryConfig) -> list[Tool]:
    """``tools`` with the built-in ``remember`` and ``recall`` (in the same places) over
    ``agent``'s memory: an evaluation variant's own, never the production agent's
    (tether.evaluation.harness). An agent's own tools of those names stay as they are."""
    own = {t.name: t for t in config.tools(agent)}
    return [own[t.name] if _built_in(t) else t for t in tools]


def _built_in(candidate: Tool) -> bool:
    return candidate.name in MEMORY_TOOLS and getattr(candidate.fn, "__module__", "") == __name__


def _memory_tools(agent: str, config: MemoryConfig) -> list[Tool]:
    def subject(ctx: ToolContext) -> tuple[Any, str]:
        rt = _runtime()
        state = rt.store.load(ctx.run_id)
        return rt.store.client, subject_of(state.metadata, config)

    def remember(key: str, value: str, ctx: ToolContext) -> dict[str, Any]:
        """Remember a fact about the person this task is about, for later tasks: a short
        key (e.g. "last_order") and its value. Writing a key again replaces its value."""
        key, value = key.strip()[:200], value.strip()
        if not key:
            raise MemoryToolError("remember needs a non-empty key")
        if len(value) > config.max_value_chars:
            raise MemoryToolError(
                f"the value is {len(value)} characters, over the {config.max_value_chars} "
                "allowed: remember a shorter summary"
            )
        client, who = subject(ctx)
        item = MemoryItem(key=key, value=value, run_id=ctx.run_id, action_id=ctx.action_id)
        entry = RunEvent(
            run_id=ctx.run_id,
            kind=EventKind.memory_write,
            step=ctx.step,
            data={"agent": agent, "subject": who, "key": key, "value": value},
        )
        log, lifecycle = log_appends(entry)
        memory_key = keys.memory(agent, who)
        args: list[Any] = [
            key,
            item.model_dump_json(),
            ctx.action_id,
            config.max_items,
            config.max_bytes,
            config.ttl_s,
            agent,
        ]
        rt = _runtime()
        if rt.store.cluster:
            # The agents set, the run's log and the lifecycle stream lie in other slots.
            writes: list[spill.Write] = [
                ("SADD", keys.MEMORY_AGENTS, [agent]),
                ("XADD", log.stream, [0, "event", log.fields["event"]]),
                (
                    "XADD",
                    lifecycle.stream,
                    [lifecycle.maxlen, *(v for pair in lifecycle.fields.items() for v in pair)],
                ),
            ]
            away = spill.encode(writes)
            reply = REMEMBER.run(
                client, keys=[memory_key, keys.spill(memory_key)], args=[*args, "spill", away]
            )
            if int(reply[0]) >= 0:
                spill.settle(rt.store.batch, keys.spill(memory_key), [str(e) for e in reply[1:]])
        else:
            args += ["here", log.fields["event"]]
            for field, entry_value in lifecycle.fields.items():
                args += [field, entry_value]
            reply = REMEMBER.run(
                client,
                keys=[memory_key, keys.MEMORY_AGENTS, log.stream, lifecycle.stream],
                args=args,
            )
        if int(reply[0]) < 0:
            limit = (
                f"{config.max_items} items" if reply[1] == "items" else f"{config.max_bytes} bytes"
            )
            raise MemoryToolError(
                f"memory for this subject is full ({limit}): replace an existing key instead"
            )
        return {"remembered": key}

    def recall(query: str, ctx: ToolContext) -> list[dict[str, str]]:
        """Recall what earlier tasks remembered about the person this task is about: items
        whose key or value contains a word of the query ("*" or "" for everything)."""
        client, who = subject(ctx)
        words = [w for w in re.findall(r"\w+", query.lower()) if w]
        found = [
            item
            for item in items(client, agent, who)
            if not words or any(w in f"{item.key} {item.value}".lower() for w in words)
        ]
        return [{"key": i.key, "value": i.value, "at": i.at} for i in found[-RECALL_LIMIT:]]

    return [
        tool(name="remember", idempotent=True, timeout_s=10.0)(remember),
        tool(name="recall", idempotent=True, timeout_s=10.0, safe_in_shadow=True)(recall),
    ]


def _runtime() -> Runtime:
    # Imported when a tool runs: the runtime imports Celery, which a module that only
    # declares an agent (and a CLI command loading one) need not wait for.
    from tether.runtime import get_runtime

    return get_runtime()


def describe(config: MemoryConfig) -> str:
    return json.dumps(
        {
            "subject_key": config.subject_key,
            "max_items": config.max_items,
            "max_bytes": config.max_bytes,
            "ttl_s": config.ttl_s,
        }
    )
