"""What comes back to the planner: tool observations and human decisions."""

from __future__ import annotations

import json
from typing import Any

from tether import autonomy
from tether.agents import get_agent
from tether.budgets import GuardedReservation
from tether.messages import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    RunEvent,
    Verdict,
)
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.step import escalation_id, model_reservation, plan
from tether.runtime import Runtime
from tether.state import ChatMessage, HumanWait, RunError, RunState, RunStatus


def _status(state: RunState, **update: Any) -> RunStatus:
    waits = update.get("awaiting_human", state.awaiting_human)
    pending = update.get("pending_actions", state.pending_actions)
    if waits:
        return RunStatus.waiting_human
    return RunStatus.waiting_tools if pending else RunStatus.running


def observe(rt: Runtime, observation: Observation) -> None:
    """Record a tool's outcome; the last outstanding one triggers the next step."""

    read: list[RunState] = []

    def record(state: RunState) -> RunState | None:
        if state.terminal or observation.action_id not in {
            a.action_id for a in state.pending_actions
        }:
            return None
        read[:] = [state]
        action = next(a for a in state.pending_actions if a.action_id == observation.action_id)
        update: dict[str, Any] = {
            "pending_actions": [a for a in state.pending_actions if a is not action]
        }
        if observation.needs_human is not None:
            update["awaiting_human"] = [
                *state.awaiting_human,
                HumanWait(
                    # One id per occurrence: the same action may need a human again later.
                    escalation_id=escalation_id(
                        action.action_id, observation.needs_human, state.version
                    ),
                    kind=observation.needs_human,
                    reason=observation.error or "the executor would not decide alone",
                    action=action,
                ),
            ]
        else:
            content = (
                {"result": observation.output} if observation.ok else {"error": observation.error}
            )
            update["completed_actions"] = [*state.completed_actions, observation]
            update["messages"] = [
                *state.messages,
                ChatMessage(
                    role="tool", tool_call_id=observation.tool_call_id, content=json.dumps(content)
                ),
            ]
        return state.model_copy(update={**update, "status": _status(state, **update)})

    def describe(state: RunState) -> list[RunEvent]:
        return [
            RunEvent(
                run_id=state.run_id,
                kind="observation",
                step=observation.step,
                data={
                    "action_id": observation.action_id,
                    "tool": observation.tool,
                    "ok": observation.ok,
                    "error_category": observation.error_category,
                    "needs_human": observation.needs_human,
                    "remaining": len(state.pending_actions),
                },
            )
        ]

    reserved: list[GuardedReservation] = []

    def reserve_after(state: RunState) -> GuardedReservation | None:
        # The last observation readies the next step: its model call is reserved in
        # this commit's round trip rather than one of its own.
        ahead = model_reservation(rt, state) if state.status == RunStatus.running else None
        reserved[:] = [ahead] if ahead else []
        return ahead

    committed = rt.store.update(
        observation.run_id,
        record,
        log=describe,
        # A failed call of a requires_approval tool tightens its earned autonomy, once.
        side_writes=lambda state: autonomy.failure_writes(get_agent(state.agent), observation),
        reserve_after=reserve_after,
    )
    if committed is None:
        state = rt.store.load(observation.run_id)
        rt.store.log(
            state.run_id,
            "observation_ignored",
            observation.step,
            action_id=observation.action_id,
            reason=f"run is {state.status}" if state.terminal else "already recorded",
        )
        # An earlier delivery may have committed and died before publishing what
        # followed (the next step, an escalation): publishing again is harmless.
        redispatch(rt, state)
        return
    if committed.status == RunStatus.running:
        plan(rt, committed.run_id, committed.step, reserved[0] if reserved else None)
    else:
        redispatch(rt, committed, before=read[0])


def resume(rt: Runtime, escalation: Escalation, decision: Decision) -> None:
    """Carry a human's decision into the run: go on, take the answer, or end the run."""
    state = rt.store.get(escalation.run_id)
    wait = next(
        (
            w
            for w in (state.awaiting_human if state else [])
            if w.escalation_id == escalation.escalation_id
        ),
        None,
    )
    if state is None or wait is None:
        return
    if decision.verdict == Verdict.reject and wait.kind == EscalationKind.budget_exhausted:
        limit = wait.budget.limit if wait.budget else None
        finish(
            rt,
            escalation.run_id,
            None,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted ({wait.reason}); {decision.by} declined to extend "
                f"it: {decision.reason or 'no reason given'}; the run kept its partial result",
                limit=limit,
            ),
        )
        return
    if decision.verdict == Verdict.approve and wait.draft is not None:
        # A low-confidence draft a human approved is the run's answer.
        finish(rt, escalation.run_id, None, RunStatus.succeeded, None, result=wait.draft)
        return
    if decision.verdict == Verdict.reject:
        held = f"{wait.action.tool!r} " if wait.action else ""
        finish(
            rt,
            escalation.run_id,
            None,
            RunStatus.rejected,
            RunError(
                category=ErrorCategory.human_rejected,
                message=f"{decision.by} rejected {held}({wait.kind}): "
                f"{decision.reason or 'no reason given'}; the run stopped there and kept its "
                "partial result",
            ),
        )
        return

    read: list[RunState] = []

    def apply(state: RunState) -> RunState | None:
        if state.terminal or wait not in state.awaiting_human:
            return None
        read[:] = [state]
        update: dict[str, Any] = {"awaiting_human": [w for w in state.awaiting_human if w != wait]}
        if wait.kind == EscalationKind.repeated_failure:
            update["invalid_calls"] = 0
        if decision.verdict == Verdict.extend and wait.budget is not None:
            # budgets.lua already raised the limit (tether.escalations.extend_budget).
            field = f"max_{wait.budget.limit}"
            raised = wait.budget.max + (decision.extend_by or 0)
            integral = field in ("max_steps", "max_tool_calls", "max_tokens")
            value = int(raised) if integral else raised
            update["limits"] = state.limits.model_copy(update={field: value})
        if decision.verdict == Verdict.approve and wait.action is not None:
            rerun = wait.escalation_id if wait.kind == EscalationKind.unsafe_retry else None
            update["pending_actions"] = [
                *state.pending_actions,
                wait.action.model_copy(update={"rerun_approval": rerun}),
            ]
        elif decision.verdict == Verdict.answer:
            said = {"human_answer": decision.answer, "by": decision.by}
            asked = wait.kind == EscalationKind.model_uncertain and wait.action is not None
            update["messages"] = [
                *state.messages,
                # The human's answer to ask_human is the tool's result.
                ChatMessage(
                    role="tool",
                    tool_call_id=wait.action.tool_call_id,
                    content=json.dumps({"answer": decision.answer, "answered_by": decision.by}),
                )
                if asked and wait.action is not None
                else ChatMessage(
                    role="tool",
                    tool_call_id=wait.action.tool_call_id,
                    content=json.dumps({**said, "tool_not_run": True}),
                )
                if wait.action is not None
                else ChatMessage(role="user", content=f"{decision.by} answered: {decision.answer}"),
            ]
        return state.model_copy(update={**update, "status": _status(state, **update)})

    def describe(state: RunState) -> list[RunEvent]:
        return [
            RunEvent(
                run_id=state.run_id,
                kind="resumed",
                step=state.step,
                data={
                    "escalation_id": escalation.escalation_id,
                    "kind": wait.kind,
                    "verdict": decision.verdict,
                    "by": decision.by,
                    **(
                        {"limit": decision.limit, "extend_by": decision.extend_by}
                        if decision.verdict == Verdict.extend
                        else {}
                    ),
                },
            )
        ]

    committed = rt.store.update(escalation.run_id, apply, log=describe)
    if committed is None:
        return
    if committed.status == RunStatus.running:
        plan(rt, committed.run_id, committed.step)
    else:
        redispatch(rt, committed, before=read[0])
