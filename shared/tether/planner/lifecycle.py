"""Ending a run, once, with its result or its partial result and a clear reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tether.escalation.records import close_writes
from tether.memory import threads
from tether.observability import metrics, sentry, tracing
from tether.observability.logs import log
from tether.planner import admission
from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.store import rollups
from tether.store.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.store.versioned import SideWrite
from tether.transport.wire import EventKind, RunEvent, utcnow


def finish(
    rt: Runtime,
    run_id: str,
    step: int | None,
    status: RunStatus,
    error: RunError | None,
    *,
    result: str | None = None,
    output: dict[str, Any] | None = None,
    append: list[ChatMessage] | None = None,
    advance: bool = False,
    decision: str | None = None,
    also_log: Callable[[RunState], Sequence[RunEvent]] | None = None,
    awaiting: str | None = None,
) -> RunState | None:
    """End a run unless it already ended (or, with ``step``, moved past that step).

    ``advance`` counts the ending as a committed step (the model's final answer).
    The terminal state, ``also_log``'s entries, the ``decision`` that led to it,
    ``run_finished``, and closing the run's open escalations are one commit.
    ``awaiting``: end it only while it still waits on that escalation.
    """
    closing: list[HumanWait] = []

    def end(state: RunState) -> RunState | None:
        if state.terminal or (step is not None and state.step != step):
            return None
        if awaiting is not None and awaiting not in {w.escalation_id for w in state.awaiting_human}:
            return None
        closing[:] = state.awaiting_human
        ended = state.model_copy(update={"messages": [*state.messages, *(append or [])]})
        return ended.model_copy(
            update={
                "step": state.step + 1 if advance else state.step,
                "status": status,
                "result": result,
                "output": output,
                "error": error,
                "partial_result": None if result is not None else ended.latest_partial(),
                "pending_actions": [],
                "awaiting_human": [],
                "finished_at": utcnow(),
            }
        )

    committed = rt.store.update(
        run_id,
        end,
        log=lambda ended: _described(ended, step, decision, also_log),
        side_writes=lambda ended: _ending_writes(rt, ended, closing),
    )
    if committed is None:
        return None
    # What the ended run leaves waiting: the next run of its thread, if any.
    redispatch(rt, committed)
    # Its slot under the caps goes to the next waiting event (a sweep does it if we die now).
    admission.release(rt, committed.event_id)
    # Only the winning terminal commit gets here: a run ends, and is counted, once.
    _report(committed)
    return committed


def _ending_writes(rt: Runtime, ended: RunState, closing: list[HumanWait]) -> list[SideWrite]:
    """What the commit that ends a run writes beside its state."""
    return [
        *close_writes(closing, f"run {ended.run_id} ended {ended.status}", rt.store.run_ttl_s),
        # Its turn joins the thread's history and its event leaves the thread's queue.
        *threads.ending_writes(ended),
        # Counted in the stats rollups by this fenced commit only (invariant 6).
        *rollups.ending_writes(
            ended,
            rollups.spent(rt.store.batch, ended.run_id),
            escalated=bool(closing) or ended.human_wait_s > 0,
        ),
    ]


def _described(
    ended: RunState,
    step: int | None,
    decision: str | None,
    also_log: Callable[[RunState], Sequence[RunEvent]] | None,
) -> list[RunEvent]:
    """The log entries of the ending: ``also_log``'s, the decision, ``run_finished``."""
    events = list(also_log(ended)) if also_log is not None else []
    at = ended.step if step is None else step
    if decision is not None:
        events.append(
            RunEvent(
                run_id=ended.run_id, kind=EventKind.decision, step=at, data={"decision": decision}
            )
        )
    events.append(
        RunEvent(
            run_id=ended.run_id,
            kind=EventKind.run_finished,
            step=ended.step,
            data={
                "status": ended.status,
                "result": ended.result,
                "output": ended.output,
                "partial_result": ended.partial_result,
                "error": ended.error.model_dump(mode="json") if ended.error else None,
            },
        )
    )
    return events


def _report(ended: RunState) -> None:
    metrics.run_finished(ended)
    tracing.record_run(ended)
    if ended.status == RunStatus.failed:
        sentry.report_run_failed(ended)
    log.info("run_finished", run_id=ended.run_id, status=ended.status)
