"""A candidate version of the support desk, run in shadow of it (tether.rollout.shadow).

Workers that load this module (``make eval`` does; ``make demo`` does not) give
``support_desk_v2`` a copy of every support_desk event. Its instructions add a
returns policy: refund only damaged or wrong goods, and explain the policy
otherwise. Without a model endpoint its scripted model plays that policy. As a
shadow it can never cause a side effect: its lookups run for real (declared
``safe_in_shadow``) and issue_refund only dry-runs (tools.py).
"""

from __future__ import annotations

import re

from examples.support_desk.agent import support_desk
from examples.support_desk.script import support_desk_script
from tether import Agent, ScriptedModel
from tether.models import ModelClient, ModelResponse, text
from tether.store.state import ChatMessage

DAMAGED = re.compile(r"\b(torn|broken|damaged|defective|wrong item|leaks?)\b", re.IGNORECASE)


def support_desk_v2_script(messages: list[ChatMessage]) -> ModelResponse:
    """The support desk's script, except that it declines refunds for goods that are not faulty."""
    goal = next(m.content or "" for m in messages if m.role == "user")
    order = re.search(r"\d{4,}", goal)
    if "refund" in goal.lower() and order and not DAMAGED.search(goal):
        return text(
            f"Order {order.group(0)} can only be refunded if it arrived damaged or wrong; "
            "our returns policy covers unused items within 30 days, so I have not refunded it."
        )
    return support_desk_script(messages)


def _model() -> ModelClient:
    # A real endpoint, when configured, serves the candidate's instructions as they are.
    if isinstance(support_desk.model, ScriptedModel):
        return ScriptedModel(support_desk_v2_script, label="support_desk_v2")
    return support_desk.model


support_desk_v2 = Agent(
    name="support_desk_v2",
    instructions=support_desk.instructions
    + " Refund only goods that arrived damaged or wrong; for anything else explain the "
    "returns policy (unused items within 30 days) and do not call issue_refund.",
    model=_model(),
    tools=support_desk.tools,
    budget=support_desk.budget,
    shadow_of="support_desk",
)
