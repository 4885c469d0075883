"""The indexes over runs, each a sorted set of run ids.

- all runs by creation time (``tether:runs``);
- the runs of one population (production, evaluation, shadow), and of one agent in
  it, by creation time: a page of one agent's production runs reads one sorted set;
- the runs of one population, and of one agent in it, in one status, by creation
  time: a status filter reads only runs in that status (running and waiting_tools,
  which a run goes between at every step, share one);
- unfinished runs by their last commit (the stalled-run sweep), and how often the
  sweep re-drove each.

The commits that create and advance a run write them (RunStore); the status indexes
move inside the very commit that changes the status (invariant 3). A run leaves the
others when a reader meets it finished or expired.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import cast

import redis
from redis.client import Pipeline

from tether.store import keys
from tether.store.state import RunState, RunStatus
from tether.store.versioned import SideWrite


class RunKind(StrEnum):
    """Which population a run belongs to: production, an evaluation, or a shadow copy."""

    production = "production"
    eval = "eval"
    shadow = "shadow"


# What tether.evaluation.harness names evaluation agents; not imported from there, since
# the store sits below evaluation.
EVAL_PREFIX = "eval:"


def kind_of(agent: str, primary_run_id: str | None) -> RunKind:
    if primary_run_id is not None:
        return RunKind.shadow
    if agent.startswith(EVAL_PREFIX):
        return RunKind.eval
    return RunKind.production


def by_kind(kind: RunKind) -> str:
    return keys.runs_of_kind(kind)


def by_agent(kind: RunKind, agent: str) -> str:
    return keys.runs_of_agent(kind, agent)


# A run goes from running to waiting_tools and back at every step, so one index holds
# both: a step then moves no index entry (it moved six in each of two commits, a fifth
# of a step's Redis commands). A filter on one of them reads the run's status too.
IN_PROGRESS = "in_progress"
_INDEXED_AS = {RunStatus.running: IN_PROGRESS, RunStatus.waiting_tools: IN_PROGRESS}


def indexed_as(status: str) -> str:
    """The name of the status index that holds runs in ``status``."""
    return _INDEXED_AS.get(RunStatus(status), str(status))


def indexed_with(status: str) -> frozenset[RunStatus]:
    """Every status whose runs share ``status``'s index (``status`` included)."""
    name = indexed_as(status)
    return frozenset(s for s in RunStatus if indexed_as(s) == name)


def by_status(kind: RunKind, status: str, agent: str | None = None) -> str:
    """The index of one population's runs (of ``agent``, if named) in ``status``; running
    and waiting_tools share one (``IN_PROGRESS``)."""
    name = indexed_as(status)
    if agent is None:
        return keys.runs_of_status(kind, name)
    return keys.runs_of_agent_status(kind, agent, name)


def created(agent: str, primary_run_id: str | None, ttl_s: int) -> list[tuple[str, int]]:
    """The indexes a new run joins, with their TTL, for RunStore.create's ``indexes``.

    Each index lives as long as the newest run in it may (``ttl_s``, the run TTL).
    """
    kind = kind_of(agent, primary_run_id)
    return [(by_kind(kind), ttl_s), (by_agent(kind, agent), ttl_s)]


def every_index(agent: str, primary_run_id: str | None) -> list[str]:
    """Every population index a run of ``agent`` may be in (by creation, by status), for
    taking a run out of them all."""
    kind = kind_of(agent, primary_run_id)
    statuses = {by_status(kind, s, name): None for s in RunStatus for name in (None, agent)}
    return [by_kind(kind), by_agent(kind, agent), *statuses]


def status_moves(before: RunState | None, after: RunState, ttl_s: int) -> list[SideWrite]:
    """The side writes that move a run from ``before``'s status indexes to ``after``'s.

    They ride with the commit of ``after`` over ``before``'s version, so the run is in
    the index of the status it was committed with, and only that one. Nothing when the
    status stays in the same index.
    """
    if before is not None and indexed_as(before.status) == indexed_as(after.status):
        return []
    kind = kind_of(after.agent, after.primary_run_id)
    writes: list[SideWrite] = []
    for agent in (None, after.agent):
        if before is not None:
            writes.append(SideWrite("ZREM", by_status(kind, before.status, agent), (after.run_id,)))
        index = by_status(kind, after.status, agent)
        writes.append(SideWrite("ZADD", index, (after.created_at.timestamp(), after.run_id)))
        writes.append(SideWrite("EXPIRE", index, (ttl_s,)))
    return writes


class RunIndexes:
    """Reads and upkeep of the run indexes; the commits write them (``add_*``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    # written inside a commit's round trip ---------------------------------------------

    @staticmethod
    def add_created(
        pipe: Pipeline, run_id: str, created_at: float, extra: Sequence[tuple[str, int]] = ()
    ) -> None:
        """Queue the new run's entries: the index of all runs, and each of ``extra``
        (sorted set key, its TTL in seconds)."""
        pipe.zadd(keys.RUN_INDEX, {run_id: created_at}, nx=True)
        for index, ttl_s in extra:
            pipe.zadd(index, {run_id: created_at}, nx=True)
            pipe.expire(index, ttl_s)

    @staticmethod
    def add_active(pipe: Pipeline, run_id: str) -> None:
        """Queue the mark that an unfinished run was committed just now."""
        pipe.zadd(keys.ACTIVE_RUNS, {run_id: time.time()})

    # all runs -----------------------------------------------------------------------

    def newest(self, limit: int) -> list[str]:
        """The ids of the ``limit`` runs created last, newest first (some may have expired)."""
        return cast(list[str], self._client.zrevrange(keys.RUN_INDEX, 0, limit - 1))

    def drop(self, run_ids: Sequence[str]) -> None:
        """Forget runs whose data expired (finished runs expire after run_ttl_s)."""
        if run_ids:
            self._client.zrem(keys.RUN_INDEX, *run_ids)

    # unfinished runs (tether.planner.reconcile) ---------------------------------------

    def stalled(self, idle_since: float, limit: int) -> list[str]:
        """Unfinished runs (as far as the index knows) with no commit since ``idle_since``."""
        return cast(
            list[str],
            self._client.zrangebyscore(keys.ACTIVE_RUNS, "-inf", idle_since, start=0, num=limit),
        )

    def touch_active(self, run_id: str) -> None:
        """Put off the run's next stall check, if it is still in the index."""
        self._client.zadd(keys.ACTIVE_RUNS, {run_id: time.time()}, xx=True)

    def forget_active(self, run_id: str) -> None:
        """The run has ended or is gone: no more stall checks, no re-drive count."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zrem(keys.ACTIVE_RUNS, run_id)
        pipe.hdel(keys.REDRIVES, run_id)
        pipe.execute()

    def count_redrive(self, run_id: str, step: int) -> int:
        """How many times the run has now been re-driven at ``step`` (one sweeper at a time)."""
        seen = cast(str | None, self._client.hget(keys.REDRIVES, run_id))
        last_step, _, count = (seen or "").partition(":")
        redrives = int(count) + 1 if seen and int(last_step) == step else 1
        self._client.hset(keys.REDRIVES, run_id, f"{step}:{redrives}")
        return redrives
