"""The run store: explicit run state in Redis, and the parts that describe runs.

``RunStore`` reads and commits run state; the other jobs are parts it composes and
callers reach by name: ``store.log`` (the event log), ``store.results`` (action
results), ``store.rejections`` (refused events), ``store.indexes`` (runs by time, stalled
runs), ``store.budgets`` and ``store.docs`` (versioned records beside runs). They share
one ``WriteBatch``, so a task's held-back writes of every part ride along together.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from pydantic import BaseModel
from redis.client import Pipeline
from redis.cluster import RedisCluster

from tether.errors import BudgetExhaustedError, StaleStateError, UnknownRunError
from tether.store import keys, run_lists, spill
from tether.store.batch import Build, WriteBatch
from tether.store.budgets import Budgets, BudgetUsage, GuardedReservation, human_clock
from tether.store.indexes import RunIndexes, status_moves
from tether.store.known import KnownStates
from tether.store.log import EventLog, log_appends
from tether.store.rejections import Rejections
from tether.store.results import ActionResults
from tether.store.state import RunState, RunStatus
from tether.store.versioned import (
    HELD_VALUE_DIFFERS,
    REQUIREMENT_MISSING,
    VERSIONED,
    Append,
    SideWrite,
    VersionedDocs,
    cas_call,
    held_differs,
    parse_cas,
    spill_entries,
)
from tether.transport.wire import Observation, RunEvent, TaskEvent, ToolAction, utcnow

_RUN_NAMESPACE = uuid.UUID("6f1c1d1e-7a43-4c35-9a4e-1f3b8f0b2a10")


class _PendingView(BaseModel):
    """What the executor reads of a run's document: the actions it waits for."""

    pending_actions: list[ToolAction] = []


def run_id_for(event_id: str) -> str:
    """Runs are named by their event, so publishing an event twice names one run."""
    return "run_" + uuid.uuid5(_RUN_NAMESPACE, event_id).hex[:20]


class RunStore:
    """Run state: create, read, and update by versioned commits.

    Round trips are the cost of a step, so the store saves them: an update
    starts from the state this process last read or committed (the version
    compare-and-set catches a stale one, and hands back the winner); a lost
    commit gets the current state in the same reply; log appends and budget
    settlements inside a task ride along with the next round trip
    (tether.store.batch); a terminal commit sets the run's expiry in the same script.
    A commit writes its log entries, index entries and side writes in the same
    script as the state, or nothing (invariant 3).
    """

    def __init__(self, client: redis.Redis, *, run_ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.run_ttl_s = run_ttl_s
        self.batch = WriteBatch(client)
        self.known = KnownStates()
        self.docs = VersionedDocs(self.batch, cluster=self.cluster)
        self.budgets = Budgets(client, self.batch)
        self.log = EventLog(client, self.batch, self.known)
        self.results = ActionResults(self.batch, ttl_s=run_ttl_s)
        self.rejections = Rejections(client, ttl_s=run_ttl_s)
        self.indexes = RunIndexes(client)

    # task boundaries (Runtime calls these from Celery's task signals) ----------------

    def begin_task(self) -> None:
        """A task starts in this thread: hold back writes, remember its own commits."""
        self.batch.begin()
        self.known.begin_task()

    def end_task(self) -> None:
        """The task ended, however it ended: send what is held back, forget its commits."""
        self.known.end_task()
        self.batch.end()

    def flush(self) -> None:
        """Send the writes held back so far (before a message published without
        holding, and when a task's body ends)."""
        self.batch.flush()

    # reads ---------------------------------------------------------------------------

    def get(self, run_id: str) -> RunState | None:
        """The run's latest state; inside a task that committed it, that commit.

        A state this very task committed is what a read would return a moment
        after the commit, and any read is already that stale by the time its
        caller acts: every write is a compare-and-set over the version read.
        """
        committed = self.known.committed_in_task(run_id)
        if committed is not None:
            return committed
        # The document first: the lists read after it hold at least what it counts.
        (doc, version, *listed), messages, completed = self.batch.run(
            lambda pipe: (
                pipe.hmget(keys.run(run_id), ["doc", "version", *run_lists.LISTED]),
                pipe.lrange(keys.run_messages(run_id), 0, -1),
                pipe.lrange(keys.run_completed(run_id), 0, -1),
            )
        )
        if doc is None:
            return None
        state = RunState.model_validate_json(doc).model_copy(update={"version": int(version or 0)})
        return self.known.remember(run_lists.with_lists(state, listed, messages, completed))

    def load(self, run_id: str) -> RunState:
        """The run's latest state; UnknownRunError if there is no such run."""
        state = self.get(run_id)
        if state is None:
            raise UnknownRunError(run_id)
        return state

    def status(self, run_id: str) -> RunStatus | None:
        """The run's status alone (None if there is no such run): one field, nothing parsed."""
        (status,) = self.batch.run(lambda pipe: pipe.hget(keys.run(run_id), "status"))
        if status is not None:
            return RunStatus(status)
        state = self.get(run_id)  # written before the status field existed
        return state.status if state is not None else None

    def action_state(
        self, run_id: str, action_id: str, also: Build
    ) -> tuple[RunStatus | None, Observation | None, ToolAction | None, list[Any]]:
        """The run's status, the action's stored result and the action as the run's
        committed state holds it pending (None: it is not pending), in one round trip.

        ``also`` queues more commands to go first in the same round trip; their
        replies come back last.
        """
        *others, (status, doc), raw = self.batch.run(
            lambda pipe: (
                also(pipe),
                pipe.hmget(keys.run(run_id), ["status", "doc"]),
                pipe.get(keys.action_result(action_id)),
            )
        )
        stored = Observation.model_validate_json(raw) if raw else None
        run_status = RunStatus(status) if status is not None else self.status(run_id)
        pending = None
        if doc is not None:
            held = _PendingView.model_validate_json(doc).pending_actions
            pending = next((a for a in held if a.action_id == action_id), None)
        return run_status, stored, pending, others

    def recent(self, limit: int = 50) -> list[RunState]:
        """The runs created last, newest first."""
        states = {run_id: self.get(run_id) for run_id in self.indexes.newest(limit)}
        # Finished runs expire after run_ttl_s; the index forgets them as it meets them.
        self.indexes.drop([run_id for run_id, state in states.items() if state is None])
        return [state for state in states.values() if state is not None]

    # commits -------------------------------------------------------------------------

    def create(
        self,
        event: TaskEvent,
        state: RunState,
        log: Sequence[RunEvent] = (),
        spent: BudgetUsage | None = None,
        indexes: Sequence[tuple[str, int]] = (),
    ) -> tuple[RunState, bool]:
        """Create the run for ``event`` unless it exists; returns (state, created).

        ``log`` (its ``run_started`` entry) is written by the creating commit itself;
        ``spent`` is what its budget opens with (see Budgets.add_open); the run joins
        each of ``indexes`` (sorted set key, its TTL in seconds).
        """
        appends = [a for entry in log for a in log_appends(entry)]
        created_at = state.created_at.timestamp()

        def build(pipe: Pipeline) -> None:
            self.budgets.add_open(pipe, state.run_id, state.limits, spent=spent)
            RunIndexes.add_created(pipe, state.run_id, created_at, indexes)
            moves = status_moves(None, state, self.run_ttl_s)
            generation[:] = [self._add_cas(pipe, state, 0, appends, side_writes=moves)]

        generation: list[int] = []
        reply = self.batch.run(build)[-1]
        version, _ = parse_cas(reply)
        if version < 0:
            return self.load(state.run_id), False
        self._settle(state.run_id, reply)
        created = state.model_copy(update={"version": version})
        return self.known.remember(run_lists.stored(created, generation[0])), True

    def update(
        self,
        run_id: str,
        change: Callable[[RunState], RunState | None],
        *,
        log: Callable[[RunState], Sequence[RunEvent]] | None = None,
        side_writes: Callable[[RunState], Sequence[SideWrite]] | None = None,
        tool_calls: tuple[str, int] | None = None,
        reserve_after: Callable[[RunState], GuardedReservation | None] | None = None,
        holding: Sequence[tuple[str, str]] = (),
        attempts: int = 20,
    ) -> RunState | None:
        """Apply ``change`` to the latest state until it commits; None when it declines.

        ``log`` describes a change for the event log: its entries are written
        by the commit itself, so the log holds exactly the changes that won.
        ``side_writes`` go in with the commit the same way (indexes, other records).
        ``tool_calls`` (reservation id, count) reserves tool calls in the same
        round trip, and the commit goes ahead only if they were granted; if not,
        BudgetExhaustedError, and nothing was written. ``reserve_after`` names a
        reservation for what the changed state does next (the next model call),
        sent in the same round trip and made only if this commit wins: its
        ``outcome`` says what came of it. ``holding`` lists (key, string) pairs, keys
        in the run's slot: the commit goes ahead only while each key holds exactly that
        string; if one does not, HeldValueDiffersError (with what it held), and nothing
        was written. Not with ``tool_calls``: their reservation would stay made.

        The first attempt starts from the state this process last saw, if any:
        a commit over a stale version loses and returns the current state, and
        a decline on a remembered state is checked against the current version.
        """
        if holding and tool_calls is not None:
            raise ValueError("update: holding with tool_calls would keep a reservation unused")
        state = self.known.recall(run_id)
        fresh = state is None
        if state is None:
            state = self.load(run_id)
        for _ in range(attempts):
            changed = change(state)
            if changed is None:
                if fresh or not self._moved_on(state):
                    return None
                state, fresh = self.load(run_id), True
                continue
            # Waiting for a human stops the wall clock; the commit ending the wait credits it.
            changed, clock = human_clock(state, changed)
            committed, current = self._commit(
                changed,
                log(changed) if log else (),
                tool_calls,
                [
                    *(side_writes(changed) if side_writes else ()),
                    *clock,
                    *status_moves(state, changed, self.run_ttl_s),
                ],
                reserve_after(changed) if reserve_after else None,
                holding,
            )
            if committed is not None:
                return committed
            state, fresh = (current or self.load(run_id)), True
        raise StaleStateError(
            f"run {run_id} kept changing under {attempts} update attempts; retry later"
        )

    def settle_spill(self, run_id: str) -> int:
        """Apply what commits of the run left for other cluster slots (their writer
        died first); how many commits' writes there were. Nothing to do on one Redis."""
        return spill.settle_all(self.batch, keys.spill(keys.run(run_id))) if self.cluster else 0

    def _commit(
        self,
        state: RunState,
        events: Sequence[RunEvent] = (),
        tool_calls: tuple[str, int] | None = None,
        side_writes: Sequence[SideWrite] = (),
        ahead: GuardedReservation | None = None,
        holding: Sequence[tuple[str, str]] = (),
    ) -> tuple[RunState | None, RunState | None]:
        """(committed, None) if it won; (None, the current state) if another commit came first;
        HeldValueDiffersError if a key of ``holding`` held another string."""
        run_id = state.run_id
        updated = state.model_copy(update={"updated_at": utcnow()})
        appends = [a for event in events for a in log_appends(event)]
        require = (
            [(keys.reservations(run_id), Budgets.granted_marker(tool_calls[0]))]
            if tool_calls is not None
            else []
        )

        # Names this commit in the run's hash, so a reservation guarded by it is made
        # only while no other commit came after it (budgets.lua).
        token = uuid.uuid4().hex

        def build(pipe: Pipeline) -> None:
            if tool_calls is not None:
                self.budgets.add_reserve(pipe, run_id, tool_calls[0], tool_calls=tool_calls[1])
            generation[:] = [
                self._add_cas(
                    pipe, updated, state.version, appends, require, side_writes, token, holding
                )
            ]
            if ahead is not None:
                self.budgets.add_guarded(pipe, run_id, ahead, token)

        generation: list[int] = []
        replies = self.batch.run(build)
        cas_reply = replies[-2] if ahead is not None else replies[-1]
        version, lost = parse_cas(cas_reply)
        if version == REQUIREMENT_MISSING:
            refused = Budgets.reservation(replies[0])
            if refused.granted:
                # The compare-and-set ran before its reservation: a Redis that lost its
                # scripts answered NOSCRIPT to the reservation, another client loaded
                # them, and the commit's script ran; the reservation ran when sent again.
                # Nothing was written: commit again (the reservation is not taken twice).
                return None, None
            raise BudgetExhaustedError(run_id, refused.reason, refused.limit)
        if version == HELD_VALUE_DIFFERS:
            raise held_differs(cas_reply, holding)
        if version < 0:
            won = run_lists.winner(state, lost)
            return None, (self.known.remember(won) if won is not None else None)
        if ahead is not None:
            ahead.outcome = Budgets.guarded(replies[-1])
        self._settle(run_id, cas_reply)
        committed = self.known.remember(
            run_lists.stored(updated.model_copy(update={"version": version}), generation[0])
        )
        self.known.note_commit(committed)
        return committed, None

    def _add_cas(
        self,
        pipe: Pipeline,
        state: RunState,
        expected_version: int,
        appends: Sequence[Append] = (),
        require: Sequence[tuple[str, str]] = (),
        side_writes: Sequence[SideWrite] = (),
        token: str = "",
        holding: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Queue the commit of ``state``; returns the generation of the lists it writes.

        ``token`` names the commit in the run's hash (``commit``), for a guarded reservation.
        """
        run_id = state.run_id
        lists, generation = run_lists.list_writes(state, expected_version)
        expire = keys.run_keys(run_id) if state.terminal else []
        cas_keys, args = cas_call(
            keys.run(run_id),
            state.model_dump_json(exclude={"messages", "completed_actions"}),
            expected_version,
            fields={
                "status": str(state.status),
                "messages": str(len(state.messages)),
                "completed": str(len(state.completed_actions)),
                "commit": token,
            },
            expire=expire,
            ttl_s=self.run_ttl_s,
            appends=appends,
            require=require,
            holding=holding,
            side_writes=[*side_writes, *lists],
            cluster=self.cluster,
            tails=run_lists.tails(state),
        )
        if not state.terminal:
            # Outside the script, so a commit that loses still touches the run: that
            # only delays its next stall check. Finished runs leave at their next check.
            RunIndexes.add_active(pipe, run_id)
        VERSIONED.add(pipe, len(cas_keys), *cas_keys, *args)  # its reply comes last
        return generation

    def _settle(self, run_id: str, reply: Any) -> None:
        """Apply what a winning commit wrote to other cluster slots (tether.store.spill)."""
        if self.cluster:
            spill.settle(self.batch, keys.spill(keys.run(run_id)), spill_entries(reply))

    def _moved_on(self, state: RunState) -> bool:
        (version,) = self.batch.run(lambda pipe: pipe.hget(keys.run(state.run_id), "version"))
        return int(version or 0) != state.version
