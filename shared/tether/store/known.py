"""Run states this process last read or committed, kept to start the next update from.

Round trips are the cost of a step: an update that starts from the state this
process already holds saves a read (the version compare-and-set catches a stale
one), and the event log asks it whether a run has ended before holding an append
back. Inside a task, the states the task itself committed are what its reads return.
"""

from __future__ import annotations

import threading

from tether.store.state import RunState

#: How many runs' states one process keeps; the oldest remembered leaves first.
KNOWN_STATES = 512


class KnownStates:
    """The last state of each of the most recent runs this process read or committed."""

    def __init__(self, capacity: int = KNOWN_STATES) -> None:
        self._capacity = capacity
        self._states: dict[str, RunState] = {}
        self._lock = threading.Lock()
        self._task = threading.local()

    def remember(self, state: RunState) -> RunState:
        with self._lock:
            self._states.pop(state.run_id, None)
            if len(self._states) >= self._capacity:
                self._states.pop(next(iter(self._states)))
            self._states[state.run_id] = state
        return state

    def recall(self, run_id: str) -> RunState | None:
        with self._lock:
            return self._states.get(run_id)

    def forget(self, run_id: str) -> None:
        """Drop what is known of the run (its data went away behind this process's back)."""
        with self._lock:
            self._states.pop(run_id, None)

    def begin_task(self) -> None:
        """A task starts in this thread: from now on its reads return its own commits."""
        self._task.commits = {}

    def end_task(self) -> None:
        self._task.commits = None

    def note_commit(self, state: RunState) -> None:
        """``state`` was committed by the task running in this thread (if any)."""
        commits: dict[str, RunState] | None = getattr(self._task, "commits", None)
        if commits is not None:
            commits[state.run_id] = state

    def committed_in_task(self, run_id: str) -> RunState | None:
        """What the task running in this thread committed of the run, if it did."""
        commits: dict[str, RunState] | None = getattr(self._task, "commits", None)
        return commits.get(run_id) if commits else None
