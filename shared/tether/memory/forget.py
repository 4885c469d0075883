"""Forgetting, for privacy requests: a thread's history, a subject's memories.

What is removed, precisely:

- a thread (``forget_thread``): its history (turns), queue, queued events, publish-order
  counter, run index and its entries in the threads indexes; and every run of the thread
  and every fork of one (tether.planner.fork: it holds a copy of the conversation), with everything kept
  under the run: its state (which holds the conversation), event log, budget and
  reservation keys, its spill list (on a Redis Cluster), the stored results, leases and in-flight markers of its tool
  actions, its escalations, and its entries in the run and escalation indexes;
- a subject (``forget_subject``): the memory hash of each agent (or the one named)
  for that subject, its spill list (on a Redis Cluster) and its index of the runs about that subject; with ``runs=True``
  also every ended run that wrote one of the items or was about the subject (its
  event named it: it may hold recalled copies), as above.

What remains: the lifecycle stream ``tether:events`` (run id, entry kind and step only,
no content), dead letters in ``tether:dead`` (message bodies; `tether dead list` shows
them), Prometheus counters (numbers, no content) and traces or logs already shipped
elsewhere. Without ``runs=True`` the runs about a subject keep their copies of its
memories (``memory_write`` log entries, recalled items in their conversation) until they
expire, TETHER_RUN_TTL_S after they ended; the report names them, and the runs still
going, which ``runs=True`` keeps too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from pydantic import BaseModel, Field

from tether.errors import TetherError
from tether.memory import longterm, threads
from tether.store import keys
from tether.store.state import RunState

if TYPE_CHECKING:
    from tether.runtime import Runtime


class ThreadBusyError(TetherError):
    """A thread with a run going or events queued cannot be forgotten yet."""


class Forgotten(BaseModel):
    """What a forget removed (deleted keys, index entries) and what still holds copies."""

    keys: list[str] = Field(default_factory=list)
    index_entries: list[str] = Field(default_factory=list)
    runs: list[str] = Field(default_factory=list)
    kept_runs: list[str] = Field(default_factory=list)


def _run_keys(rt: Runtime, run_id: str) -> tuple[list[str], list[str]]:
    """The keys of a run and the escalation ids it opened."""
    found = [*keys.run_keys(run_id), keys.spill(keys.run(run_id)), keys.run_forks(run_id)]
    state = rt.store.get(run_id)
    if state is not None:
        actions = {a.action_id for a in state.pending_actions} | {
            o.action_id for o in state.completed_actions
        }
        for action_id in sorted(actions):
            found += [
                keys.action_result(action_id),
                keys.action_lock(action_id),
                keys.action_inflight(action_id),
            ]
    # Escalation ids begin with the run id (tether.planner.fencing.escalation_id).
    prefix = "esc_" + run_id.replace(":", "_") + "_"
    escalations = [
        e
        for e in cast(list[str], rt.store.client.zrange(keys.ALL_ESCALATIONS, 0, -1))
        if e.startswith(prefix)
    ]
    return found, escalations


def purge_runs(rt: Runtime, run_ids: list[str], report: Forgotten) -> None:
    """Delete ended runs and everything kept under them."""
    client = rt.store.client
    for run_id in run_ids:
        run_keys, escalations = _run_keys(rt, run_id)
        run_keys += [keys.escalation(e) for e in escalations]
        # Not one transaction: on a Redis Cluster the run's keys and the indexes lie in
        # different slots. Deleting is safe to repeat, should a forget be cut short.
        pipe = client.pipeline(transaction=False)
        for key in run_keys:
            pipe.exists(key)
        present = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key in run_keys:
            pipe.delete(key)
        pipe.zrem(keys.RUN_INDEX, run_id)
        pipe.zrem(keys.ACTIVE_RUNS, run_id)
        pipe.hdel(keys.REDRIVES, run_id)
        if escalations:
            pipe.zrem(keys.ALL_ESCALATIONS, *escalations)
            pipe.zrem(keys.PENDING_ESCALATIONS, *escalations)
            pipe.zrem(keys.EXPIRING_ESCALATIONS, *escalations)
        pipe.execute()
        report.keys += [k for k, p in zip(run_keys, present, strict=True) if p]
        report.index_entries += [f"{keys.RUN_INDEX} {run_id}"]
        report.index_entries += [f"{keys.ALL_ESCALATIONS} {e}" for e in escalations]
        report.runs.append(run_id)


def forget_thread(rt: Runtime, thread_id: str) -> Forgotten:
    """Remove a thread's history and its runs; refuses while a run of it is going."""
    client = rt.store.client
    waiting = threads.queued(rt, thread_id)
    if waiting:
        raise ThreadBusyError(
            f"thread {thread_id!r} has {len(waiting)} event(s) queued or running "
            f"({', '.join(waiting)}): cancel its run (`tether runs cancel`) and let the "
            "queued ones finish, then forget it"
        )
    report = Forgotten()
    # A fork of a thread's run holds the conversation it copied: it goes with the thread.
    run_ids = with_forks(rt, cast(list[str], client.zrange(keys.thread_runs(thread_id), 0, -1)))
    live = [r for r in run_ids if (s := rt.store.get(r)) is not None and not s.terminal]
    if live:
        raise ThreadBusyError(f"thread {thread_id!r} still has runs going: {', '.join(live)}")
    purge_runs(rt, run_ids, report)
    thread_keys = [
        keys.thread_turns(thread_id),
        keys.thread_runs(thread_id),
        *threads.queue_keys(thread_id),
    ]
    indexes = [keys.THREADS, keys.THREADS_BUSY, keys.THREADS_GAPS]
    pipe = client.pipeline(transaction=False)
    for key in thread_keys:
        pipe.exists(key)
    for key in thread_keys:
        pipe.delete(key)
    for index in indexes:
        pipe.zrem(index, thread_id)
    replies = pipe.execute()
    present, in_indexes = replies[: len(thread_keys)], replies[2 * len(thread_keys) :]
    report.keys += [k for k, p in zip(thread_keys, present, strict=True) if p]
    report.index_entries += [
        f"{index} {thread_id}" for index, found in zip(indexes, in_indexes, strict=True) if found
    ]
    return report


def forget_subject(
    rt: Runtime, subject: str, agent: str | None = None, *, runs: bool = False
) -> Forgotten:
    """Remove what agents remember about ``subject`` (one agent with ``agent``)."""
    client = rt.store.client
    report = Forgotten()
    holders: set[str] = set()
    for name in [agent] if agent else longterm.agents(client):
        holders |= {item.run_id for item in longterm.items(client, name, subject)}
        holders |= set(longterm.runs_about(client, name, subject))
        memory = keys.memory(name, subject)
        for key in (memory, keys.spill(memory), keys.memory_runs(name, subject)):
            if client.delete(key):
                report.keys.append(key)
    existing = sorted(r for r in holders if rt.store.get(r) is not None)
    if runs:
        ended = [r for r in existing if _ended_or_gone(rt.store.get(r))]
        purge_runs(rt, ended, report)
        report.kept_runs = sorted(set(existing) - set(ended))
    else:
        report.kept_runs = existing
    return report


def with_forks(rt: Runtime, run_ids: list[str]) -> list[str]:
    """``run_ids`` and the runs forked from them, and from those, in that order."""
    found = list(run_ids)
    seen = set(found)
    for run_id in found:  # grows as forks are found
        for fork in cast(list[str], rt.store.client.zrange(keys.run_forks(run_id), 0, -1)):
            if fork not in seen:
                seen.add(fork)
                found.append(fork)
    return found


def _ended_or_gone(state: RunState | None) -> bool:
    return state is None or state.terminal
