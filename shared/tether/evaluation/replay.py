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

import uuid
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, computed_field

from tether.agent.definition import get_agent
from tether.errors import ConfigError, UnknownRunError
from tether.evaluation.recording import (
    DecisionPoint,
    Recording,
    ReplayError,
    decision_points,
    generic,
)
from tether.evaluation.replay_runtime import ReplayModel, ReplayRuntime, serving
from tether.runtime import Runtime
from tether.store import indexes, keys
from tether.store.runs import run_id_for
from tether.transport.wire import EventKind, TaskEvent

__all__ = ["DEFAULT_SCRATCH_DB", "ReplayError", "ReplayReport", "replay", "scratch_url"]

DEFAULT_SCRATCH_DB = 15


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
    events = [event for _, event in source.store.log.read(run_id)]
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
        with serving(agent, model):
            rt.publish_event(event)
            rt.drain()
        replayed_events = [e for _, e in rt.store.log.read(replay_run)]
    finally:
        _clean(rt, replay_run, agent.name)
    replayed = decision_points(replay_run, replayed_events)
    notes = [*_input_notes(recording, model), *(generic(replay_run, n) for n in rt.notes)]
    replayed_status = next(
        (
            str(e.data["status"])
            for e in reversed(replayed_events)
            if e.kind == EventKind.run_finished
        ),
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


def _clean(rt: Runtime, replay_run: str, agent: str) -> None:
    """Leave the scratch database as the replay found it (the lifecycle stream aside)."""
    client = rt.store.client
    found = list(client.scan_iter(match=f"*{replay_run}*", count=500))
    pipe = client.pipeline(transaction=False)
    if found:
        pipe.delete(*found)
    pipe.zrem(keys.RUN_INDEX, replay_run)
    pipe.zrem(keys.ACTIVE_RUNS, replay_run)
    pipe.hdel(keys.REDRIVES, replay_run)
    for index in indexes.every_index(agent, None):
        pipe.zrem(index, replay_run)
    if isinstance(rt, ReplayRuntime) and rt.opened:
        pipe.zrem(keys.PENDING_ESCALATIONS, *rt.opened)
        pipe.zrem(keys.ALL_ESCALATIONS, *rt.opened)
    pipe.execute()
