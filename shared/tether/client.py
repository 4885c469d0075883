"""What upstream systems and operators call: submit, wait, cancel, decide.

Everything here goes through the same queues the services use; nothing
changes a run behind the planner's back except cancellation, which only
ever moves a run to its terminal ``cancelled`` state.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tether import escalations, operators, planner
from tether import feedback as run_feedback
from tether.errors import EventRejectedError
from tether.memory import threads
from tether.messages import BudgetLimits, Decision, ErrorCategory, TaskEvent, Verdict
from tether.runtime import Runtime, get_runtime
from tether.state import EscalationRecord, Feedback, RunError, RunState, RunStatus
from tether.store import run_id_for


def submit(
    agent: str,
    input: str,
    *,
    event_id: str | None = None,
    budget: BudgetLimits | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
    thread_id: str | None = None,
) -> str:
    """Publish a TaskEvent; returns the run id (the same one for the same event_id).

    With ``thread_id`` the run sees the thread's history and starts once the thread's
    earlier runs have ended (tether.memory.threads).
    """
    rt = runtime or get_runtime()
    event = TaskEvent(
        event_id=event_id or uuid.uuid4().hex,
        agent=agent,
        input=input,
        budget=BudgetLimits.model_validate(budget) if isinstance(budget, dict) else budget,
        metadata=metadata or {},
        thread_id=thread_id,
        thread_seq=threads.next_seq(rt, thread_id) if thread_id is not None else None,
    )
    rt.publish_event(event)
    return run_id_for(event.event_id)


def wait(
    run_id: str,
    *,
    event_id: str | None = None,
    timeout_s: float = 60.0,
    poll_s: float = 0.1,
    runtime: Runtime | None = None,
) -> RunState:
    """Block until the run is terminal; TimeoutError names the status it was stuck in.

    Given the run's ``event_id``, an event that was refused raises
    EventRejectedError at once: its run will never exist.
    """
    rt = runtime or get_runtime()
    deadline = time.monotonic() + timeout_s
    state: RunState | None = None
    while time.monotonic() < deadline:
        state = rt.store.get(run_id)
        if state is not None and state.terminal:
            return state
        if state is None and event_id is not None:
            check_rejected(event_id, runtime=rt)
        time.sleep(poll_s)
    status = state.status if state else "not yet created"
    raise TimeoutError(f"run {run_id} is still {status} after {timeout_s:g}s")


def cancel(run_id: str, *, by: str = "operator", runtime: Runtime | None = None) -> RunState | None:
    """Stop a run at once; in-flight steps lose their commit and tools are not started."""
    rt = runtime or get_runtime()
    rt.store.load(run_id)
    return planner.finish(
        rt,
        run_id,
        None,
        RunStatus.cancelled,
        RunError(
            category=ErrorCategory.cancelled,
            message=f"cancelled by {by}; the partial result holds what was done before",
        ),
    )


def feedback(
    run_id: str,
    score: int,
    *,
    by: str,
    comment: str | None = None,
    feedback_id: str | None = None,
    runtime: Runtime | None = None,
) -> Feedback:
    """Record a person's score for a run: -1 bad, 0 neutral, 1 good; a run takes many.

    Raises pydantic's ValidationError for a score outside -1/0/1 or an empty
    ``by``, and UnknownRunError for a run that does not exist (or has expired).
    Pass the same ``feedback_id`` when retrying a call, and it counts once.
    """
    rt = runtime or get_runtime()
    given = Feedback.model_validate(
        {
            "feedback_id": feedback_id or uuid.uuid4().hex,
            "score": score,
            "by": by,
            "comment": comment,
        }
    )
    run_feedback.record(rt.store, run_id, given)
    return given


def decide(
    escalation_id: str,
    verdict: Verdict,
    *,
    by: str,
    reason: str | None = None,
    answer: str | None = None,
    limit: str | None = None,
    extend_by: float | None = None,
    token: str | None = None,
    runtime: Runtime | None = None,
) -> Decision:
    """Send a human's decision to the escalation service, after checking it can apply.

    With an operator ``token`` (default: TETHER_OPERATOR_TOKEN), the decision is
    signed as operator ``by`` (tether.operators); where the escalation service has
    operators configured, it records only signed decisions.

    ``Verdict.extend`` (a budget_exhausted escalation) raises ``limit`` by ``extend_by``:
    one past the agent's ceiling, or a second one for the same escalation, raises
    DecisionRefusedError here; the escalation service spends it (budgets.lua, once per
    escalation) only after it has verified who decided.
    """
    rt = runtime or get_runtime()
    record, _ = escalations.load(rt, escalation_id)
    if verdict == Verdict.extend and limit is None and record.escalation.budget is not None:
        limit = record.escalation.budget.limit
    decision = Decision.model_validate(
        {
            "escalation_id": escalation_id,
            "verdict": verdict,
            "by": by,
            "reason": reason,
            "answer": answer,
            "limit": limit,
            "extend_by": extend_by,
        }
    )
    token = token or rt.settings.operator_token
    if token:
        decision = operators.sign(decision, token)
    escalations.check_decision(record, decision)
    if verdict == Verdict.extend:
        escalations.check_extension(rt, record, decision)
    # A decision names only its escalation: its run's trace comes from the record.
    rt.send_decision(decision, run_id=record.escalation.run_id)
    return decision


def rejection(event_id: str, *, runtime: Runtime | None = None) -> str | None:
    """Why an event was refused (malformed, oversized, unknown agent, its start failed for
    good), or None; None too once its run exists (a dead start replayed)."""
    store = (runtime or get_runtime()).store
    reason = store.rejection(event_id)
    if reason is None or store.status(run_id_for(event_id)) is not None:
        return None
    return reason


def check_rejected(event_id: str, *, runtime: Runtime | None = None) -> None:
    """Raise EventRejectedError if the event was refused, so no caller waits for its run."""
    reason = rejection(event_id, runtime=runtime)
    if reason is not None:
        raise EventRejectedError(event_id, reason)


def pending_escalations(runtime: Runtime | None = None) -> list[EscalationRecord]:
    return escalations.list_escalations(runtime or get_runtime())
