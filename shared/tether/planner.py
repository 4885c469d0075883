"""The planner: one message is one planning step of one run.

It loads the run's explicit state, reserves budget, calls the model, validates
what it answered, commits the decision over the version it read (so only one
delivery of a step can commit), then publishes what the decision asks for.
Publishing comes after the commit and is repeated on redelivery: the state is
the outbox, and every consumer is idempotent by action and escalation id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tether.agents import Agent, get_agent
from tether.errors import InvalidToolCallError, ModelError, UnknownAgentError
from tether.messages import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    TaskEvent,
    ToolAction,
    Verdict,
    utcnow,
)
from tether.models.base import ModelResponse
from tether.runtime import Runtime
from tether.state import ChatMessage, RunError, RunState, RunStatus
from tether.store import run_id_for
from tether.telemetry import (
    COST,
    ERRORS,
    MODEL_LATENCY,
    RUN_STEPS,
    RUNS_FINISHED,
    STEPS,
    TOKENS,
    log,
)


def start(rt: Runtime, raw_event: Any) -> str | None:
    """Accept a TaskEvent and run its first step; bad events are recorded, never raised."""
    size = len(json.dumps(raw_event, default=str))
    if size > rt.settings.max_event_bytes:
        reason = (
            f"event payload is {size} bytes, over the {rt.settings.max_event_bytes}-byte cap "
            "(TETHER_MAX_EVENT_BYTES); send a reference to large data instead"
        )
        _reject(rt, reason, raw_event)
        return None
    try:
        event = TaskEvent.model_validate(raw_event)
    except ValidationError as exc:
        _reject(rt, f"malformed TaskEvent: {_short(exc)}; fix the publisher", raw_event)
        return None
    try:
        agent = get_agent(event.agent)
    except UnknownAgentError as exc:
        _reject(rt, f"event {event.event_id!r}: {exc}", raw_event)
        return None

    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent=agent.name,
        goal=event.input,
        metadata=event.metadata,
        limits=agent.budget.tightened_by(event.budget),
        messages=[
            ChatMessage(role="system", content=agent.instructions),
            ChatMessage(role="user", content=event.input),
        ],
    )
    state, created = rt.store.create(event, state)
    if created:
        rt.store.log(
            state.run_id,
            "run_started",
            0,
            agent=agent.name,
            goal=event.input,
            limits=state.limits.model_dump(),
            event_id=event.event_id,
        )
    else:
        rt.store.log(state.run_id, "duplicate_event", state.step, event_id=event.event_id)
    plan(rt, state.run_id, 0)
    return state.run_id


def _reject(rt: Runtime, reason: str, raw_event: Any) -> None:
    rt.store.reject(reason, raw_event)
    log.warning("event_rejected", reason=reason)


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )


def plan(rt: Runtime, run_id: str, step: int) -> None:
    """Perform planning step ``step`` of a run, unless it was already committed."""
    state = rt.store.load(run_id)
    if state.terminal:
        return
    if state.step != step or state.status not in (RunStatus.queued, RunStatus.running):
        if state.step == step + 1:
            redispatch(rt, state)
        rt.store.log(run_id, "duplicate_step", step, current_step=state.step, status=state.status)
        return
    agent = get_agent(state.agent)
    tools = [t.openai_schema() for t in agent.tools]

    estimate = agent.model.estimate_tokens(state.messages, tools)
    reservation = rt.store.budgets.reserve(run_id, f"model:{step}", steps=1, tokens=estimate)
    if not reservation.granted:
        finish(
            rt,
            run_id,
            step,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted before model call {step}: {reservation.reason}; "
                "raise the agent's budget or the event's limits to let it go further",
            ),
        )
        return

    started = time.perf_counter()
    try:
        response = agent.model.complete(state.messages, tools)
    except ModelError as exc:
        rt.store.budgets.settle(run_id, f"model:{step}", tokens=-estimate, cost_usd=0.0)
        rt.store.log(run_id, "model_failed", step, model=agent.model.name, error=str(exc))
        finish(
            rt,
            run_id,
            step,
            RunStatus.failed,
            RunError(category=ErrorCategory.model_transient, message=str(exc)),
        )
        return
    latency = time.perf_counter() - started
    rt.store.budgets.settle(
        run_id, f"model:{step}", tokens=response.total_tokens - estimate, cost_usd=response.cost_usd
    )
    rt.store.log(
        run_id,
        "model_call",
        step,
        model=response.model,
        messages=[m.to_openai() for m in state.messages],
        tools=[t.name for t in agent.tools],
        answer={
            "content": response.content,
            "tool_calls": [c.model_dump() for c in response.tool_calls],
        },
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=response.cost_usd,
        latency_ms=round(latency * 1000, 3),
    )
    MODEL_LATENCY.labels(agent.name, response.model).observe(latency)
    TOKENS.labels(agent.name, response.model).inc(response.total_tokens)
    COST.labels(agent.name, response.model).inc(response.cost_usd)
    _decide(rt, agent, state, response)


def _decide(rt: Runtime, agent: Agent, read: RunState, response: ModelResponse) -> None:
    step = read.step
    assistant = ChatMessage(
        role="assistant", content=response.content, tool_calls=response.tool_calls or None
    )

    if not response.tool_calls:
        if response.content:
            finish(
                rt,
                read.run_id,
                step,
                RunStatus.succeeded,
                None,
                result=response.content,
                append=[assistant],
                advance=True,
                decision="final_answer",
            )
            return
        feedback = [
            ChatMessage(
                role="user",
                content=(
                    "Your reply had neither a tool call nor an answer. Call one of the tools, "
                    "or reply with the final answer as text."
                ),
            )
        ]
        _retry_invalid(rt, agent, read, [assistant, *feedback], {"": "empty reply"})
        return

    actions: list[ToolAction] = []
    problems: dict[str, str] = {}
    for index, call in enumerate(response.tool_calls):
        try:
            tool = agent.tool(call.name)
            arguments = tool.validate_call(call.arguments)
        except InvalidToolCallError as exc:
            problems[call.id] = str(exc)
            continue
        actions.append(
            ToolAction(
                action_id=f"{read.run_id}:{step}:{index}",
                run_id=read.run_id,
                agent=agent.name,
                step=step,
                tool=tool.name,
                tool_call_id=call.id,
                arguments=arguments,
                idempotent=tool.idempotent,
            )
        )

    if problems:
        # Nothing of an invalid turn runs: the model gets each problem and tries again.
        feedback = [
            ChatMessage(
                role="tool",
                tool_call_id=call.id,
                content=json.dumps(
                    {
                        "error": problems.get(call.id)
                        or "not executed because another call in the same turn was invalid; send it again",
                    }
                ),
            )
            for call in response.tool_calls
        ]
        _retry_invalid(rt, agent, read, [assistant, *feedback], problems)
        return

    reservation = rt.store.budgets.reserve(read.run_id, f"tools:{step}", tool_calls=len(actions))
    if not reservation.granted:
        finish(
            rt,
            read.run_id,
            step,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted before tool calls of step {step}: "
                f"{reservation.reason}; raise max_tool_calls to let it go further",
            ),
            append=[assistant],
        )
        return

    needs_approval = [a for a in actions if agent.tool(a.tool).requires_approval]
    runnable = [a for a in actions if a not in needs_approval]

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal:
            return None
        return state.model_copy(
            update={
                "step": step + 1,
                "messages": [*state.messages, assistant],
                "pending_actions": runnable,
                "awaiting_approval": needs_approval,
                "invalid_calls": 0,
                "status": RunStatus.waiting_human if needs_approval else RunStatus.waiting_tools,
            }
        )

    committed = rt.store.update(read.run_id, commit)
    if committed is None:
        return
    STEPS.labels(agent.name).inc()
    rt.store.log(
        read.run_id,
        "decision",
        step,
        decision="tool_calls",
        actions=[a.model_dump(mode="json") for a in actions],
        awaiting_approval=[a.action_id for a in needs_approval],
    )
    redispatch(rt, committed)


def _retry_invalid(
    rt: Runtime,
    agent: Agent,
    read: RunState,
    append: list[ChatMessage],
    problems: dict[str, str],
) -> None:
    """Feed an unusable answer back to the model, or fail the run after too many in a row.

    ``problems`` maps each offending tool call id ("" when there was no call) to what was wrong.
    """
    step = read.step
    problem = "; ".join(problems.values())

    def log_problems() -> None:
        for call_id, error in problems.items():
            if call_id:
                rt.store.log(
                    read.run_id, "tool_call_invalid", step, tool_call_id=call_id, error=error
                )
                ERRORS.labels(agent.name, ErrorCategory.tool_validation).inc()

    if read.invalid_calls + 1 > agent.max_invalid_calls:
        finish(
            rt,
            read.run_id,
            step,
            RunStatus.failed,
            RunError(
                category=ErrorCategory.model_invalid_output,
                message=f"the model answered unusably {read.invalid_calls + 1} times in a row "
                f"(last: {problem}); check the model and the agent's instructions",
            ),
            append=append,
            before_end=log_problems,
        )
        return

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal:
            return None
        return state.model_copy(
            update={
                "step": step + 1,
                "messages": [*state.messages, *append],
                "invalid_calls": state.invalid_calls + 1,
                "status": RunStatus.running,
            }
        )

    committed = rt.store.update(read.run_id, commit)
    if committed is not None:
        STEPS.labels(agent.name).inc()
        log_problems()
        rt.store.log(
            read.run_id, "decision", step, decision="invalid_output_fed_back", problem=problem
        )
        redispatch(rt, committed)


def redispatch(rt: Runtime, state: RunState) -> None:
    """Publish what the committed state says is outstanding; safe to repeat."""
    if state.status == RunStatus.running:
        rt.send_step(state.run_id, state.step)
        return
    for action in state.pending_actions:
        rt.send_action(action)
    for action in state.awaiting_approval:
        tool = get_agent(state.agent).tool(action.tool)
        rt.send_escalation(
            Escalation(
                escalation_id=f"esc_{action.action_id.replace(':', '_')}",
                run_id=state.run_id,
                agent=state.agent,
                kind=EscalationKind.approval_required,
                reason=f"tool {tool.name!r} requires human approval before it runs "
                f"with arguments {json.dumps(action.arguments)}",
                action=action,
            )
        )


def observe(rt: Runtime, observation: Observation) -> None:
    """Record a tool's outcome; the last outstanding one triggers the next step."""

    def record(state: RunState) -> RunState | None:
        if state.terminal or observation.action_id not in {
            a.action_id for a in state.pending_actions
        }:
            return None
        pending = [a for a in state.pending_actions if a.action_id != observation.action_id]
        content = (
            json.dumps({"result": observation.output})
            if observation.ok
            else json.dumps({"error": observation.error})
        )
        outstanding = pending or state.awaiting_approval
        return state.model_copy(
            update={
                "pending_actions": pending,
                "completed_actions": [*state.completed_actions, observation],
                "messages": [
                    *state.messages,
                    ChatMessage(
                        role="tool", tool_call_id=observation.tool_call_id, content=content
                    ),
                ],
                "status": state.status if outstanding else RunStatus.running,
            }
        )

    committed = rt.store.update(observation.run_id, record)
    state = committed or rt.store.load(observation.run_id)
    if committed is None:
        rt.store.log(
            state.run_id,
            "observation_ignored",
            observation.step,
            action_id=observation.action_id,
            reason=f"run is {state.status}" if state.terminal else "already recorded",
        )
    else:
        rt.store.log(
            state.run_id,
            "observation",
            observation.step,
            action_id=observation.action_id,
            tool=observation.tool,
            ok=observation.ok,
            remaining=len(state.pending_actions),
        )
    if state.status == RunStatus.running and not state.pending_actions:
        plan(rt, state.run_id, state.step)


def resume(rt: Runtime, escalation: Escalation, decision: Decision) -> None:
    """Carry a human's decision into the run: run the action, answer it, or end the run."""
    action = escalation.action
    if action is None:
        return
    if decision.verdict == Verdict.reject:
        finish(
            rt,
            escalation.run_id,
            None,
            RunStatus.rejected,
            RunError(
                category=ErrorCategory.human_rejected,
                message=f"{decision.by} rejected {action.tool!r}: {decision.reason or 'no reason given'}; "
                "the run stopped before that tool ran",
            ),
        )
        return

    def apply(state: RunState) -> RunState | None:
        if state.terminal or action.action_id not in {a.action_id for a in state.awaiting_approval}:
            return None
        awaiting = [a for a in state.awaiting_approval if a.action_id != action.action_id]
        update: dict[str, Any] = {"awaiting_approval": awaiting}
        if decision.verdict == Verdict.approve:
            update["pending_actions"] = [*state.pending_actions, action]
        else:
            answer = ChatMessage(
                role="tool",
                tool_call_id=action.tool_call_id,
                content=json.dumps(
                    {"human_answer": decision.answer, "by": decision.by, "tool_not_run": True}
                ),
            )
            update["messages"] = [*state.messages, answer]
        still_waiting = awaiting or update.get("pending_actions", state.pending_actions)
        update["status"] = (
            RunStatus.waiting_human
            if awaiting
            else RunStatus.waiting_tools
            if still_waiting
            else RunStatus.running
        )
        return state.model_copy(update=update)

    committed = rt.store.update(escalation.run_id, apply)
    if committed is None:
        return
    rt.store.log(
        committed.run_id,
        "resumed",
        committed.step,
        escalation_id=escalation.escalation_id,
        verdict=decision.verdict,
        by=decision.by,
    )
    if decision.verdict == Verdict.approve:
        rt.send_action(action)
    elif committed.status == RunStatus.running:
        plan(rt, committed.run_id, committed.step)


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
    """End a run once; a run that ends without an answer keeps its partial result.

    ``advance`` counts the ending as a committed step (the model's final answer);
    ``decision`` and ``before_end`` record, only if this call ended the run, what led to it.
    """

    def end(state: RunState) -> RunState | None:
        if state.terminal or (step is not None and state.step != step):
            return None
        messages = [*state.messages, *(append or [])]
        ended = state.model_copy(update={"messages": messages})
        return ended.model_copy(
            update={
                "step": state.step + 1 if advance else state.step,
                "status": status,
                "result": result,
                "error": error,
                "partial_result": None if result is not None else ended.latest_partial(),
                "pending_actions": [],
                "awaiting_approval": [],
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
