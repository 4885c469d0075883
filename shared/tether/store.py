"""The run store: explicit run state, its event log and action results, in Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tether import keys
from tether.budgets import Budgets
from tether.errors import StaleStateError, UnknownRunError
from tether.messages import Observation, RunEvent, TaskEvent, utcnow
from tether.state import RunState
from tether.versioned import VersionedDocs

LIFECYCLE_MAXLEN = 100_000
StreamEntries = list[tuple[str, dict[str, str]]]
_RUN_NAMESPACE = uuid.UUID("6f1c1d1e-7a43-4c35-9a4e-1f3b8f0b2a10")


def connect(url: str) -> redis.Redis:
    """A client that rides out a Redis restart or failover of up to about a minute.

    Every write Tether makes is safe to repeat (versioned commits, idempotent
    reservations, SET NX results), so retrying a command whose reply was lost
    is harmless.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def run_id_for(event_id: str) -> str:
    """Runs are named by their event, so publishing an event twice names one run."""
    return "run_" + uuid.uuid5(_RUN_NAMESPACE, event_id).hex[:20]


class RunStore:
    def __init__(self, client: redis.Redis, *, run_ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.docs = VersionedDocs(client)
        self.budgets = Budgets(client)
        self.run_ttl_s = run_ttl_s

    # run state -----------------------------------------------------------------

    def create(self, event: TaskEvent, state: RunState) -> tuple[RunState, bool]:
        """Create the run for ``event`` unless it exists; returns (state, created)."""
        self.budgets.open(state.run_id, state.limits)
        self.client.zadd(keys.RUN_INDEX, {state.run_id: state.created_at.timestamp()}, nx=True)
        try:
            version = self.docs.write(keys.run(state.run_id), state.model_dump_json(), 0)
        except StaleStateError:
            return self.load(state.run_id), False
        return state.model_copy(update={"version": version}), True

    def get(self, run_id: str) -> RunState | None:
        found = self.docs.read(keys.run(run_id))
        if found is None:
            return None
        doc, version = found
        return RunState.model_validate_json(doc).model_copy(update={"version": version})

    def load(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise UnknownRunError(run_id)
        return state

    def commit(self, state: RunState) -> RunState:
        """Write ``state`` over the version it was loaded at; StaleStateError if it lost."""
        updated = state.model_copy(update={"updated_at": utcnow()})
        version = self.docs.write(keys.run(state.run_id), updated.model_dump_json(), state.version)
        if updated.terminal:
            self._expire(state.run_id)
        return updated.model_copy(update={"version": version})

    def update(
        self, run_id: str, change: Callable[[RunState], RunState | None], *, attempts: int = 20
    ) -> RunState | None:
        """Apply ``change`` to the latest state until it commits; None when it declines."""
        for _ in range(attempts):
            state = self.load(run_id)
            changed = change(state)
            if changed is None:
                return None
            try:
                return self.commit(changed)
            except StaleStateError:
                continue
        raise StaleStateError(
            f"run {run_id} kept changing under {attempts} update attempts; retry later"
        )

    def recent(self, limit: int = 50) -> list[RunState]:
        run_ids = cast(list[str], self.client.zrevrange(keys.RUN_INDEX, 0, limit - 1))
        states = {run_id: self.get(run_id) for run_id in run_ids}
        expired = [run_id for run_id, state in states.items() if state is None]
        if expired:
            # Finished runs expire after run_ttl_s; the index forgets them as it meets them.
            self.client.zrem(keys.RUN_INDEX, *expired)
        return [state for state in states.values() if state is not None]

    def _expire(self, run_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in (
            keys.run(run_id),
            keys.run_log(run_id),
            keys.budget(run_id),
            keys.reservations(run_id),
        ):
            pipe.expire(key, self.run_ttl_s)
        pipe.execute()

    # event log -----------------------------------------------------------------

    def log(self, run_id: str, kind: str, step: int, /, **data: Any) -> RunEvent:
        event = RunEvent(run_id=run_id, kind=kind, step=step, data=data)
        payload = event.model_dump_json()
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(keys.run_log(run_id), {"event": payload})
        pipe.xadd(
            keys.LIFECYCLE_STREAM,
            {"run_id": run_id, "kind": kind, "step": step},
            maxlen=LIFECYCLE_MAXLEN,
            approximate=True,
        )
        pipe.execute()
        return event

    def trace(self, run_id: str, after: str = "-") -> list[tuple[str, RunEvent]]:
        """The run's event log from ``after`` (exclusive when it is an id) onwards."""
        start = after if after == "-" else f"({after}"
        entries = cast(StreamEntries, self.client.xrange(keys.run_log(run_id), min=start))
        return [(entry_id, RunEvent.model_validate_json(f["event"])) for entry_id, f in entries]

    # action results --------------------------------------------------------------

    def save_result(self, observation: Observation) -> Observation:
        """Store the first result for an action; a later one loses and gets the first back."""
        stored = self.client.set(
            keys.action_result(observation.action_id),
            observation.model_dump_json(),
            nx=True,
            ex=self.run_ttl_s,
        )
        if stored:
            return observation
        existing = self.get_result(observation.action_id)
        return existing if existing is not None else observation

    def get_result(self, action_id: str) -> Observation | None:
        raw = self.client.get(keys.action_result(action_id))
        return Observation.model_validate_json(raw) if raw else None

    # rejected input --------------------------------------------------------------

    def reject(self, reason: str, payload: Any) -> None:
        """Record an event that could not be accepted, where its publisher can look it up.

        Every refusal goes to the stream tether:rejected; one whose event id can
        be read is also kept under that id, for `rejection(event_id)`.
        """
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        if isinstance(event_id, str) and event_id:
            self.client.set(keys.rejection(event_id), reason, ex=self.run_ttl_s)
        self.client.xadd(
            keys.REJECTED_STREAM,
            {"reason": reason, "payload": text[:4096], "at": utcnow().isoformat()},
            maxlen=LIFECYCLE_MAXLEN,
            approximate=True,
        )

    def rejection(self, event_id: str) -> str | None:
        """Why the event with this id was refused, or None if it was not."""
        reason = self.client.get(keys.rejection(event_id))
        return str(reason) if reason is not None else None

    def rejected(self, count: int = 50) -> list[dict[str, str]]:
        return [
            dict(fields, id=entry_id)
            for entry_id, fields in cast(
                StreamEntries, self.client.xrevrange(keys.REJECTED_STREAM, count=count)
            )
        ]
