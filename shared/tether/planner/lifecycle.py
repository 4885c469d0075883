"""Ending a run, once, with its result or its partial result and a clear reason."""

from __future__ import annotations

from collections.abc import Callable

from tether.messages import utcnow
from tether.runtime import Runtime
from tether.state import ChatMessage, RunError, RunState, RunStatus
from tether.telemetry import ERRORS, RUN_STEPS, RUNS_FINISHED, log


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
    before_end: Callable[[], None] | None = None,
) -> RunState | None:
    """End a run unless it already ended (or, with ``step``, moved past that step).

    ``advance`` counts the ending as a committed step (the model's final answer);
    ``decision`` and ``before_end`` record, only if this call ended the run, what led to it.
    """

    def end(state: RunState) -> RunState | None:
        if state.terminal or (step is not None and state.step != step):
            return None
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

    committed = rt.store.update(run_id, end)
    if committed is None:
        return None
    if before_end is not None:
        before_end()
    if decision is not None:
        rt.store.log(
            run_id, "decision", committed.step if step is None else step, decision=decision
        )
    rt.store.log(
        run_id,
        "run_finished",
        committed.step,
        status=committed.status,
        result=committed.result,
        partial_result=committed.partial_result,
        error=committed.error.model_dump(mode="json") if committed.error else None,
    )
    RUNS_FINISHED.labels(committed.agent, committed.status).inc()
    RUN_STEPS.labels(committed.agent, committed.status).observe(committed.step)
    if committed.error is not None:
        ERRORS.labels(committed.agent, committed.error.category).inc()
    log.info("run_finished", run_id=run_id, status=committed.status)
    return committed
