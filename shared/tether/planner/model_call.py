"""A planning step's model call: its budget reserved first, then the call, settled and logged.

The reservation holds the call's upper bounds (a step, its token estimate, its
cost at that estimate), so workers scaled out cannot overspend together; the
call's real usage settles it afterwards, and a failed call gives it back.
"""

from __future__ import annotations

import time
from typing import Any

from tether.agent.definition import Agent, get_agent
from tether.errors import ModelError, UnknownModelPriceError
from tether.models.base import ModelResponse
from tether.models.prices import reserved_cost_usd
from tether.observability import tracing
from tether.planner import asking, guarding
from tether.planner.lifecycle import finish
from tether.planner.ratelimited import (
    admit_model_call,
    handing_back_429,
    pause_on_429,
    settle_model_call,
)
from tether.runtime import Runtime
from tether.store.budgets import GuardedReservation
from tether.store.state import RunError, RunState, RunStatus
from tether.transport.wire import ErrorCategory, EventKind


def model_reservation(rt: Runtime, state: RunState) -> GuardedReservation | None:
    """The reservation of the model call that plans ``state``, a run about to be
    planned; None where planning ends the run before calling (too many messages,
    a model without a price) and reserves nothing."""
    if len(state.messages) > rt.settings.max_run_messages:
        return None
    agent = get_agent(state.agent)
    try:
        return _model_bounds(agent, state, [t.openai_schema() for t in agent.tools])
    except UnknownModelPriceError:
        return None


def _model_bounds(agent: Agent, state: RunState, tools: list[dict[str, Any]]) -> GuardedReservation:
    """What the model call that plans ``state`` reserves: a step, its token bound and
    its cost bound; UnknownModelPriceError where a cost limit meets a model without a price."""
    asked_for = agent.response_format()
    # The answer's schema is prompt too: measured as one more tool's, it stays in the bound.
    estimate = agent.model.estimate_tokens(
        state.messages, tools if asked_for is None else [*tools, asked_for]
    )
    # The cost is reserved at its upper bound too: checked only after the call, the
    # call that crosses max_cost_usd would already have been paid for.
    cost_bound = reserved_cost_usd(agent.model, estimate, state.limits)
    return GuardedReservation(f"model:{state.step}", steps=1, tokens=estimate, cost_usd=cost_bound)


def reserve(
    rt: Runtime,
    agent: Agent,
    state: RunState,
    tools: list[dict[str, Any]],
    reserved: GuardedReservation | None,
) -> GuardedReservation | None:
    """The granted reservation of the model call that plans ``state``; None where the
    run was ended or held for a human instead (no price, or the budget is spent).

    ``reserved``: the reservation the commit that readied the step made, from this
    very state; its outcome None: it is made here.
    """
    if reserved is None or reserved.outcome is None:
        try:
            reserved = _model_bounds(agent, state, tools)
        except UnknownModelPriceError as exc:
            # Intake refuses such runs; this one started before its model lost its price.
            error = RunError(category=ErrorCategory.budget, message=str(exc))
            finish(rt, state.run_id, state.step, RunStatus.failed, error)
            return None
        reserved.outcome = rt.store.budgets.reserve(
            state.run_id,
            reserved.reservation_id,
            steps=reserved.steps,
            tokens=reserved.tokens,
            cost_usd=reserved.cost_usd,
        )
    outcome = reserved.outcome
    if outcome.granted:
        return reserved
    asking.out_of_budget(
        rt,
        agent,
        state,
        outcome.limit,
        outcome.reason,
        f"budget exhausted before model call {state.step}: {outcome.reason}; "
        "raise the agent's budget or the event's limits to let it go further",
    )
    return None


def call(
    rt: Runtime,
    agent: Agent,
    state: RunState,
    tools: list[dict[str, Any]],
    reserved: GuardedReservation,
) -> tuple[ModelResponse, float] | None:
    """The model's answer to ``state`` and its latency in seconds, logged with what the
    model saw; None where the call failed and the run was ended, or where a shared rate
    limit or an endpoint's pause deferred the step (tether.planner.ratelimited)."""
    if not admit_model_call(rt, agent, state, reserved.tokens):
        return None
    with handing_back_429():
        return _answer(rt, agent, state, tools, reserved)


def _answer(
    rt: Runtime,
    agent: Agent,
    state: RunState,
    tools: list[dict[str, Any]],
    reserved: GuardedReservation,
) -> tuple[ModelResponse, float] | None:
    deadline = _deadline(state)
    started = time.perf_counter()
    try:
        with tracing.model_call(agent, state) as span:
            response = agent.model.complete(
                state.messages, tools, deadline=deadline, response_format=agent.response_format()
            )
            tracing.record_usage(span, response)
    except ModelError as exc:
        _failed(rt, agent, state, reserved, exc)
        return None
    latency = time.perf_counter() - started
    rt.store.budgets.settle(
        state.run_id,
        f"model:{state.step}",
        tokens=response.total_tokens - reserved.tokens,
        cost_usd=response.cost_usd - reserved.cost_usd,
    )
    settle_model_call(rt, agent, state, reserved.tokens, response.total_tokens)
    # Screened before it is logged: a rewrite (a redaction) is all the log ever holds.
    response = guarding.screen_answer(rt, agent, state, response)
    _log_call(rt, agent, state, response, latency)
    return response, latency


def _deadline(state: RunState) -> float | None:
    # Retries of a failing endpoint spend the run's wall-time budget, never more; the time
    # it waited for humans is not part of it (invariant 8).
    if state.limits.max_wall_s is None:
        return None
    return state.created_at.timestamp() + state.human_wait_s + state.limits.max_wall_s


def _failed(
    rt: Runtime, agent: Agent, state: RunState, reserved: GuardedReservation, exc: ModelError
) -> None:
    if pause_on_429(rt, agent, state, exc):
        # A 429 that said when to come back: the step waits it out off the worker, and
        # keeps its budget reservation for that call (reserving it again is a duplicate).
        return
    step = state.step
    rt.store.budgets.settle(
        state.run_id, f"model:{step}", tokens=-reserved.tokens, cost_usd=-reserved.cost_usd
    )
    if exc.permanent:
        category = ErrorCategory.model_permanent
        advice = "fix what it names (API key, model name, request) and resubmit it"
    else:
        category = ErrorCategory.model_transient
        advice = "resubmit it once the endpoint is healthy"
    rt.store.log.append(
        state.run_id,
        EventKind.model_failed,
        step,
        model=agent.model.name,
        error=str(exc),
        attempts=exc.attempts,
        status=exc.status,
        error_category=category,
    )
    error = RunError(
        category=category,
        message=f"{exc}; the run kept its partial result: {advice} with a new event id",
    )
    finish(rt, state.run_id, step, RunStatus.failed, error)


def _log_call(
    rt: Runtime, agent: Agent, state: RunState, response: ModelResponse, latency: float
) -> None:
    # What the model saw, from its previous answer on: the log holds the rest already,
    # and each step's entry stays the same size however long the run (EventLog.read
    # puts the whole input back together).
    seen_from = next(
        (
            i
            for i in range(len(state.messages) - 1, -1, -1)
            if state.messages[i].role == "assistant"
        ),
        0,
    )
    rt.store.log.append(
        state.run_id,
        EventKind.model_call,
        state.step,
        model=response.model,
        messages_from=seen_from,
        messages=[m.to_openai() for m in state.messages[seen_from:]],
        tools=[t.name for t in agent.tools],
        # The schema its final answer was asked in (tether.agent.output); None: text.
        answer_schema=_schema_name(agent.response_format()),
        answer={
            "content": response.content,
            "tool_calls": [c.model_dump() for c in response.tool_calls],
        },
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=response.cost_usd,
        latency_ms=round(latency * 1000, 3),
        attempts=response.attempts,
    )


def _schema_name(asked: dict[str, Any] | None) -> str | None:
    return str(asked["json_schema"]["name"]) if asked and "json_schema" in asked else None
