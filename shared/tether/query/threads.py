"""Threads and long-term memory as a person reads them: a thread's runs and turns, and
what agents remember about one subject (tether.memory)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from tether.memory import longterm, threads
from tether.memory.longterm import MemoryItem
from tether.memory.window import Turn
from tether.runtime import Runtime
from tether.store import keys


class ThreadRow(BaseModel):
    thread_id: str
    turns: int
    queued: int
    last_activity: datetime


class ThreadRun(BaseModel):
    run_id: str
    # "queued": its event waits on the thread and its run does not exist yet.
    status: str


class ThreadView(BaseModel):
    """A thread's runs (ended, then running and queued) and the turns its history keeps."""

    thread_id: str
    runs: list[ThreadRun]
    queued_events: list[str]
    turns: list[Turn]

    @property
    def forgettable(self) -> bool:
        """Whether tether.memory.forget.forget_thread would take it now (nothing going)."""
        return not self.queued_events and all(
            r.status not in ("queued", "running", "waiting_tools", "waiting_human")
            for r in self.runs
        )


class SubjectMemory(BaseModel):
    """What each agent remembers about one subject, and the runs about it."""

    subject: str
    items: dict[str, list[MemoryItem]]
    runs: dict[str, list[str]]


def list_threads(rt: Runtime, limit: int = 50) -> list[ThreadRow]:
    """Threads by their last activity, newest first."""
    client = rt.store.client
    return [
        ThreadRow(
            thread_id=thread_id,
            turns=int(client.llen(keys.thread_turns(thread_id))),
            queued=len(threads.queued(rt, thread_id)),
            last_activity=datetime.fromtimestamp(score, UTC),
        )
        for thread_id, score in threads.recent(rt, limit)
    ]


def thread(rt: Runtime, thread_id: str) -> ThreadView | None:
    """The thread; None when it holds nothing (never used, or forgotten)."""
    run_ids = threads.runs_of(rt, thread_id)
    turns = threads.turns(rt, thread_id)
    if not run_ids and not turns:
        return None
    runs = []
    for run_id in run_ids:
        status = rt.store.status(run_id)
        runs.append(ThreadRun(run_id=run_id, status=str(status) if status else "queued"))
    return ThreadView(
        thread_id=thread_id, runs=runs, queued_events=threads.queued(rt, thread_id), turns=turns
    )


def subject_memory(rt: Runtime, subject: str, agent: str | None = None) -> SubjectMemory:
    """What agents (or the one named) remember about ``subject``; agents with nothing
    about it are left out."""
    client = rt.store.client
    items: dict[str, list[MemoryItem]] = {}
    runs: dict[str, list[str]] = {}
    for name in [agent] if agent else longterm.agents(client):
        found, about = (
            longterm.items(client, name, subject),
            longterm.runs_about(client, name, subject),
        )
        if found:
            items[name] = found
        if about:
            runs[name] = about
    return SubjectMemory(subject=subject, items=items, runs=runs)
