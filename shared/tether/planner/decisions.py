"""A human's decision carried into the run: go on, take the answer, or end the run.

A decision is not taken on its word (invariant 7): it counts only as what the
escalation service recorded as decided. The record is trusted as it stands:
only the escalation service (which checked the operator's signature before
recording), the planner and the operator's ACL user can write it, so the
operators file is not read here again (it need not be mounted in the planner,
and an operator removed after deciding leaves the decision standing). Anything
else is refused (tether.worker.deadletters.refuse).

An approval with edited arguments is checked again here, against the state the
commit goes over (tether.agent.edits): the escalation service checked it when it
recorded it, but the agent's policies read the run's state, which may have moved
on, and a service that did not load the agent could not check it. An edit refused
here never runs: the model reads why, as for a call of its own that was refused.
"""

from __future__ import annotations

import json
from typing import Any

from tether.agent.definition import get_agent
from tether.agent.edits import edited_action
from tether.errors import DecisionRefusedError, UnknownEscalationError
from tether.escalation import records
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.recording import waiting_status
from tether.planner.step import plan
from tether.runtime import Runtime
from tether.store.budgets import raised_limit
from tether.store.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.transport import celery_app
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    EventKind,
    Observation,
    RunEvent,
    ToolAction,
    Verdict,
    canonical,
)
from tether.worker import deadletters


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
    if _ended(rt, escalation.run_id, wait, decision):
        return

    read: list[RunState] = []
    edit_refused: list[str] = []

    def apply(state: RunState) -> RunState | None:
        if state.terminal or wait not in state.awaiting_human:
            return None
        read[:] = [state]
        update, refused = _decided(state, wait, decision)
        edit_refused[:] = [refused] if refused else []
        return state.model_copy(update={**update, "status": waiting_status(state, **update)})

    committed = rt.store.update(
        escalation.run_id,
        apply,
        log=lambda state: _described(state, escalation, wait, decision, edit_refused),
    )
    if committed is None:
        return
    if committed.status == RunStatus.running:
        plan(rt, committed.run_id, committed.step)
    else:
        redispatch(rt, committed, before=read[0])


def _recorded(rt: Runtime, escalation: Escalation, decision: Decision) -> Escalation | None:
    """The escalation as recorded, where its record holds ``decision`` as decided;
    None: the resume was refused as forged. The record's signature was checked by the
    escalation service when it recorded the decision (see the module's docstring)."""
    why: tuple[str, str] | None = None
    record = None
    try:
        record, _ = records.load(rt, escalation.escalation_id)
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


def _ended(rt: Runtime, run_id: str, wait: HumanWait, decision: Decision) -> bool:
    """End the run where the decision ends it; True if it was such a decision."""
    if decision.verdict == Verdict.reject and wait.kind == EscalationKind.budget_exhausted:
        limit = wait.budget.limit if wait.budget else None
        finish(
            rt,
            run_id,
            None,
            RunStatus.budget_exhausted,
            RunError(
                category=ErrorCategory.budget,
                message=f"budget exhausted ({wait.reason}); {decision.by} declined to extend "
                f"it: {decision.reason or 'no reason given'}; the run kept its partial result",
                limit=limit,
            ),
        )
        return True
    if decision.verdict == Verdict.approve and wait.draft is not None:
        # A low-confidence draft a human approved is the run's answer.
        finish(
            rt,
            run_id,
            None,
            RunStatus.succeeded,
            None,
            result=wait.draft,
            output=wait.draft_output,
        )
        return True
    if decision.verdict == Verdict.reject:
        held = f"{wait.action.tool!r} " if wait.action else ""
        finish(
            rt,
            run_id,
            None,
            RunStatus.rejected,
            RunError(
                category=ErrorCategory.human_rejected,
                message=f"{decision.by} rejected {held}({wait.kind}): "
                f"{decision.reason or 'no reason given'}; the run stopped there and kept its "
                "partial result",
            ),
        )
        return True
    return False


def _decided(
    state: RunState, wait: HumanWait, decision: Decision
) -> tuple[dict[str, Any], str | None]:
    """What a decision that lets the run go on changes in ``state``, which waits on
    ``wait``, and why its edited arguments were refused (None: they were not)."""
    refused: str | None = None
    update: dict[str, Any] = {"awaiting_human": [w for w in state.awaiting_human if w != wait]}
    if wait.kind == EscalationKind.repeated_failure:
        update["invalid_calls"] = 0
    if decision.verdict == Verdict.extend and wait.budget is not None:
        # The decision's commit raised the budget hash by the same function
        # (tether.escalation.records.extension_writes): the state says what it says.
        field = f"max_{wait.budget.limit}"
        value = raised_limit(wait.budget.limit, wait.budget.max, decision.extend_by or 0)
        update["limits"] = state.limits.model_copy(update={field: value})
    if decision.verdict == Verdict.approve and wait.result is not None:
        # A tool result a guardrail held: the model reads it now; the tool does not run again.
        update["completed_actions"] = [*state.completed_actions, wait.result]
        update["messages"] = [*state.messages, _released(wait.result)]
    elif decision.verdict == Verdict.approve and wait.action is not None:
        rerun = wait.escalation_id if wait.kind == EscalationKind.unsafe_retry else None
        try:
            # A person's edited arguments replace the model's, once they pass its gates.
            action = (
                wait.action
                if decision.arguments is None
                else edited_action(get_agent(state.agent), wait.action, decision.arguments, state)
            )
        except DecisionRefusedError as exc:
            refused = str(exc)
            update["messages"] = [*state.messages, _edit_refused(wait.action, decision, refused)]
        else:
            update["pending_actions"] = [
                *state.pending_actions,
                action.model_copy(update={"rerun_approval": rerun}),
            ]
    elif decision.verdict == Verdict.answer:
        update["messages"] = [*state.messages, _answer(wait, decision)]
    return update, refused


def _released(result: Observation) -> ChatMessage:
    """A held tool result as the model reads it, once a person let it through."""
    content = json.dumps({"result": result.output})
    return ChatMessage(role="tool", tool_call_id=result.tool_call_id, content=content)


def _edit_refused(action: ToolAction, decision: Decision, why: str) -> ChatMessage:
    """The held call's result, as the model reads it, where the edit it was approved with
    was refused: it did not run."""
    said = {
        "error": f"{decision.by} approved this call with edited arguments, which were "
        f"refused: {why}",
        "tool_not_run": True,
    }
    return ChatMessage(role="tool", tool_call_id=action.tool_call_id, content=json.dumps(said))


def _answer(wait: HumanWait, decision: Decision) -> ChatMessage:
    """A human's answer as the model reads it."""
    if wait.action is None:
        return ChatMessage(role="user", content=f"{decision.by} answered: {decision.answer}")
    if wait.kind == EscalationKind.model_uncertain:
        # The human's answer to ask_human is the tool's result.
        return ChatMessage(
            role="tool",
            tool_call_id=wait.action.tool_call_id,
            content=json.dumps({"answer": decision.answer, "answered_by": decision.by}),
        )
    said = {"human_answer": decision.answer, "by": decision.by, "tool_not_run": True}
    return ChatMessage(role="tool", tool_call_id=wait.action.tool_call_id, content=json.dumps(said))


def _described(
    state: RunState,
    escalation: Escalation,
    wait: HumanWait,
    decision: Decision,
    edit_refused: list[str],
) -> list[RunEvent]:
    return [
        RunEvent(
            run_id=state.run_id,
            kind=EventKind.resumed,
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
                **({"edit_refused": edit_refused[0]} if edit_refused else {}),
            },
        )
    ]
