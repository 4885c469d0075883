"""The run store: explicit run state, its event log and action results, in Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from pydantic import BaseModel, TypeAdapter
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.retry import Retry

from tether import keys, spill
from tether.batch import Build, WriteBatch
from tether.budgets import Budgets, BudgetUsage, GuardedReservation, human_clock
from tether.cluster_client import RidingCluster
from tether.errors import BudgetExhaustedError, StaleStateError, UnknownRunError
from tether.messages import Observation, RunEvent, TaskEvent, ToolAction, utcnow
from tether.redact import get_redactor
from tether.state import ChatMessage, RunState, RunStatus, StoredLists
from tether.versioned import (
    CAS_SCRIPT,
    REQUIREMENT_MISSING,
    Append,
    Lost,
    SideWrite,
    VersionedDocs,
    cas_call,
    parse_cas,
    spill_entries,
)

LIFECYCLE_MAXLEN = 100_000
# Run states this process last read or committed, kept to start the next update from.
KNOWN_STATES = 512
StreamEntries = list[tuple[str, dict[str, str]]]
_RUN_NAMESPACE = uuid.UUID("6f1c1d1e-7a43-4c35-9a4e-1f3b8f0b2a10")
_MESSAGES = TypeAdapter(list[ChatMessage])
_OBSERVATIONS = TypeAdapter(list[Observation])
# Hash fields beside the run's document: how many of its lists' entries it counts, and
# how often a list was written anew rather than appended to.
_LISTED = ["messages", "completed", "generation"]


class _PendingView(BaseModel):
    """What the executor reads of a run's document: the actions it waits for."""

    pending_actions: list[ToolAction] = []


def connect(url: str, cluster: bool = False) -> redis.Redis:
    """A client that rides out a Redis restart or failover of up to about a minute.

    Every write Tether makes is safe to repeat (versioned commits, idempotent
    reservations, SET NX results), so retrying a command whose reply was lost
    is harmless. With ``cluster``, ``url`` names any node of a Redis Cluster and
    the client finds the rest (TETHER_REDIS_CLUSTER), riding out a node's restart
    the same way (tether.cluster_client).
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30)
    if cluster:
        # The store's calls are written against redis.Redis; RedisCluster answers them
        # alike (slot by slot), which is what the cast says.
        return cast(
            redis.Redis,
            RidingCluster.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=30,
                retry=retry,
            ),
        )
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def run_id_for(event_id: str) -> str:
    """Runs are named by their event, so publishing an event twice names one run."""
    return "run_" + uuid.uuid5(_RUN_NAMESPACE, event_id).hex[:20]


class RunStore:
    """Run state, event logs and action results.

    A run's messages and completed actions, the parts that grow with every step,
    live in lists of their own (keys.run_messages, keys.run_completed) that a
    commit appends to, and the document beside them holds the rest: what a commit
    writes does not grow with the run. The document counts the entries it covers,
    so a reader that meets a commit in between ignores entries that came after.

    Round trips are the cost of a step, so the store saves them: an update
    starts from the state this process last read or committed (the version
    compare-and-set catches a stale one, and hands back the winner); a lost
    commit gets the current state in the same reply; log appends and budget
    settlements inside a task ride along with the next round trip
    (tether.batch); a terminal commit sets the run's expiry in the same script.
    """

    def __init__(self, client: redis.Redis, *, run_ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.batch = WriteBatch(client)
        self.docs = VersionedDocs(self.batch, cluster=self.cluster)
        self.budgets = Budgets(client, self.batch)
        self.run_ttl_s = run_ttl_s
        self._known: dict[str, RunState] = {}
        self._known_lock = threading.Lock()
        self._task = threading.local()

    # task boundaries (Runtime calls these from Celery's task signals) ----------------

    def begin_task(self) -> None:
        """A task starts in this thread: hold back writes, remember its own commits."""
        self.batch.begin()
        self._task.commits = {}

    def end_task(self) -> None:
        """The task ended, however it ended: send what is held back, forget its commits."""
        self._task.commits = None
        self.batch.end()

    # run state -----------------------------------------------------------------

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
            pipe.zadd(keys.RUN_INDEX, {state.run_id: created_at}, nx=True)
            for index, ttl_s in indexes:
                pipe.zadd(index, {state.run_id: created_at}, nx=True)
                pipe.expire(index, ttl_s)
            generation[:] = [self._add_cas(pipe, state, 0, appends)]

        generation: list[int] = []
        reply = self.batch.run(build)[-1]
        version, _ = parse_cas(reply)
        if version < 0:
            return self.load(state.run_id), False
        self._settle(state.run_id, reply)
        created = state.model_copy(update={"version": version})
        return self._remember(_stored(created, generation[0])), True

    def get(self, run_id: str) -> RunState | None:
        """The run's latest state; inside a task that committed it, that commit.

        A state this very task committed is what a read would return a moment
        after the commit, and any read is already that stale by the time its
        caller acts: every write is a compare-and-set over the version read.
        """
        commits: dict[str, RunState] | None = getattr(self._task, "commits", None)
        if commits and run_id in commits:
            return commits[run_id]
        # The document first: the lists read after it hold at least what it counts.
        (doc, version, *listed), messages, completed = self.batch.run(
            lambda pipe: (
                pipe.hmget(keys.run(run_id), ["doc", "version", *_LISTED]),
                pipe.lrange(keys.run_messages(run_id), 0, -1),
                pipe.lrange(keys.run_completed(run_id), 0, -1),
            )
        )
        if doc is None:
            return None
        state = RunState.model_validate_json(doc).model_copy(update={"version": int(version or 0)})
        n_messages, n_completed, generation = listed
        if n_messages is not None:
            state = state.model_copy(
                update={
                    "messages": _MESSAGES.validate_json(_array(messages[: int(n_messages)])),
                    "completed_actions": _OBSERVATIONS.validate_json(
                        _array(completed[: int(n_completed or 0)])
                    ),
                }
            )
            return self._remember(_stored(state, int(generation or 0)))
        # Written before the lists existed: the document holds all, the lists nothing yet.
        state._stored = StoredLists([], [], 0)
        return self._remember(state)

    def load(self, run_id: str) -> RunState:
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

    def commit(self, state: RunState) -> RunState:
        """Write ``state`` over the version it was loaded at; StaleStateError if it lost.

        As given: no human_clock, no log entries, no side writes. The runtime's commits
        go through ``update``; this is for tests that set a state up (and race it).
        """
        committed, _ = self._commit(state)
        if committed is None:
            raise StaleStateError(
                f"{keys.run(state.run_id)} changed since version {state.version} was read; "
                "reload and decide again"
            )
        return committed

    def update(
        self,
        run_id: str,
        change: Callable[[RunState], RunState | None],
        *,
        log: Callable[[RunState], Sequence[RunEvent]] | None = None,
        side_writes: Callable[[RunState], Sequence[SideWrite]] | None = None,
        tool_calls: tuple[str, int] | None = None,
        reserve_after: Callable[[RunState], GuardedReservation | None] | None = None,
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
        ``outcome`` says what came of it.

        The first attempt starts from the state this process last saw, if any:
        a commit over a stale version loses and returns the current state, and
        a decline on a remembered state is checked against the current version.
        """
        state = self._recall(run_id)
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
                [*(side_writes(changed) if side_writes else ()), *clock],
                reserve_after(changed) if reserve_after else None,
            )
            if committed is not None:
                return committed
            state, fresh = (current or self.load(run_id)), True
        raise StaleStateError(
            f"run {run_id} kept changing under {attempts} update attempts; retry later"
        )

    def _commit(
        self,
        state: RunState,
        events: Sequence[RunEvent] = (),
        tool_calls: tuple[str, int] | None = None,
        side_writes: Sequence[SideWrite] = (),
        ahead: GuardedReservation | None = None,
    ) -> tuple[RunState | None, RunState | None]:
        """(committed, None) if it won; (None, the current state) if another commit came first."""
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
                self._add_cas(pipe, updated, state.version, appends, require, side_writes, token)
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
        if version < 0:
            return None, self._winner(state, lost)
        if ahead is not None:
            ahead.outcome = Budgets.guarded(replies[-1])
        self._settle(run_id, cas_reply)
        committed = self._remember(
            _stored(updated.model_copy(update={"version": version}), generation[0])
        )
        commits: dict[str, RunState] | None = getattr(self._task, "commits", None)
        if commits is not None:
            commits[committed.run_id] = committed
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
    ) -> int:
        """Queue the commit of ``state``; returns the generation of the lists it writes.

        ``token`` names the commit in the run's hash (``commit``), for a guarded reservation.
        """
        run_id = state.run_id
        lists, generation = _list_writes(state, expected_version)
        stored = state._stored
        expire = (
            [
                keys.run(run_id),
                keys.run_messages(run_id),
                keys.run_completed(run_id),
                keys.run_log(run_id),
                keys.budget(run_id),
                keys.reservations(run_id),
            ]
            if state.terminal
            else []
        )
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
            side_writes=[*side_writes, *lists],
            cluster=self.cluster,
            # A commit that loses gets what was appended since, to catch up without a read.
            tails=(
                [
                    (keys.run_messages(run_id), len(stored.messages)),
                    (keys.run_completed(run_id), len(stored.completed)),
                ]
                if stored is not None
                else []
            ),
        )
        if not state.terminal:
            # Outside the script, so a commit that loses still touches the run: that
            # only delays its next stall check. Finished runs leave at their next check.
            pipe.zadd(keys.ACTIVE_RUNS, {run_id: time.time()})
        CAS_SCRIPT.add(pipe, len(cas_keys), *cas_keys, *args)  # its reply comes last
        return generation

    def _settle(self, run_id: str, reply: Any) -> None:
        """Apply what a winning commit wrote to other cluster slots (tether.spill)."""
        if self.cluster:
            spill.settle(self.batch, keys.spill(keys.run(run_id)), spill_entries(reply))

    def settle_spill(self, run_id: str) -> int:
        """Apply what commits of the run left for other cluster slots (their writer
        died first); how many commits' writes there were. Nothing to do on one Redis."""
        return spill.settle_all(self.batch, keys.spill(keys.run(run_id))) if self.cluster else 0

    def _moved_on(self, state: RunState) -> bool:
        (version,) = self.batch.run(lambda pipe: pipe.hget(keys.run(state.run_id), "version"))
        return int(version or 0) != state.version

    def _winner(self, loser: RunState, lost: Lost | None) -> RunState | None:
        """The state that won over ``loser``, from the losing commit's reply: the winner's
        document, and ``loser``'s lists with what was appended since. None when that
        cannot be told without a read (the lists were written anew, or it is not known
        what the loser held)."""
        stored = loser._stored
        if (
            lost is None
            or stored is None
            or stored.generation < 0
            or lost.generation != stored.generation
            or len(lost.tails) != 2
        ):
            return None
        current = RunState.model_validate_json(lost.doc)
        if current.messages or current.completed_actions:
            return None  # written before the lists existed: its document holds them
        messages, completed = lost.tails
        winner = current.model_copy(
            update={
                "messages": [*stored.messages, *_MESSAGES.validate_json(_array(messages))],
                "completed_actions": [
                    *stored.completed,
                    *_OBSERVATIONS.validate_json(_array(completed)),
                ],
                "version": lost.version,
            }
        )
        return self._remember(_stored(winner, lost.generation))

    def _remember(self, state: RunState) -> RunState:
        with self._known_lock:
            self._known.pop(state.run_id, None)
            if len(self._known) >= KNOWN_STATES:
                self._known.pop(next(iter(self._known)))
            self._known[state.run_id] = state
        return state

    def _recall(self, run_id: str) -> RunState | None:
        with self._known_lock:
            return self._known.get(run_id)

    def recent(self, limit: int = 50) -> list[RunState]:
        run_ids = cast(list[str], self.client.zrevrange(keys.RUN_INDEX, 0, limit - 1))
        states = {run_id: self.get(run_id) for run_id in run_ids}
        expired = [run_id for run_id, state in states.items() if state is None]
        if expired:
            # Finished runs expire after run_ttl_s; the index forgets them as it meets them.
            self.client.zrem(keys.RUN_INDEX, *expired)
        return [state for state in states.values() if state is not None]

    # stalled runs (tether.planner.reconcile) ---------------------------------------

    def stalled(self, idle_since: float, limit: int) -> list[str]:
        """Unfinished runs (as far as the index knows) with no commit since ``idle_since``."""
        return cast(
            list[str],
            self.client.zrangebyscore(keys.ACTIVE_RUNS, "-inf", idle_since, start=0, num=limit),
        )

    def touch_active(self, run_id: str) -> None:
        self.client.zadd(keys.ACTIVE_RUNS, {run_id: time.time()}, xx=True)

    def forget_active(self, run_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(keys.ACTIVE_RUNS, run_id)
        pipe.hdel(keys.REDRIVES, run_id)
        pipe.execute()

    def count_redrive(self, run_id: str, step: int) -> int:
        """How many times the run has now been re-driven at ``step`` (one sweeper at a time)."""
        seen = cast(str | None, self.client.hget(keys.REDRIVES, run_id))
        last_step, _, count = (seen or "").partition(":")
        redrives = int(count) + 1 if seen and int(last_step) == step else 1
        self.client.hset(keys.REDRIVES, run_id, f"{step}:{redrives}")
        return redrives

    # event log -----------------------------------------------------------------

    def log(self, run_id: str, kind: str, step: int, /, **data: Any) -> RunEvent:
        """Append to the run's event log and the lifecycle stream.

        Inside a task the append rides along with the next round trip; once the
        run has ended (as far as this process knows) it goes out at once.
        """
        event = RunEvent(run_id=run_id, kind=kind, step=step, data=data)
        appends = log_appends(event)
        known = self._recall(run_id)
        held = (known is None or not known.terminal) and all(
            self.batch.defer("xadd", a.stream, a.fields, **a.xadd_kwargs()) for a in appends
        )
        if held:
            return event

        def build(pipe: Pipeline) -> None:
            for a in appends:
                pipe.xadd(a.stream, a.fields, **a.xadd_kwargs())  # type: ignore[arg-type]

        self.batch.run(build)
        return event

    def flush(self) -> None:
        """Send the writes held back so far (before a message published without
        holding, and when a task's body ends)."""
        self.batch.flush()

    def trace(self, run_id: str, after: str = "-") -> list[tuple[str, RunEvent]]:
        """The run's event log from ``after`` (exclusive when it is an id) onwards.

        Each ``model_call`` entry is written with only the messages that came
        after the model's previous answer (``messages_from``); here it gets the
        whole input it saw back, as ``messages``.
        """
        start = after if after == "-" else f"({after}"
        self.batch.flush()
        entries = cast(StreamEntries, self.client.xrange(keys.run_log(run_id), min=start))
        events = [(entry_id, RunEvent.model_validate_json(f["event"])) for entry_id, f in entries]
        if after != "-" and any(_input_from(event) for _, event in events):
            # Its model's input starts in entries before ``after``: read them too.
            shown = {entry_id for entry_id, _ in events}
            return [entry for entry in self.trace(run_id) if entry[0] in shown]
        return _whole_inputs(events)

    # action results --------------------------------------------------------------

    def save_result(self, observation: Observation) -> Observation:
        """Store the first result for an action; a later one loses and gets the first back.

        Inside a task the write rides along with the next round trip and the
        caller's result is taken as the first: the executor writes results
        only under the action's lease, so no other result can come between.
        """
        key, doc = keys.action_result(observation.action_id), observation.model_dump_json()
        if self.batch.defer("set", key, doc, nx=True, ex=self.run_ttl_s):
            return observation
        (stored,) = self.batch.run(lambda pipe: pipe.set(key, doc, nx=True, ex=self.run_ttl_s))
        if stored:
            return observation
        existing = self.get_result(observation.action_id)
        return existing if existing is not None else observation

    def get_result(self, action_id: str) -> Observation | None:
        (raw,) = self.batch.run(lambda pipe: pipe.get(keys.action_result(action_id)))
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


def _input_from(event: RunEvent) -> int:
    """Where a model call's logged messages start in what it saw (0: they are all of it)."""
    return int(event.data.get("messages_from") or 0) if event.kind == "model_call" else 0


def _whole_inputs(events: list[tuple[str, RunEvent]]) -> list[tuple[str, RunEvent]]:
    """``events`` with each model call's ``messages`` made whole from the calls before it."""
    seen: list[Any] = []
    whole = []
    for entry_id, event in events:
        if event.kind == "model_call":
            start = _input_from(event)
            if start <= len(seen):
                seen = [*seen[:start], *(event.data.get("messages") or [])]
                data = {k: v for k, v in event.data.items() if k != "messages_from"}
                event = event.model_copy(update={"data": {**data, "messages": seen}})
        whole.append((entry_id, event))
    return whole


def _array(entries: list[str]) -> str:
    return "[" + ",".join(entries) + "]"


def _stored(state: RunState, generation: int) -> RunState:
    """``state``, marked as holding what the store holds of its lists."""
    state._stored = StoredLists(state.messages, state.completed_actions, generation)
    return state


def _list_writes(state: RunState, expected_version: int) -> tuple[list[SideWrite], int]:
    """What brings the run's message and action lists from what is stored to ``state``'s,
    and the generation of the lists it leaves."""
    stored = state._stored
    if stored is None and expected_version == 0:
        stored = StoredLists([], [], 0)  # a new run: nothing is stored yet
    writes: list[SideWrite] = []
    lists: tuple[tuple[str, Sequence[ChatMessage | Observation], Sequence[Any] | None], ...] = (
        (keys.run_messages(state.run_id), state.messages, stored.messages if stored else None),
        (
            keys.run_completed(state.run_id),
            state.completed_actions,
            stored.completed if stored else None,
        ),
    )
    rewritten = False
    for key, items, before in lists:
        added = _appended(items, before)
        if added is None:
            # Not an append to what is stored, or what is stored is not known: write anew.
            writes.append(SideWrite("DEL", key, ()))
            added, rewritten = items, True
        if added:
            writes.append(SideWrite("RPUSH", key, tuple(i.model_dump_json() for i in added)))
    generation = stored.generation if stored is not None else -1
    if rewritten:
        # A loser that holds the old entries must not take the new ones for an append.
        writes.append(SideWrite("HINCRBY", keys.run(state.run_id), ("generation", 1)))
        generation = generation + 1 if generation >= 0 else -1
    return writes, generation


def _appended(items: Sequence[Any], before: Sequence[Any] | None) -> Sequence[Any] | None:
    """What ``items`` adds after ``before``; None if it does not start with ``before``."""
    if before is None or len(items) < len(before):
        return None
    n = len(before)
    # Commits copy the entries they keep, so identity settles it without comparing content.
    if all(a is b for a, b in zip(items, before, strict=False)) or list(items[:n]) == list(before):
        return items[n:]
    return None


def log_appends(event: RunEvent) -> list[Append]:
    """An event's entries: the run's own log, and one line in the lifecycle stream.

    Every entry of the event log is written through here, so this is where
    secrets (tether.redact) leave it; the common case, no secret, costs one scan.
    """
    doc = event.model_dump_json()
    redactor = get_redactor()
    if redactor.found(doc):
        doc = event.model_copy(update={"data": redactor.value(event.data)}).model_dump_json()
    return [
        Append(keys.run_log(event.run_id), {"event": doc}),
        Append(
            keys.LIFECYCLE_STREAM,
            {"run_id": event.run_id, "kind": event.kind, "step": event.step},
            maxlen=LIFECYCLE_MAXLEN,
        ),
    ]
