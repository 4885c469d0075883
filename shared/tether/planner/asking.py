"""Steps that ask a human instead of guessing: a model's question, a low-confidence
answer, a budget that ran out (tether.uncertainty, Agent.escalate_on_budget).

Each holds the run in waiting_human with one commit (the wait, its decision
entry, the step moving on), and the escalation goes out from the outbox; no
worker is held while a human thinks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tether.agents import Agent
from tether.messages import BUDGET_LIMITS, BudgetRequest, EscalationKind, RunEvent, ToolAction
from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.state import ChatMessage, HumanWait, RunState, RunStatus
from tether.uncertainty import ASK_HUMAN

_PLANNING = (RunStatus.queued, RunStatus.running)


def question_waits(actions: list[ToolAction], wait_id: Callable[[str], str]) -> list[HumanWait]:
    """A model_uncertain wait for each ask_human call; the human's answer is its result."""
    waits = []
    for action in actions:
        if action.tool != ASK_HUMAN:
            continue
        question = str(action.arguments.get("question", ""))
        context = str(action.arguments.get("context", "")) or None
        waits.append(
            HumanWait(
                escalation_id=wait_id(action.action_id),
                kind=EscalationKind.model_uncertain,
                reason=f"the model asks: {question}",
                action=action,
                question=question,
                context=context,
            )
        )
    return waits


def low_confidence_wait(
    escalation_id: str, draft: str, confidence: float | None, floor: float
) -> HumanWait:
    stated = "no readable confidence" if confidence is None else f"confidence {confidence:g}"
    return HumanWait(
        escalation_id=escalation_id,
        kind=EscalationKind.model_uncertain,
        reason=f"the model's final answer has {stated}, below the agent's floor {floor:g}: "
        "approve to accept the draft, answer to guide the model, or reject to end the run",
        question="Is this draft answer right?",
        draft=draft,
    )


def budget_wait(
    rt: Runtime, agent: Agent, run_id: str, limit: str | None, reason: str, escalation_id: str
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
        escalation_id=escalation_id,
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
) -> RunState | None:
    """Commit the step as waiting for ``wait`` and publish it; None if the commit lost."""
    step = read.step

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal or state.status not in _PLANNING:
            return None
        return state.model_copy(
            update={
                "step": step + 1,
                "messages": [*state.messages, *(append or [])],
                "awaiting_human": [wait],
                "status": RunStatus.waiting_human,
            }
        )

    event = RunEvent(
        run_id=read.run_id,
        kind="decision",
        step=step,
        data={
            "decision": decision,
            "awaiting_human": [wait.escalation_id],
            "reason": wait.reason,
            **json.loads(json.dumps(data, default=str)),
        },
    )
    committed = rt.store.update(read.run_id, commit, log=lambda _: [event])
    if committed is not None:
        redispatch(rt, committed)
    return committed
