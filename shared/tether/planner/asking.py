"""Steps that ask a human instead of guessing: a model's question, a low-confidence
answer, a budget that ran out (tether.agent.uncertainty, Agent.escalate_on_budget).

Each holds the run in waiting_human with one commit (the wait, its decision
entry, the step moving on), and the escalation goes out from the outbox; no
worker is held while a human thinks.
"""

from __future__ import annotations

import json
from typing import Any

from tether.agent.definition import Agent
from tether.agent.uncertainty import ASK_HUMAN
from tether.planner.fencing import escalation_id, published, step_commit
from tether.planner.lifecycle import finish
from tether.runtime import Runtime
from tether.store.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.transport.wire import (
    BUDGET_LIMITS,
    BudgetRequest,
    ErrorCategory,
    EscalationKind,
    EventKind,
    RunEvent,
    ToolAction,
)

_PLANNING = (RunStatus.queued, RunStatus.running)


def question_waits(actions: list[ToolAction]) -> list[HumanWait]:
    """A model_uncertain wait for each ask_human call; the human's answer is its result."""
    waits = []
    for action in actions:
        if action.tool != ASK_HUMAN:
            continue
        question = str(action.arguments.get("question", ""))
        context = str(action.arguments.get("context", "")) or None
        waits.append(
            HumanWait(
                escalation_id=escalation_id(action.action_id),
                kind=EscalationKind.model_uncertain,
                reason=f"the model asks: {question}",
                action=action,
                question=question,
                context=context,
            )
        )
    return waits


def low_confidence_wait(
    wait_id: str,
    draft: str,
    confidence: float | None,
    floor: float,
    draft_output: dict[str, Any] | None = None,
) -> HumanWait:
    stated = "no readable confidence" if confidence is None else f"confidence {confidence:g}"
    return HumanWait(
        escalation_id=wait_id,
        kind=EscalationKind.model_uncertain,
        reason=f"the model's final answer has {stated}, below the agent's floor {floor:g}: "
        "approve to accept the draft, answer to guide the model, or reject to end the run",
        question="Is this draft answer right?",
        draft=draft,
        draft_output=draft_output,
    )


def out_of_budget(
    rt: Runtime,
    agent: Agent,
    read: RunState,
    limit: str | None,
    reason: str,
    ending: str,
    *,
    append: list[ChatMessage] | None = None,
) -> bool:
    """Hold the run for a human to extend its budget, where its agent escalates on budget;
    else end it budget_exhausted with the message ``ending``. True if this call's commit won.
    """
    wait_id = escalation_id(read.run_id, read.step, "budget", limit)
    wait = budget_wait(rt, agent, read.run_id, limit, reason, wait_id)
    if wait is not None:
        # What the step was about to do is dropped: once extended, the model is asked again.
        return hold(rt, read, wait, "escalated_budget_exhausted")
    ended = finish(
        rt,
        read.run_id,
        read.step,
        RunStatus.budget_exhausted,
        RunError(category=ErrorCategory.budget, message=ending, limit=limit),
        append=append,
    )
    return ended is not None


def budget_wait(
    rt: Runtime, agent: Agent, run_id: str, limit: str | None, reason: str, wait_id: str
) -> HumanWait | None:
    """A budget_exhausted wait, where the agent escalates and its ceiling leaves room."""
    policy = agent.escalate_on_budget
    if policy is None or limit not in BUDGET_LIMITS:
        return None
    current = rt.store.budgets.limit(run_id, limit)
    ceiling = getattr(policy.ceiling, f"max_{limit}")
    if current is None or ceiling is None or current >= ceiling:
        return None  # nothing a human could extend: the run ends as before
    used = float(getattr(rt.store.budgets.usage(run_id), limit))
    request = BudgetRequest.model_validate(
        {"limit": limit, "used": used, "max": current, "ceiling": float(ceiling)}
    )
    return HumanWait(
        escalation_id=wait_id,
        kind=EscalationKind.budget_exhausted,
        reason=f"budget exhausted ({reason}); extend max_{limit} (now {current:g}, "
        f"used {used:g}, ceiling {ceiling:g}) to let the run go on, or reject to end it "
        "with its partial result",
        budget=request,
    )


def hold(
    rt: Runtime,
    read: RunState,
    wait: HumanWait,
    decision: str,
    *,
    append: list[ChatMessage] | None = None,
    **data: Any,
) -> bool:
    """Commit the step as waiting for ``wait`` and publish it; True if this call's commit won."""
    step = read.step

    commit = step_commit(
        step,
        lambda state: {
            "messages": [*state.messages, *(append or [])],
            "awaiting_human": [wait],
            "status": RunStatus.waiting_human,
        },
        only_from=_PLANNING,
    )

    event = RunEvent(
        run_id=read.run_id,
        kind=EventKind.decision,
        step=step,
        data={
            "decision": decision,
            "awaiting_human": [wait.escalation_id],
            "reason": wait.reason,
            **json.loads(json.dumps(data, default=str)),
        },
    )
    committed = rt.store.update(read.run_id, commit, log=lambda _: [event])
    return published(rt, read.run_id, step, committed)
