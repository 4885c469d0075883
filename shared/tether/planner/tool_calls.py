"""A model turn of tool calls: validated, checked against policies, held for approval
where a tool requires it, and committed with its tool-call budget in one round trip.

A call the model formatted wrongly, or a policy denies, is never executed: the
whole turn goes back to the model (tether.planner.refusal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tether.agent.definition import Agent
from tether.agent.uncertainty import ASK_HUMAN
from tether.errors import BudgetExhaustedError, InvalidToolCallError
from tether.models.base import ModelResponse
from tether.planner import asking, guarding, outbox
from tether.planner.fencing import escalation_id, published, step_commit
from tether.planner.refusal import feed_back
from tether.rollout import autonomy
from tether.runtime import Runtime
from tether.store.state import ChatMessage, HumanWait, RunState, RunStatus, ToolCall
from tether.transport.wire import EscalationKind, EventKind, RunEvent, ToolAction


@dataclass
class _Checked:
    """A turn's tool calls as actions, and why each refused call was refused, by call id."""

    actions: list[ToolAction] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    denied: dict[str, str] = field(default_factory=dict)


def take(
    rt: Runtime, agent: Agent, read: RunState, response: ModelResponse, assistant: ChatMessage
) -> bool:
    """Commit the tool calls of ``response``, or give the turn back; True if the commit won."""
    # A call whose arguments a guardrail blocked ends the run (tether.planner.guarding).
    findings = guarding.findings_of(response)
    blocked = guarding.blocked_turn(rt, read, findings, assistant)
    if blocked is not None:
        return blocked
    checked = _check(agent, read, response.tool_calls)
    if checked.invalid or checked.denied:
        feedback = _refused_feedback(response.tool_calls, checked)
        return feed_back(rt, agent, read, [assistant, *feedback], checked.invalid, checked.denied)
    waits, auto = _approvals(rt, agent, read, checked.actions)
    # Calls whose arguments a guardrail escalated wait for a person, as approvals do.
    held = {w.action.action_id for w in waits if w.action}
    waits += guarding.argument_waits(
        findings, [a for a in checked.actions if a.action_id not in held]
    )
    return _commit(rt, agent, read, assistant, checked.actions, waits, auto)


def _check(agent: Agent, read: RunState, calls: list[ToolCall]) -> _Checked:
    checked = _Checked()
    for index, call in enumerate(calls):
        try:
            tool = agent.tool(call.name)
            arguments = tool.validate_call(call.arguments)
        except InvalidToolCallError as exc:
            checked.invalid[call.id] = str(exc)
            continue
        action = ToolAction(
            action_id=f"{read.run_id}:{read.step}:{index}",
            run_id=read.run_id,
            agent=agent.name,
            step=read.step,
            tool=tool.name,
            tool_call_id=call.id,
            arguments=arguments,
            idempotent=tool.idempotent,
        )
        denial = agent.check_policies(action, read)
        if denial is not None:
            checked.denied[call.id] = denial
            continue
        checked.actions.append(action)
    return checked


def _refused_feedback(calls: list[ToolCall], checked: _Checked) -> list[ChatMessage]:
    # Nothing of a refused turn runs: the model gets each problem and tries again.
    return [
        ChatMessage(
            role="tool",
            tool_call_id=call.id,
            content=json.dumps(
                {
                    "error": checked.invalid.get(call.id)
                    or checked.denied.get(call.id)
                    or "not executed because another call in the same turn was refused; "
                    "send it again"
                }
            ),
        )
        for call in calls
    ]


def _approvals(
    rt: Runtime, agent: Agent, read: RunState, actions: list[ToolAction]
) -> tuple[list[HumanWait], list[RunEvent]]:
    """The waits for humans the actions need, and the log entries of those that their
    tool's earned autonomy approves instead."""
    # Whether each held call asks a human or is approved by its earned autonomy.
    gates = {
        a.action_id: autonomy.gate(rt.store.client, agent, a)
        for a in actions
        if agent.tool(a.tool).requires_approval
    }
    # ask_human calls wait for a human's answer, which becomes their result.
    waits = asking.question_waits(actions) + [
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
        autonomy.auto_approved(read.run_id, read.step, a, gates[a.action_id])
        for a in actions
        if a.action_id in gates and not gates[a.action_id].ask
    ]
    return waits, auto


def _commit(
    rt: Runtime,
    agent: Agent,
    read: RunState,
    assistant: ChatMessage,
    actions: list[ToolAction],
    waits: list[HumanWait],
    auto: list[RunEvent],
) -> bool:
    step = read.step
    held = {w.action.action_id for w in waits if w.action}
    runnable = [a for a in actions if a.action_id not in held]

    commit = step_commit(
        step,
        lambda state: {
            "messages": [*state.messages, assistant],
            "pending_actions": runnable,
            "awaiting_human": waits,
            "invalid_calls": 0,
            "status": RunStatus.waiting_human if waits else RunStatus.waiting_tools,
        },
    )

    decision = _decision(read, actions, waits)
    # Where nothing waits for a human, the actions go out in the commit's own script.
    in_commit = not waits and outbox.publishes_in_commit(rt)
    try:
        # The tool calls are reserved in the commit's round trip, which goes ahead only if
        # granted; the model call's settlement, held back till then, goes in the same script.
        with rt.store.budgets.settling_in_reservation(read.run_id):
            committed = rt.store.update(
                read.run_id,
                commit,
                log=lambda _: [decision, *auto],
                side_writes=(lambda state: outbox.action_writes(rt, state)) if in_commit else None,
                tool_calls=(f"tools:{step}", len([a for a in actions if a.tool != ASK_HUMAN])),
            )
    except BudgetExhaustedError as exc:
        return asking.out_of_budget(
            rt,
            agent,
            read,
            exc.limit,
            exc.reason,
            f"budget exhausted before the tool calls of step {step}: "
            f"{exc.reason}; raise max_tool_calls to let it go further",
            append=[assistant],
        )
    if committed is not None and in_commit:
        return True
    return published(rt, read.run_id, step, committed)


def _decision(read: RunState, actions: list[ToolAction], waits: list[HumanWait]) -> RunEvent:
    return RunEvent(
        run_id=read.run_id,
        kind=EventKind.decision,
        step=read.step,
        data={
            "decision": "tool_calls",
            "actions": [a.model_dump(mode="json") for a in actions],
            "awaiting_human": [w.escalation_id for w in waits],
        },
    )
