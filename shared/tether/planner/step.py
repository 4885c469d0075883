"""One planning step: reserve budget, call the model, validate, decide, commit."""

from __future__ import annotations

import json
import time
from typing import Any

from tether import autonomy, metrics, task_context, tracing
from tether.agents import Agent, get_agent
from tether.budgets import GuardedReservation
from tether.errors import (
    BudgetExhaustedError,
    InvalidToolCallError,
    ModelError,
    UnknownModelPriceError,
)
from tether.messages import ErrorCategory, EscalationKind, RunEvent, ToolAction
from tether.models.base import ModelResponse
from tether.models.prices import reserved_cost_usd
from tether.planner import asking
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.uncertainty import ASK_HUMAN, parse_stated


def escalation_id(*parts: object) -> str:
    return "esc_" + "_".join(str(p).replace(":", "_") for p in parts)


def _lost_commit(rt: Runtime, run_id: str, step: int) -> None:
    """Someone committed this step first (maybe this worker, its reply lost): finish its job."""
    state = rt.store.load(run_id)
    if state.step == step + 1:
        redispatch(rt, state)


def plan(rt: Runtime, run_id: str, step: int, reserved: GuardedReservation | None = None) -> None:
    """Perform planning step ``step`` of a run, unless it was already committed.

    ``reserved``: its model call's reservation, made by the commit that readied
    the step (see model_reservation); its outcome None: the step reserves itself.
    """
    with tracing.step_span(run_id, step):
        _plan(rt, run_id, step, reserved)


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
    estimate = agent.model.estimate_tokens(state.messages, tools)
    # The cost is reserved at its upper bound too: checked only after the call, the
    # call that crosses max_cost_usd would already have been paid for.
    cost_bound = reserved_cost_usd(agent.model, estimate, state.limits)
    return GuardedReservation(f"model:{state.step}", steps=1, tokens=estimate, cost_usd=cost_bound)


def _plan(rt: Runtime, run_id: str, step: int, reserved: GuardedReservation | None) -> None:
    state = rt.store.load(run_id)
    if (
        state.terminal
        or state.step != step
        or state.status
        not in (
            RunStatus.queued,
            RunStatus.running,
        )
    ):
        if state.step == step + 1:
            redispatch(rt, state)
        rt.store.log(run_id, "duplicate_step", step, current_step=state.step, status=state.status)
        return
    task_context.bind_run(state)
    cap = rt.settings.max_run_messages
    if len(state.messages) > cap:
        finish(
            rt,
            run_id,
            step,
            RunStatus.failed,
            RunError(
                category=ErrorCategory.policy_denied,
                message=f"the run holds {len(state.messages)} messages, more than "
                f"TETHER_MAX_RUN_MESSAGES ({cap}): it was ended before the next model call; "
                "raise the setting if such long runs are expected",
            ),
        )
        return
    agent = get_agent(state.agent)
    tools = [t.openai_schema() for t in agent.tools]

    # Reserved already where the commit that readied this step did it, from this very state.
    if reserved is None or reserved.outcome is None:
        try:
            reserved = _model_bounds(agent, state, tools)
        except UnknownModelPriceError as exc:
            # Intake refuses such runs; this one started before its model lost its price.
            finish(
                rt,
                run_id,
                step,
                RunStatus.failed,
                RunError(category=ErrorCategory.budget, message=str(exc)),
            )
            return
        reserved.outcome = rt.store.budgets.reserve(
            run_id,
            reserved.reservation_id,
            steps=reserved.steps,
            tokens=reserved.tokens,
            cost_usd=reserved.cost_usd,
        )
    reservation, estimate, cost_bound = reserved.outcome, reserved.tokens, reserved.cost_usd
    if not reservation.granted:
        # An agent that escalates on budget asks a human to extend it instead of ending.
        wait = asking.budget_wait(
            rt,
            agent,
            run_id,
            reservation.limit,
            reservation.reason,
            escalation_id(run_id, step, "budget", reservation.limit),
        )
        if wait is not None:
            if asking.hold(rt, state, wait, "escalated_budget_exhausted") is None:
                _lost_commit(rt, run_id, step)
            return
        finish(
            rt,
            run_id,
            step,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted before model call {step}: {reservation.reason}; "
                "raise the agent's budget or the event's limits to let it go further",
                limit=reservation.limit,
            ),
        )
        return

    # Retries of a failing endpoint spend the run's wall-time budget, never more; the time
    # it waited for humans is not part of it (invariant 8).
    deadline = (
        state.created_at.timestamp() + state.human_wait_s + state.limits.max_wall_s
        if state.limits.max_wall_s is not None
        else None
    )
    started = time.perf_counter()
    try:
        with tracing.model_call(agent, state) as span:
            response = agent.model.complete(state.messages, tools, deadline=deadline)
            tracing.record_usage(span, response)
    except ModelError as exc:
        rt.store.budgets.settle(run_id, f"model:{step}", tokens=-estimate, cost_usd=-cost_bound)
        if exc.permanent:
            category = ErrorCategory.model_permanent
            advice = "fix what it names (API key, model name, request) and resubmit it"
        else:
            category = ErrorCategory.model_transient
            advice = "resubmit it once the endpoint is healthy"
        rt.store.log(
            run_id,
            "model_failed",
            step,
            model=agent.model.name,
            error=str(exc),
            attempts=exc.attempts,
            status=exc.status,
            error_category=category,
        )
        finish(
            rt,
            run_id,
            step,
            RunStatus.failed,
            RunError(
                category=category,
                message=f"{exc}; the run kept its partial result: {advice} with a new event id",
            ),
        )
        return
    latency = time.perf_counter() - started
    rt.store.budgets.settle(
        run_id,
        f"model:{step}",
        tokens=response.total_tokens - estimate,
        cost_usd=response.cost_usd - cost_bound,
    )
    # What the model saw, from its previous answer on: the log holds the rest already,
    # and each step's entry stays the same size however long the run (RunStore.trace
    # puts the whole input back together).
    seen_from = next(
        (
            i
            for i in range(len(state.messages) - 1, -1, -1)
            if state.messages[i].role == "assistant"
        ),
        0,
    )
    rt.store.log(
        run_id,
        "model_call",
        step,
        model=response.model,
        messages_from=seen_from,
        messages=[m.to_openai() for m in state.messages[seen_from:]],
        tools=[t.name for t in agent.tools],
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
    if _decide(rt, agent, state, response):
        # Counted once the step's commit won: a redelivered step that loses counts nothing.
        metrics.step_committed(
            state, response.model, response.total_tokens, response.cost_usd, latency
        )


def _decide(rt: Runtime, agent: Agent, read: RunState, response: ModelResponse) -> bool:
    """Commit what the model's answer means; True if this call's commit won."""
    step = read.step
    assistant = ChatMessage(
        role="assistant", content=response.content, tool_calls=response.tool_calls or None
    )
    if not response.tool_calls:
        if response.content:
            result = response.content
            if agent.confidence_floor is not None:
                # A final answer below the agent's confidence floor asks a human first.
                stated = parse_stated(response.content)
                result = stated.answer
                if stated.confidence is None or stated.confidence < agent.confidence_floor:
                    wait = asking.low_confidence_wait(
                        escalation_id(read.run_id, step, "low_confidence"),
                        stated.answer,
                        stated.confidence,
                        agent.confidence_floor,
                    )
                    holding = asking.hold(
                        rt,
                        read,
                        wait,
                        "escalated_low_confidence",
                        append=[assistant],
                        confidence=stated.confidence,
                    )
                    if holding is None:
                        _lost_commit(rt, read.run_id, step)
                    return holding is not None
            answered = finish(
                rt,
                read.run_id,
                step,
                RunStatus.succeeded,
                None,
                result=result,
                append=[assistant],
                advance=True,
                decision="final_answer",
            )
            return answered is not None
        nudge = ChatMessage(
            role="user",
            content="Your reply had neither a tool call nor an answer. Call one of the tools, "
            "or reply with the final answer as text.",
        )
        return _feed_back(rt, agent, read, [assistant, nudge], {"": "empty reply"}, {})

    actions: list[ToolAction] = []
    invalid: dict[str, str] = {}
    denied: dict[str, str] = {}
    for index, call in enumerate(response.tool_calls):
        try:
            tool = agent.tool(call.name)
            arguments = tool.validate_call(call.arguments)
        except InvalidToolCallError as exc:
            invalid[call.id] = str(exc)
            continue
        action = ToolAction(
            action_id=f"{read.run_id}:{step}:{index}",
            run_id=read.run_id,
            agent=agent.name,
            step=step,
            tool=tool.name,
            tool_call_id=call.id,
            arguments=arguments,
            idempotent=tool.idempotent,
        )
        denial = agent.check_policies(action, read)
        if denial is not None:
            denied[call.id] = denial
            continue
        actions.append(action)

    if invalid or denied:
        # Nothing of a refused turn runs: the model gets each problem and tries again.
        feedback = [
            ChatMessage(
                role="tool",
                tool_call_id=call.id,
                content=json.dumps(
                    {
                        "error": invalid.get(call.id)
                        or denied.get(call.id)
                        or "not executed because another call in the same turn was refused; "
                        "send it again"
                    }
                ),
            )
            for call in response.tool_calls
        ]
        return _feed_back(rt, agent, read, [assistant, *feedback], invalid, denied)

    # Whether each held call asks a human or is approved by its earned autonomy.
    gates = {
        a.action_id: autonomy.gate(rt.store.client, agent, a)
        for a in actions
        if agent.tool(a.tool).requires_approval
    }
    # ask_human calls wait for a human's answer, which becomes their result.
    waits = asking.question_waits(actions, escalation_id) + [
        HumanWait(
            escalation_id=escalation_id(a.action_id),
            kind=EscalationKind.approval_required,
            reason=f"tool {a.tool!r} requires human approval before it runs with arguments "
            f"{json.dumps(a.arguments)}{gates[a.action_id].note}",
            action=a,
        )
        for a in actions
        if a.action_id in gates and gates[a.action_id].ask
    ]
    auto = [
        autonomy.auto_approved(read.run_id, step, a, gates[a.action_id])
        for a in actions
        if a.action_id in gates and not gates[a.action_id].ask
    ]
    held = {w.action.action_id for w in waits if w.action}
    runnable = [a for a in actions if a.action_id not in held]

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal:
            return None
        return state.model_copy(
            update={
                "step": step + 1,
                "messages": [*state.messages, assistant],
                "pending_actions": runnable,
                "awaiting_human": waits,
                "invalid_calls": 0,
                "status": RunStatus.waiting_human if waits else RunStatus.waiting_tools,
            }
        )

    decision = RunEvent(
        run_id=read.run_id,
        kind="decision",
        step=step,
        data={
            "decision": "tool_calls",
            "actions": [a.model_dump(mode="json") for a in actions],
            "awaiting_human": [w.escalation_id for w in waits],
        },
    )
    try:
        # The tool calls are reserved in the commit's round trip, which goes ahead only if granted.
        committed = rt.store.update(
            read.run_id,
            commit,
            log=lambda _: [decision, *auto],
            tool_calls=(f"tools:{step}", len([a for a in actions if a.tool != ASK_HUMAN])),
        )
    except BudgetExhaustedError as exc:
        budget_wait = asking.budget_wait(
            rt,
            agent,
            read.run_id,
            exc.limit,
            exc.reason,
            escalation_id(read.run_id, step, "budget", exc.limit),
        )
        if budget_wait is not None:
            # The turn is dropped: once extended, the model is asked again.
            holding = asking.hold(rt, read, budget_wait, "escalated_budget_exhausted")
            if holding is None:
                _lost_commit(rt, read.run_id, step)
            return holding is not None
        ended = finish(
            rt,
            read.run_id,
            step,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted before the tool calls of step {step}: "
                f"{exc.reason}; raise max_tool_calls to let it go further",
                limit=exc.limit,
            ),
            append=[assistant],
        )
        return ended is not None
    if committed is None:
        _lost_commit(rt, read.run_id, step)
        return False
    redispatch(rt, committed)
    return True


def _feed_back(
    rt: Runtime,
    agent: Agent,
    read: RunState,
    append: list[ChatMessage],
    invalid: dict[str, str],
    denied: dict[str, str],
) -> bool:
    """Give an unusable or refused turn back to the model; past the limit, ask a human.

    ``invalid`` and ``denied`` map each offending tool call id ("" for no call) to why.
    """
    step = read.step
    problem = "; ".join([*invalid.values(), *denied.values()])
    repeated = read.invalid_calls + 1 > agent.max_invalid_calls
    waits = (
        [
            HumanWait(
                escalation_id=escalation_id(read.run_id, step, "repeated_failure"),
                kind=EscalationKind.repeated_failure,
                reason=f"the model answered unusably {read.invalid_calls + 1} times in a row "
                f"(last: {problem}); approve to let it try again, answer to guide it, "
                "or reject to end the run",
            )
        ]
        if repeated
        else []
    )

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal:
            return None
        return state.model_copy(
            update={
                "step": step + 1,
                "messages": [*state.messages, *append],
                "invalid_calls": state.invalid_calls + 1,
                "awaiting_human": waits,
                "status": RunStatus.waiting_human if waits else RunStatus.running,
            }
        )

    refusals = [
        (call_id, error, kind, category)
        for reasons, kind, category in (
            (invalid, "tool_call_invalid", ErrorCategory.model_invalid_output),
            (denied, "tool_call_denied", ErrorCategory.policy_denied),
        )
        for call_id, error in reasons.items()
    ]
    described = [
        *(
            RunEvent(
                run_id=read.run_id,
                kind=kind,
                step=step,
                data={"tool_call_id": call_id, "error": error, "error_category": category},
            )
            for call_id, error, kind, category in refusals
        ),
        RunEvent(
            run_id=read.run_id,
            kind="decision",
            step=step,
            data={
                "decision": "escalated_repeated_failure" if repeated else "fed_back",
                "problem": problem,
            },
        ),
    ]
    committed = rt.store.update(read.run_id, commit, log=lambda _: described)
    if committed is None:
        _lost_commit(rt, read.run_id, step)
        return False
    for *_, category in refusals:
        metrics.ERRORS.labels(agent.name, category, "step").inc()
    redispatch(rt, committed)
    return True
