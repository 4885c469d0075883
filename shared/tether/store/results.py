"""Action results: the first result stored under an action's id is the action's result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.cluster import RedisCluster

from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.scripts import Script
from tether.store.versioned import Append
from tether.transport.wire import Observation

FIRST_RESULT = Script.load("tether.store", "first_result.lua")


class ActionResults:
    """Results by action id, first writer wins: a redelivered action's observation
    counts once, whichever copy finished first."""

    def __init__(self, batch: WriteBatch, *, ttl_s: int) -> None:
        self._batch = batch
        self._ttl_s = ttl_s

    def save(self, observation: Observation) -> Observation:
        """Store the first result for an action; a later one loses and gets the first back.

        Inside a task the write rides along with the next round trip and the
        caller's result is taken as the first: the executor writes results
        only under the action's lease, so no other result can come between.
        """
        key, doc = keys.action_result(observation.action_id), observation.model_dump_json()
        if self._batch.defer("set", key, doc, nx=True, ex=self._ttl_s):
            return observation
        (stored,) = self._batch.run(lambda pipe: pipe.set(key, doc, nx=True, ex=self._ttl_s))
        if stored:
            return observation
        existing = self.get(observation.action_id)
        return existing if existing is not None else observation

    def first(
        self,
        observation: Observation,
        appends: Sequence[Append],
        then: Callable[[Observation | None], None],
    ) -> Observation:
        """Store ``observation`` unless a result is stored already, and only if it was
        stored, ``appends`` (the entries that log it); ``then`` gets the result stored
        before it (None: this one is the first) once Redis has answered.

        For a writer that holds no lease, so that another may store in between: one
        script decides. Inside a task it rides along with the task's next round trip
        and ``observation`` is returned, which one came first being known only to
        ``then``; outside a task it runs at once and the one stored first is returned.
        """
        key, doc = keys.action_result(observation.action_id), observation.model_dump_json()
        # A script reaches one slot of a Redis Cluster: the winner appends to the others
        # (the lifecycle stream) once it knows it won.
        cluster = isinstance(self._batch.client, RedisCluster)
        here = [a for a in appends if not cluster or _same_slot(a.stream, key)]
        away = [a for a in appends if cluster and not _same_slot(a.stream, key)]
        call: list[Any] = [FIRST_RESULT.sha, 1 + len(here), key, *(a.stream for a in here)]
        call += [doc, self._ttl_s]
        for append in here:
            call += [append.maxlen, len(append.fields)]
            for field, entry in append.fields.items():
                call += [field, entry]

        def answered(reply: Any) -> Observation | None:
            earlier = None if reply is None else Observation.model_validate_json(reply)
            if earlier is None:
                self._append(away)
            then(earlier)
            return earlier

        if self._batch.defer_then(answered, "evalsha", *call):
            return observation
        (reply,) = self._batch.run(lambda pipe: pipe.execute_command("EVALSHA", *call))  # type: ignore[no-untyped-call]
        earlier = answered(reply)
        return observation if earlier is None else earlier

    def _append(self, appends: Sequence[Append]) -> None:
        if not appends:
            return
        if self._batch.holding:
            for append in appends:
                self._batch.defer("xadd", append.stream, append.fields, **append.xadd_kwargs())
            return

        def build(pipe: Any) -> None:
            for append in appends:
                pipe.xadd(append.stream, append.fields, **append.xadd_kwargs())

        self._batch.run(build)

    def get(self, action_id: str) -> Observation | None:
        """The action's stored result, or None if none was stored (or it expired)."""
        (raw,) = self._batch.run(lambda pipe: pipe.get(keys.action_result(action_id)))
        return Observation.model_validate_json(raw) if raw else None


def _same_slot(key: str, other: str) -> bool:
    return keys.slot_tag(key) == keys.slot_tag(other)
