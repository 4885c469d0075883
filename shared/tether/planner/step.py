"""One planning step: reserve budget, call the model, decide, commit.

Each part has its module: the model call and its budget (model_call), what the
answer means (decide), the commit's fencing (fencing). A step only runs on the
state it was sent for; any other delivery of it is a duplicate.
"""

from __future__ import annotations

from tether.agent.definition import get_agent
from tether.guardrails import tally
from tether.observability import metrics, tracing
from tether.planner import guarding, model_call
from tether.planner.decide import decide
from tether.planner.fencing import recover
from tether.planner.lifecycle import finish
from tether.runtime import Runtime
from tether.store.budgets import GuardedReservation
from tether.store.state import RunError, RunState, RunStatus
from tether.transport.wire import ErrorCategory, EventKind
from tether.worker import task_context

_PLANNING = (RunStatus.queued, RunStatus.running)


def plan(rt: Runtime, run_id: str, step: int, reserved: GuardedReservation | None = None) -> None:
    """Perform planning step ``step`` of a run, unless it was already committed.

    ``reserved``: its model call's reservation, made by the commit that readied
    the step (see model_call.model_reservation); its outcome None: the step reserves itself.
    """
    with tracing.step_span(run_id, step):
        _plan(rt, run_id, step, reserved)


def _plan(rt: Runtime, run_id: str, step: int, reserved: GuardedReservation | None) -> None:
    state = rt.store.load(run_id)
    if not _plannable(rt, state, step):
        return
    task_context.bind_run(state)
    if _too_long(rt, state):
        return
    if guarding.input_stop(rt, state):
        return
    agent = get_agent(state.agent)
    tools = [t.openai_schema() for t in agent.tools]
    granted = model_call.reserve(rt, agent, state, tools, reserved)
    if granted is None:
        return
    answered = model_call.call(rt, agent, state, tools, granted)
    if answered is None:
        return
    response, latency = answered
    if decide(rt, agent, state, response):
        # Counted once the step's commit won: a redelivered step that loses counts nothing.
        metrics.step_committed(
            state, response.model, response.total_tokens, response.cost_usd, latency
        )
        metrics.guardrail_outcomes(guarding.findings_of(response))
        tally.count(rt.store.batch, state, guarding.findings_of(response))


def _plannable(rt: Runtime, state: RunState, step: int) -> bool:
    """Whether ``state`` is step ``step`` waiting to be planned; else the delivery is
    logged as a duplicate, after finishing the job of the step's commit if it won."""
    if not state.terminal and state.step == step and state.status in _PLANNING:
        return True
    recover(rt, state, step)
    rt.store.log.append(
        state.run_id, EventKind.duplicate_step, step, current_step=state.step, status=state.status
    )
    return False


def _too_long(rt: Runtime, state: RunState) -> bool:
    """End a run that holds more messages than TETHER_MAX_RUN_MESSAGES; True if it was over."""
    cap = rt.settings.max_run_messages
    if len(state.messages) <= cap:
        return False
    finish(
        rt,
        state.run_id,
        state.step,
        RunStatus.failed,
        RunError(
            category=ErrorCategory.policy_denied,
            message=f"the run holds {len(state.messages)} messages, more than "
            f"TETHER_MAX_RUN_MESSAGES ({cap}): it was ended before the next model call; "
            "raise the setting if such long runs are expected",
        ),
    )
    return True
