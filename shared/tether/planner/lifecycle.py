"""Ending a run, once, with its result or its partial result and a clear reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tether import metrics, sentry, tracing
from tether.escalations import close_writes
from tether.memory import threads
from tether.messages import RunEvent, utcnow
from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.telemetry import log


def finish(
    rt: Runtime,
    run_id: str,
    step: int | None,
    status: RunStatus,
    error: RunError | None,
    *,
    result: str | None = None,
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
                "error": error,
                "partial_result": None if result is not None else ended.latest_partial(),
                "pending_actions": [],
                "awaiting_human": [],
                "finished_at": utcnow(),
            }
        )

    def describe(ended: RunState) -> list[RunEvent]:
        events = list(also_log(ended)) if also_log is not None else []
        at = ended.step if step is None else step
        if decision is not None:
            events.append(
                RunEvent(run_id=run_id, kind="decision", step=at, data={"decision": decision})
            )
        events.append(
            RunEvent(
                run_id=run_id,
                kind="run_finished",
                step=ended.step,
                data={
                    "status": ended.status,
                    "result": ended.result,
                    "partial_result": ended.partial_result,
                    "error": ended.error.model_dump(mode="json") if ended.error else None,
                },
            )
        )
        return events

    committed = rt.store.update(
        run_id,
        end,
        log=describe,
        side_writes=lambda ended: [
            *close_writes(closing, f"run {run_id} ended {ended.status}", rt.store.run_ttl_s),
            # Its turn joins the thread's history and its event leaves the thread's queue.
            *threads.ending_writes(ended),
        ],
    )
    if committed is None:
        return None
    # What the ended run leaves waiting: the next run of its thread, if any.
    redispatch(rt, committed)
    # Only the winning terminal commit gets here: a run ends, and is counted, once.
    metrics.run_finished(committed)
    tracing.record_run(committed)
    if committed.status == RunStatus.failed:
        sentry.report_run_failed(committed)
    log.info("run_finished", run_id=run_id, status=committed.status)
    return committed
