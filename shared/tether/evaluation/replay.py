"""Replay: re-decide a recorded run with the current agent code, and say where it differs.

The recorded run's event log holds every model answer, every tool outcome and
every human decision. A replay feeds those back, in order, to the *current*
planner code (tether.planner: intake, step, inbox, lifecycle, the real
executor's recording and the real escalation store), in this process, against
a scratch Redis database on the same server: the model client returns the
recorded answers, the "executor" returns the recorded tool outcomes (no tool
ever runs), and recorded human decisions are decided again. The current
agent's instructions, tool schemas, validation, policies, approval flags and
budget decide. Then both logs are reduced to their decision points and the
first one that differs is reported.

In-process rather than through workers: a replay must never reach production
queues or the production reconciler, and it must stop at a divergence instead
of letting a run carry on with answers recorded for another conversation.
The planner functions that run are the ones the workers run; what it does not
exercise is Celery delivery itself (which a replay has nothing to learn from).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, computed_field

from tether import agents, escalations, keys, planner
from tether.agents import Agent, get_agent
from tether.errors import ConfigError, ModelError, TetherError, UnknownRunError
from tether.executor import _report as record_tool_outcome
from tether.messages import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    RunEvent,
    TaskEvent,
    ToolAction,
    Verdict,
)
from tether.models.base import ModelClient, ModelResponse
from tether.planner.step import escalation_id
from tether.runtime import Runtime
from tether.state import ChatMessage, ToolCall
from tether.store import run_id_for

DEFAULT_SCRATCH_DB = 15
# A run is a handful of messages per step; this only stops a replay that loops.
MAX_MESSAGES = 5_000
RUN = "{run}"

PointKind = Literal["tool_call_invalid", "tool_call_denied", "decision", "escalation", "finished"]
# Within one step the log's order depends on which worker wrote first: compare in this order.
_RANK: dict[str, int] = {
    "tool_call_invalid": 0,
    "tool_call_denied": 0,
    "decision": 1,
    "escalation": 2,
    "finished": 3,
}


class ReplayError(TetherError):
    """A run cannot be replayed (no event log, no recorded start)."""


class DecisionPoint(BaseModel):
    """One thing the planner decided, reduced to what a replay compares."""

    model_config = ConfigDict(frozen=True)

    step: int
    kind: PointKind
    summary: dict[str, Any]

    def describe(self) -> str:
        s = self.summary
        if self.kind == "decision" and s.get("decision") == "tool_calls":
            calls = ", ".join(
                f"{c['tool']}({json.dumps(c['arguments'], sort_keys=True)})"
                + (" [approval required]" if c["approval_required"] else "")
                for c in s["calls"]
            )
            return f"calls {calls}"
        if self.kind == "decision":
            problem = f": {s['problem']}" if s.get("problem") else ""
            return f"decides {s['decision']}{problem}"
        if self.kind == "finished":
            return f"ends {s['status']}" + (f" with {s['result']!r}" if s.get("result") else "")
        if self.kind == "escalation":
            return f"escalates {s['kind']}"
        verb = "refuses as invalid" if self.kind == "tool_call_invalid" else "denies"
        return f"{verb} a tool call: {s['error']}"


class Divergence(BaseModel):
    """The first decision point where the current code decides otherwise than the recording."""

    step: int
    what: str
    recorded: DecisionPoint | None
    replayed: DecisionPoint | None


class ReplayReport(BaseModel):
    """What `tether replay` prints (``--json``) and the tests read."""

    run_id: str
    agent: str
    recorded_version: str
    current_version: str
    recorded_status: str | None
    replayed_status: str | None
    decision_points: int = Field(description="decision points of the recording compared")
    divergence: Divergence | None = None
    notes: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def diverged(self) -> bool:
        return self.divergence is not None


# reading a recording -------------------------------------------------------------


@dataclass
class Recording:
    """A run's event log, indexed by what a replay needs; ids use ``{run}`` for the run id."""

    run_id: str
    started: RunEvent
    model_calls: dict[int, RunEvent] = field(default_factory=dict)
    model_failures: dict[int, RunEvent] = field(default_factory=dict)
    tool_outcomes: dict[str, deque[RunEvent]] = field(default_factory=lambda: defaultdict(deque))
    decisions: dict[str, RunEvent] = field(default_factory=dict)
    points: list[DecisionPoint] = field(default_factory=list)
    status: str | None = None

    @classmethod
    def from_trace(cls, run_id: str, events: list[RunEvent]) -> Recording:
        started = next((e for e in events if e.kind == "run_started"), None)
        if started is None:
            raise ReplayError(
                f"run {run_id!r} has no run_started entry in its event log (it expired after "
                "run_ttl_s, or the log was trimmed), so it cannot be replayed"
            )
        recording = cls(run_id=run_id, started=started, points=decision_points(run_id, events))
        for event in events:
            if event.kind == "model_call":
                # A redelivered step that lost its commit may have called the model again.
                recording.model_calls.setdefault(event.step, event)
            elif event.kind == "model_failed":
                recording.model_failures.setdefault(event.step, event)
            elif event.kind == "tool_call":
                recording.tool_outcomes[generic(run_id, event.data["action_id"])].append(event)
            elif event.kind == "escalation_decided":
                recording.decisions[generic(run_id, event.data["escalation_id"])] = event
            elif event.kind == "run_finished":
                recording.status = str(event.data["status"])
        return recording


def generic(run_id: str, text: str) -> str:
    """Action and escalation ids are derived from the run id: make them run-independent."""
    return text.replace(run_id, RUN)


def decision_points(run_id: str, events: list[RunEvent]) -> list[DecisionPoint]:
    """The run's decisions in a canonical order, with run ids made generic."""
    points: list[DecisionPoint] = []
    for event in events:
        data = event.data
        summary: dict[str, Any]
        kind: PointKind
        if event.kind in ("tool_call_invalid", "tool_call_denied"):
            kind = "tool_call_invalid" if event.kind == "tool_call_invalid" else "tool_call_denied"
            summary = {"error": data.get("error")}
        elif event.kind == "decision":
            kind = "decision"
            summary = {"decision": data["decision"]}
            if data["decision"] == "tool_calls":
                held = set(data.get("awaiting_human", []))
                summary["calls"] = [
                    {
                        "tool": a["tool"],
                        "arguments": a["arguments"],
                        "approval_required": escalation_id(a["action_id"]) in held,
                    }
                    for a in data.get("actions", [])
                ]
            elif data.get("problem"):
                summary["problem"] = data["problem"]
        elif event.kind == "escalation_opened":
            kind = "escalation"
            summary = {"kind": data.get("kind")}
        elif event.kind == "run_finished":
            kind = "finished"
            error = data.get("error") or {}
            summary = {
                "status": data.get("status"),
                "result": data.get("result"),
                "error_category": error.get("category"),
            }
        else:
            continue
        summary = json.loads(generic(run_id, json.dumps(summary, default=str)))
        points.append(DecisionPoint(step=event.step, kind=kind, summary=summary))
    return sorted(
        points,
        key=lambda p: (p.step, _RANK[p.kind], json.dumps(p.summary, sort_keys=True)),
    )


# the replay's model, executor and humans ---------------------------------------------


class ReplayModel:
    """Answers each step with the answer recorded for that step; never calls an endpoint.

    Named, priced and estimated as the agent's current model, so budgets reserve
    exactly what production reserves.
    """

    def __init__(self, current: ModelClient, recording: Recording) -> None:
        self._current = current
        self._recording = recording
        self.billed_models: list[str] | None = getattr(current, "billed_models", None)
        self.seen: list[list[ChatMessage]] = []

    @property
    def name(self) -> str:
        return self._current.name

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return self._current.estimate_tokens(messages, tools)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        # The model sees the messages of the step it answers: the step is how many were answered.
        step = len(self.seen)
        self.seen.append(list(messages))
        failed = self._recording.model_failures.get(step)
        if failed is not None:
            raise ModelError(
                str(failed.data.get("error")),
                attempts=int(failed.data.get("attempts") or 1),
                status=failed.data.get("status"),
                kind="permanent"
                if failed.data.get("error_category") == ErrorCategory.model_permanent
                else None,
            )
        recorded = self._recording.model_calls.get(step)
        if recorded is None:
            raise ModelError(
                f"replay: the recording of run {self._recording.run_id} has no model answer "
                f"for model call {step}; the current code asked the model more often than "
                "the recorded run did",
                kind="permanent",
            )
        answer = recorded.data["answer"]
        return ModelResponse(
            content=answer.get("content"),
            tool_calls=[ToolCall.model_validate(c) for c in answer.get("tool_calls") or []],
            model=str(recorded.data.get("model") or self.name),
            input_tokens=int(recorded.data.get("input_tokens") or 0),
            output_tokens=int(recorded.data.get("output_tokens") or 0),
            cost_usd=float(recorded.data.get("cost_usd") or 0.0),
        )


@dataclass
class ReplayRuntime(Runtime):
    """A Runtime whose publishing hands messages to the replay, never to Celery."""

    recording: Recording | None = None
    outbox: deque[Callable[[], None]] = field(default_factory=deque)
    notes: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    stopped: bool = False

    def publish_event(self, event: TaskEvent) -> None:
        self.outbox.append(lambda: self._start(event))

    def _start(self, event: TaskEvent) -> None:
        planner.start(self, event.model_dump(mode="json"))

    def send_step(self, run_id: str, step: int) -> None:
        self.outbox.append(lambda: planner.plan(self, run_id, step))

    def send_action(self, action: ToolAction) -> None:
        self.outbox.append(lambda: self._execute(action))

    def send_observation(self, observation: Observation) -> None:
        self.outbox.append(lambda: planner.observe(self, observation))

    def send_escalation(self, escalation: Escalation) -> None:
        self.outbox.append(lambda: self._escalate(escalation))

    def send_decision(self, decision: Decision, run_id: str | None = None) -> None:
        self.outbox.append(lambda: self._decide(decision))

    def send_resume(self, escalation: Escalation, decision: Decision) -> None:
        self.outbox.append(lambda: planner.resume(self, escalation, decision))

    def _execute(self, action: ToolAction) -> None:
        """Dry run: the recorded outcome of the same action, through the executor's recording."""
        assert self.recording is not None
        key = generic(action.run_id, action.action_id)
        outcomes = self.recording.tool_outcomes.get(key)
        if not outcomes:
            self.notes.append(
                f"step {action.step}: the current code calls {action.tool!r} as action "
                f"{key}, which the recording never ran; tools never run in a replay, so it "
                "stopped there"
            )
            self.stopped = True
            return
        data = outcomes.popleft().data
        needs_human = data.get("needs_human")
        observation = record_tool_outcome(
            self,
            action,
            ok=bool(data.get("ok")),
            output=data.get("output"),
            error=data.get("error"),
            category=ErrorCategory(data["error_category"]) if data.get("error_category") else None,
            attempts=int(data.get("attempts") or 1),
            needs_human=EscalationKind(needs_human) if needs_human else None,
        )
        self.send_observation(observation)

    def _escalate(self, escalation: Escalation) -> None:
        assert self.recording is not None
        escalations.open_escalation(self, escalation)
        self.opened.append(escalation.escalation_id)
        recorded = self.recording.decisions.get(
            generic(escalation.run_id, escalation.escalation_id)
        )
        if recorded is None:
            self.notes.append(
                f"escalation {generic(escalation.run_id, escalation.escalation_id)} "
                f"({escalation.kind}) was never decided in the recording; the replay ends "
                "waiting for a human there"
            )
            return
        data = recorded.data
        self._decide(
            Decision(
                escalation_id=escalation.escalation_id,
                verdict=Verdict(data["verdict"]),
                by=str(data.get("by") or "replay"),
                reason=data.get("reason"),
                answer=data.get("answer"),
            )
        )

    def _decide(self, decision: Decision) -> None:
        escalations.decide(self, decision)

    def drain(self, limit: int = MAX_MESSAGES) -> None:
        handled = 0
        while self.outbox and not self.stopped:
            if handled >= limit:
                raise ReplayError(
                    f"replay handled {limit} messages without the run settling; the current "
                    "code may loop (check the agent's budget)"
                )
            self.outbox.popleft()()
            handled += 1


_swap_lock = threading.Lock()


@contextmanager
def _serving(agent: Agent, model: ModelClient) -> Iterator[None]:
    """The current agent, with the recorded answers as its model, under its own name."""
    # Workers and the planner look agents up by name: the copy must be what they find.
    with _swap_lock:
        agents._loaded[agent.name] = replace(agent, model=model)
        try:
            yield
        finally:
            agents._loaded[agent.name] = agent


def scratch_url(redis_url: str, db: int) -> str:
    parts = urlsplit(redis_url)
    current = parts.path.lstrip("/") or "0"
    if current == str(db):
        raise ConfigError(
            f"the replay's scratch database {db} is the run store's own ({redis_url}); "
            "pick another with --scratch-db"
        )
    return urlunsplit(parts._replace(path=f"/{db}"))


# replaying -----------------------------------------------------------------------------


def replay(
    source: Runtime,
    run_id: str,
    *,
    scratch_db: int = DEFAULT_SCRATCH_DB,
    scratch_redis: str | None = None,
) -> ReplayReport:
    """Re-decide run ``run_id`` from ``source``'s event log with the current agent code.

    The replay's own state goes to database ``scratch_db`` of the run store's Redis, or
    to the Redis at URL ``scratch_redis`` (a Redis Cluster has database 0 only).
    """
    if scratch_redis is None and source.settings.redis_cluster:
        raise ConfigError(
            "the run store is a Redis Cluster, which has no other database for the "
            "replay's scratch state: name a Redis nothing else uses with --scratch-url"
        )
    if scratch_redis == source.settings.redis_url:
        raise ConfigError(
            f"the replay's scratch Redis {scratch_redis} is the run store itself; name another"
        )
    events = [event for _, event in source.store.trace(run_id)]
    if not events:
        raise UnknownRunError(run_id)
    recording = Recording.from_trace(run_id, events)
    started = recording.started.data
    agent = get_agent(str(started["agent"]))
    state = source.store.get(run_id)
    rt = ReplayRuntime(
        source.settings.model_copy(
            update={
                "redis_url": scratch_redis or scratch_url(source.settings.redis_url, scratch_db),
                "redis_cluster": False,
            }
        ),
        recording=recording,
    )
    event = TaskEvent(
        event_id=f"replay:{uuid.uuid4().hex}:{started.get('event_id') or run_id}"[:200],
        agent=agent.name,
        input=str(started["goal"]),
        # The recorded limits are the agent's budget as tightened by the event then.
        budget=started.get("limits"),
        metadata=state.metadata if state is not None else {},
    )
    model = ReplayModel(agent.model, recording)
    replay_run = run_id_for(event.event_id)
    try:
        with _serving(agent, model):
            rt.publish_event(event)
            rt.drain()
        replayed_events = [e for _, e in rt.store.trace(replay_run)]
    finally:
        _clean(rt, replay_run)
    replayed = decision_points(replay_run, replayed_events)
    notes = [*_input_notes(recording, model), *(generic(replay_run, n) for n in rt.notes)]
    replayed_status = next(
        (str(e.data["status"]) for e in reversed(replayed_events) if e.kind == "run_finished"),
        None,
    )
    if state is None:
        notes.append(f"run {run_id}'s state expired; its event's metadata was not replayed")
    return ReplayReport(
        run_id=run_id,
        agent=agent.name,
        recorded_version=str(started.get("agent_version") or ""),
        current_version=agent.version,
        recorded_status=recording.status,
        replayed_status=replayed_status,
        decision_points=len(recording.points),
        divergence=first_divergence(recording.points, replayed),
        notes=notes,
    )


def first_divergence(
    recorded: list[DecisionPoint], replayed: list[DecisionPoint]
) -> Divergence | None:
    for index in range(max(len(recorded), len(replayed))):
        before = recorded[index] if index < len(recorded) else None
        now = replayed[index] if index < len(replayed) else None
        if before == now:
            continue
        step = (before or now).step if (before or now) is not None else 0  # type: ignore[union-attr]
        return Divergence(step=step, what=_what(before, now), recorded=before, replayed=now)
    return None


def _what(before: DecisionPoint | None, now: DecisionPoint | None) -> str:
    if now is None:
        assert before is not None
        return f"the recorded run went on to {before.describe()}; the current code stops before"
    if before is None:
        return f"the current code goes on to {now.describe()}; the recorded run had ended"
    if now.kind == "tool_call_denied" and before.kind != "tool_call_denied":
        return f"a policy now denies what the recorded run did: {now.summary['error']}"
    if now.kind == "tool_call_invalid" and before.kind != "tool_call_invalid":
        return f"the current tool schema refuses the recorded call: {now.summary['error']}"
    if (
        before.kind == now.kind == "decision"
        and now.summary.get("calls")
        and before.summary.get("calls")
    ):
        old, new = before.summary["calls"], now.summary["calls"]
        strip = [{k: v for k, v in c.items() if k != "approval_required"} for c in old]
        if strip == [{k: v for k, v in c.items() if k != "approval_required"} for c in new]:
            changed = [
                c["tool"]
                for c, o in zip(new, old, strict=True)
                if c["approval_required"] != o["approval_required"]
            ]
            required = any(c["approval_required"] for c in new if c["tool"] in changed)
            return (
                f"{', '.join(changed)} {'now requires' if required else 'no longer requires'} "
                "human approval"
            )
        return f"different tool calls: recorded {before.describe()}, now {now.describe()}"
    if before.kind == now.kind == "finished":
        return f"different ending: recorded {before.describe()}, now {now.describe()}"
    return f"recorded: {before.describe()}; now: {now.describe()}"


def _input_notes(recording: Recording, model: ReplayModel) -> list[str]:
    """Where the current code shows the model something else than the recorded run did."""
    notes = []
    for step, messages in enumerate(model.seen):
        recorded = recording.model_calls.get(step)
        if recorded is None:
            continue
        now = [m.to_openai() for m in messages]
        before = recorded.data.get("messages") or []
        if now != before:
            index = next(
                (i for i, (a, b) in enumerate(zip(before, now, strict=False)) if a != b),
                min(len(before), len(now)),
            )
            role = now[index]["role"] if index < len(now) else "none"
            notes.append(
                f"step {step}: the model now sees different messages from message {index} "
                f"({role}); the recorded answer was served anyway"
            )
        tools = [t.name for t in get_agent(recording.started.data["agent"]).tools]
        if tools != recorded.data.get("tools"):
            notes.append(
                f"step {step}: the tools offered changed from {recorded.data.get('tools')} "
                f"to {tools}"
            )
    return notes


def _clean(rt: Runtime, replay_run: str) -> None:
    """Leave the scratch database as the replay found it (the lifecycle stream aside)."""
    client = rt.store.client
    found = list(client.scan_iter(match=f"*{replay_run}*", count=500))
    pipe = client.pipeline(transaction=False)
    if found:
        pipe.delete(*found)
    pipe.zrem(keys.RUN_INDEX, replay_run)
    pipe.zrem(keys.ACTIVE_RUNS, replay_run)
    pipe.hdel(keys.REDRIVES, replay_run)
    if isinstance(rt, ReplayRuntime) and rt.opened:
        pipe.zrem(keys.PENDING_ESCALATIONS, *rt.opened)
        pipe.zrem(keys.ALL_ESCALATIONS, *rt.opened)
    pipe.execute()
