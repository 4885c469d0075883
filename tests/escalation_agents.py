"""Agents that ask a human (issue 13): a question, a low-confidence answer, a budget."""

from __future__ import annotations

import json
import re

from tests.agents import add, record_payment
from tether import Agent, BudgetLimits, ScriptedModel
from tether.models import ModelResponse, text, tool_call
from tether.store.state import ChatMessage
from tether.transport.wire import BudgetEscalation, EscalationKind


def _asker_script(messages: list[ChatMessage]) -> ModelResponse:
    """Ask which account is meant; then answer with what the human said."""
    for m in messages:
        if m.role == "tool" and m.content and '"answer"' in m.content:
            return text(f"Refunding account {json.loads(m.content)['answer']}")
    return tool_call(
        "ask_human",
        {"question": "Which account should I refund?", "context": "two accounts match"},
    )


asker = Agent(
    name="asker",
    instructions="Refund the customer's account; ask a human when unsure which.",
    model=ScriptedModel(_asker_script, label="asker"),
    ask_human=True,
)


def _confident_script(messages: list[ChatMessage]) -> ModelResponse:
    """Unsure at first; sure once a human has said something."""
    if any(m.role == "user" and "answered" in (m.content or "") for m in messages):
        return text('```json\n{"answer": "42", "confidence": 0.95}\n```')
    return text('{"answer": "maybe 41", "confidence": 0.3}')


confident = Agent(
    name="confident",
    instructions="Answer the question.",
    model=ScriptedModel(_confident_script, label="confident"),
    confidence_floor=0.6,
)


def _adder_script(messages: list[ChatMessage]) -> ModelResponse:
    """Call add as many times as the goal's number says, then answer."""
    goal = next(m.content or "" for m in messages if m.role == "user")
    wanted = int(re.search(r"\d+", goal).group()) if re.search(r"\d+", goal) else 1
    done = sum(1 for m in messages if m.role == "tool")
    if done < wanted:
        return tool_call("add", {"a": done, "b": 1})
    return text(f"added {done} times")


budgeted = Agent(
    name="budgeted",
    instructions="Add as many times as asked.",
    model=ScriptedModel(_adder_script, label="budgeted"),
    tools=[add],
    budget=BudgetLimits(max_steps=2, max_tool_calls=20, max_wall_s=600),
    escalate_on_budget=BudgetEscalation(ceiling=BudgetLimits(max_steps=5)),
)


# Its approvals expire after 2 s (other kinds take the default): the reconciler then
# ends the run rejected, escalation_expired (issue 22, invariant 8).
impatient = Agent(
    name="impatient",
    instructions="Pay what the user asks, with approval, if someone approves in time.",
    model=ScriptedModel(
        [
            tool_call("record_payment", {"account": "acme", "cents": 900}),
            text("paid acme 900 cents"),
        ],
        label="impatient",
    ),
    tools=[record_payment],
    escalation_expiry_s={EscalationKind.approval_required: 2.0},
)
