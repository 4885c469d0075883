"""What upstream systems and operators call: submit, wait, result, cancel, decide, retry, fork.

Everything here goes through the same queues the services use; nothing
changes a run behind the planner's back except cancellation, which only
ever moves a run to its terminal ``cancelled`` state.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

from tether import planner
from tether.agent.definition import Agent, get_agent, load_agent_modules
from tether.agent.output import describe
from tether.errors import (
    ConfigError,
    EventRejectedError,
    RunNotEndedError,
    RunResultError,
    UnknownAgentError,
    UnknownRunError,
)
from tether.escalation import edits, operators
from tether.escalation import records as escalations
from tether.insights import feedback as run_feedback
from tether.memory import threads
from tether.planner.fork import starting_state
from tether.runtime import Runtime, get_runtime
from tether.store.runs import run_id_for
from tether.store.state import EscalationRecord, Feedback, RunError, RunState, RunStatus
from tether.transport.wire import (
    BudgetLimits,
    Decision,
    ErrorCategory,
    ForkPoint,
    Priority,
    TaskEvent,
    Verdict,
)

M = TypeVar("M", bound=BaseModel)


def submit(
    agent: str,
    input: str,
    *,
    event_id: str | None = None,
    budget: BudgetLimits | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
    thread_id: str | None = None,
    priority: Priority | str = Priority.interactive,
) -> str:
    """Publish a TaskEvent; returns the run id (the same one for the same event_id).

    With ``thread_id`` the run sees the thread's history and starts once the thread's
    earlier runs have ended (tether.memory.threads). ``priority`` (interactive or batch)
    says which runs start first while runs wait for capacity (tether.planner.admission).
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
        priority=Priority(priority),
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


@overload
def result(
    run_id: str,
    output_type: type[M],
    *,
    timeout_s: float | None = None,
    runtime: Runtime | None = None,
) -> M: ...


@overload
def result(
    run_id: str,
    output_type: None = None,
    *,
    agent: Agent | str | None = None,
    timeout_s: float | None = None,
    runtime: Runtime | None = None,
) -> BaseModel | str: ...


def result(
    run_id: str,
    output_type: type[BaseModel] | None = None,
    *,
    agent: Agent | str | None = None,
    timeout_s: float | None = None,
    runtime: Runtime | None = None,
) -> BaseModel | str:
    """The answer of a succeeded run: an instance of its agent's output_type (validated
    again here), or the text answer of an agent without one.

    The type is ``output_type``, else ``agent``'s (an Agent, or a name), else that of
    the agent that ran it, loaded from the runtime's TETHER_AGENT_MODULES. With
    ``timeout_s`` it waits for the run to end first. RunResultError when the run has not
    succeeded (it names the run's status and error) or its output is not of that type.
    """
    rt = runtime or get_runtime()
    state = wait(run_id, timeout_s=timeout_s, runtime=rt) if timeout_s else rt.store.get(run_id)
    if state is None:
        raise UnknownRunError(run_id)
    if state.status != RunStatus.succeeded:
        why = f": {state.error.message}" if state.error else ""
        raise RunResultError(
            run_id,
            f"it is {state.status}{why}, so it has no result; wait for a running run "
            "(timeout_s), and read a failed run's partial_result from client.wait",
        )
    wanted = output_type or _output_type(rt, run_id, agent or state.agent, state.output is not None)
    if wanted is None:
        return state.result or ""
    if state.output is None:
        raise RunResultError(
            run_id,
            f"it has no typed output to read as {wanted.__name__} (agent {state.agent!r} "
            "answered in text, or ran before it had an output_type); call result without "
            "output_type for its text",
        )
    try:
        return wanted.model_validate(state.output)
    except ValidationError as exc:
        raise RunResultError(
            run_id,
            f"its output is not a {wanted.__name__}: {describe(exc, wanted)}; pass the "
            f"output_type of agent {state.agent!r}",
        ) from exc


def _output_type(
    rt: Runtime, run_id: str, agent: Agent | str, typed: bool
) -> type[BaseModel] | None:
    if isinstance(agent, Agent):
        return agent.output_type
    try:
        # The runtime names the agent modules, as it does for the workers it talks to.
        load_agent_modules(rt.settings.agent_modules)
        return get_agent(agent).output_type
    except (UnknownAgentError, ConfigError) as exc:
        if not typed:
            return None
        raise RunResultError(
            run_id,
            f"it has a typed output, but this process cannot load agent {agent!r} to know "
            f"its type ({exc}); pass output_type= or agent=",
        ) from exc


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
    arguments: dict[str, Any] | None = None,
    token: str | None = None,
    runtime: Runtime | None = None,
) -> Decision:
    """Send a human's decision to the escalation service, after checking it can apply.

    With an operator ``token`` (default: TETHER_OPERATOR_TOKEN), the decision is
    signed as operator ``by`` (tether.escalation.operators); where the escalation service has
    operators configured, it records only signed decisions.

    ``Verdict.extend`` (a budget_exhausted escalation) raises ``limit`` by ``extend_by``:
    one past the agent's ceiling, or a second one for the same escalation, raises
    DecisionRefusedError here; the escalation service spends it (budgets.lua, once per
    escalation) only after it has verified who decided.

    ``arguments`` (with ``Verdict.approve`` of a held tool call) replace the model's: the
    call runs with them. Arguments the tool's schema or the agent's policies refuse raise
    DecisionRefusedError here where this process loads the agent, and are refused by the
    escalation service otherwise (tether.escalation.edits).
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
            "arguments": arguments,
        }
    )
    token = token or rt.settings.operator_token
    if token:
        decision = operators.sign(decision, token)
    escalations.check_decision(record, decision)
    edits.check_edit(rt, record, decision)
    if verdict == Verdict.extend:
        escalations.check_extension(rt, record, decision)
    # A decision names only its escalation: its run's trace comes from the record.
    rt.send_decision(decision, run_id=record.escalation.run_id)
    return decision


def rejection(event_id: str, *, runtime: Runtime | None = None) -> str | None:
    """Why an event was refused (malformed, oversized, unknown agent, its start failed for
    good), or None; None too once its run exists (a dead start replayed)."""
    store = (runtime or get_runtime()).store
    reason = store.rejections.reason(event_id)
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


def retry(
    run_id: str, *, event_id: str | None = None, runtime: Runtime | None = None
) -> tuple[str, str]:
    """Run an ended run's task again as a new run; returns (run id, event id).

    The new run's event has its own id (resubmitting the original's would be deduplicated),
    the original's agent, goal, limits and thread, and names the original under
    ``retry_of`` in its metadata. The same ``event_id`` twice makes one run.
    """
    rt = runtime or get_runtime()
    original = rt.store.get(run_id)
    if original is None:
        raise UnknownRunError(run_id)
    if not original.terminal:
        raise RunNotEndedError(run_id, original.status)
    event_id = event_id or uuid.uuid4().hex
    new_run = submit(
        original.agent,
        original.goal,
        event_id=event_id,
        budget=original.limits,
        metadata={**original.metadata, "retry_of": run_id},
        thread_id=original.thread_id,
        runtime=rt,
    )
    return new_run, event_id


def fork(
    run_id: str, step: int, *, event_id: str | None = None, runtime: Runtime | None = None
) -> tuple[str, str]:
    """Start a new run from ``run_id``'s state as its step ``step`` was about to be
    planned (tether.planner.fork); returns (run id, event id).

    Checked here so the caller hears at once what cannot be forked; intake checks again
    and records a refusal for an event that still cannot start. The same ``event_id``
    twice makes one run.
    """
    rt = runtime or get_runtime()
    original = rt.store.get(run_id)
    if original is None:
        raise UnknownRunError(run_id)
    point = ForkPoint(run_id=run_id, step=step)
    starting_state(rt, point, original.agent)
    event = TaskEvent(
        event_id=event_id or uuid.uuid4().hex,
        agent=original.agent,
        input=original.goal,
        budget=original.limits,
        metadata=original.metadata,
        forked_from=point,
    )
    rt.publish_event(event)
    return run_id_for(event.event_id), event.event_id
