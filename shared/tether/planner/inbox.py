"""What comes back to the planner: tool observations and human decisions.

Neither is taken on its word (invariant 7). An observation counts only as
what the executor stored for a pending action before sending it (its result,
or for a question to a human, the kind it asked); a decision only as what
the escalation service recorded as decided. The record is trusted as it stands:
only the escalation service (which checked the operator's signature before
recording), the planner and the operator's ACL user can write it, so the
operators file is not read here again (it need not be mounted in the planner,
and an operator removed after deciding leaves the decision standing). Anything
else is refused (tether.deadletters.refuse).
"""

from __future__ import annotations

import json
from typing import Any

from tether import autonomy, celery_app, deadletters, escalations, keys
from tether.agents import get_agent
from tether.budgets import GuardedReservation
from tether.errors import UnknownEscalationError
from tether.messages import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    RunEvent,
    Verdict,
    canonical,
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


def _refuse_observation(rt: Runtime, observation: Observation, reason: str, detail: str) -> None:
    deadletters.refuse(
        rt,
        celery_app.OBSERVE,
        {"observation": observation.model_dump(mode="json")},
        reason,
        f"{detail} (observation of action {observation.action_id}, tool "
        f"{observation.tool!r}, run {observation.run_id})",
        run_id=observation.run_id,
        step=observation.step,
    )


def _vouched(rt: Runtime, observation: Observation, asked: list[str]) -> Observation | None:
    """The observation as the executor stored it before sending; None: refused as forged.

    ``asked`` gets what the executor recorded of a question for a human
    (keys.action_held_value), for the pending action to be checked against.

    A result is stored under the action's id before its observation goes out
    (first writer wins), so the stored one is the action's outcome whatever the
    message says: one that differs is most often a loser of that race (a worker
    whose lease lapsed sends its own outcome), so the stored one goes on in its
    place. A question for a human leaves the kind it asks (keys.action_held).
    """
    # One round trip; two GETs rather than one MGET, which the planner's ACL user lacks.
    raw, held = rt.store.batch.run(
        lambda pipe: (
            pipe.get(keys.action_result(observation.action_id)),
            pipe.get(keys.action_held(observation.action_id)),
        )
    )
    if observation.needs_human is not None:
        if held is None or held.split("|")[0] != str(observation.needs_human):
            _refuse_observation(
                rt,
                observation,
                "not_from_executor",
                f"the executor asked no human ({observation.needs_human}) about this action",
            )
            return None
        asked[:] = [held]
        return observation
    if raw is None:
        _refuse_observation(
            rt, observation, "not_from_executor", "the executor stored no result for this action"
        )
        return None
    return Observation.model_validate_json(raw)


def observe(rt: Runtime, observation: Observation) -> None:
    """Record a tool's outcome; the last outstanding one triggers the next step."""
    asked: list[str] = []
    vouched = _vouched(rt, observation, asked)
    if vouched is None:
        return
    observation = vouched

    read: list[RunState] = []
    mismatch: list[str] = []

    def record(state: RunState) -> RunState | None:
        mismatch.clear()
        if state.terminal or observation.action_id not in {
            a.action_id for a in state.pending_actions
        }:
            return None
        action = next(a for a in state.pending_actions if a.action_id == observation.action_id)
        sent = (observation.tool, observation.tool_call_id, observation.step)
        if sent != (action.tool, action.tool_call_id, action.step):
            mismatch.append(
                f"it names tool {observation.tool!r}, call {observation.tool_call_id!r}, step "
                f"{observation.step}; the pending action is {action.tool!r}, call "
                f"{action.tool_call_id!r}, step {action.step}"
            )
            return None
        if observation.needs_human is not None and asked != [
            keys.action_held_value(observation.needs_human, action.rerun_approval)
        ]:
            mismatch.append(
                f"the executor asked a human about another attempt ({asked[0]}) than the "
                f"pending one (re-run approval {action.rerun_approval})"
            )
            return None
        read[:] = [state]
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
    if committed is None and mismatch:
        _refuse_observation(rt, observation, "differs_from_pending", mismatch[0])
        return
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


def _recorded(rt: Runtime, escalation: Escalation, decision: Decision) -> Escalation | None:
    """The escalation as recorded, where its record holds ``decision`` as decided;
    None: the resume was refused as forged. The record's signature was checked by the
    escalation service when it recorded the decision (see the module's docstring)."""
    why: tuple[str, str] | None = None
    record = None
    try:
        record, _ = escalations.load(rt, escalation.escalation_id)
    except UnknownEscalationError:
        why = "unknown_escalation", "no such escalation is recorded"
    if record is not None:
        if record.status != "decided" or record.decision is None:
            why = "not_decided", f"the escalation is {record.status}, not decided"
        elif canonical(record.decision) != canonical(decision):
            why = "differs_from_record", "it is not the decision recorded for the escalation"
    if why is not None or record is None:
        reason, detail = why or ("unknown_escalation", "no such escalation is recorded")
        deadletters.refuse(
            rt,
            celery_app.RESUME,
            {
                "escalation": escalation.model_dump(mode="json"),
                "decision": decision.model_dump(mode="json"),
            },
            reason,
            f"{detail} (escalation {escalation.escalation_id}, verdict {decision.verdict} "
            f"by {decision.by!r})",
            run_id=record.escalation.run_id if record is not None else escalation.run_id,
        )
        return None
    return record.escalation


def resume(rt: Runtime, escalation: Escalation, decision: Decision) -> None:
    """Carry a human's decision into the run: go on, take the answer, or end the run."""
    recorded = _recorded(rt, escalation, decision)
    if recorded is None:
        return
    # What the record says, not what the message says, from here on.
    escalation = recorded
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
            # The decision's commit raised the budget hash by the same function
            # (tether.escalations.extension_writes): the state says what it says.
            from tether.budgets import raised_limit

            field = f"max_{wait.budget.limit}"
            value = raised_limit(wait.budget.limit, wait.budget.max, decision.extend_by or 0)
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
