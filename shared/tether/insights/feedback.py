"""User feedback on runs: a score of -1, 0 or 1, attributed, kept on the run itself.

Feedback is part of the run's state, so it lives and expires with the run, and
it is written by one versioned commit together with its ``feedback`` entry in
the event log: the log never names feedback the run does not hold, or the
reverse. Feedback on a finished run is allowed (that is when people judge it). The same
commit adds one to the run's agent, version and score in ``keys.FEEDBACK_COUNTS``,
which the escalation service serves as ``tether_feedback_total``.
"""

from __future__ import annotations

from tether.observability import metrics
from tether.store import rollups
from tether.store.runs import RunStore
from tether.store.state import Feedback, RunState
from tether.transport.wire import EventKind, RunEvent


def record(store: RunStore, run_id: str, feedback: Feedback) -> RunState:
    """Add ``feedback`` to the run; UnknownRunError if there is no such run.

    Recording the same ``feedback_id`` again changes nothing, so a caller may
    retry a call whose reply it lost.
    """

    def add(state: RunState) -> RunState | None:
        if any(f.feedback_id == feedback.feedback_id for f in state.feedback):
            return None
        return state.model_copy(update={"feedback": [*state.feedback, feedback]})

    def describe(state: RunState) -> list[RunEvent]:
        return [
            RunEvent(
                run_id=run_id,
                kind=EventKind.feedback,
                step=state.step,
                data=feedback.model_dump(mode="json"),
            )
        ]

    # The count tether_feedback_total reads goes in with the commit, so it moves once per
    # feedback: never for a retry, whichever process records it.
    committed = store.update(
        run_id,
        add,
        log=describe,
        side_writes=lambda state: [
            metrics.feedback_count_write(state, feedback.score),
            *rollups.feedback_writes(state, feedback.score),
        ],
    )
    # None: this very feedback was already recorded (a retry); the run holds it.
    return committed if committed is not None else store.load(run_id)
