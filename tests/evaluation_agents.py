"""Agents for the shadow-running and earned-autonomy tests, on the scripted model.

Every real side effect writes a line to the ledger (tests.agents.read_ledger),
so a side effect that should not have happened shows up as a line.
"""

from __future__ import annotations

from tests.agents import ledger_path
from tether import Agent, ScriptedModel, ToolContext, tool
from tether.models import ModelResponse, text, tool_call
from tether.rollout.autonomy import EarnedAutonomy
from tether.store.state import ChatMessage


def _write(line: str) -> None:
    with ledger_path().open("a") as ledger:
        ledger.write(line + "\n")


@tool(safe_in_shadow=True)
def lookup_order(order_id: str) -> str:
    """Look an order up (a read: a shadow may run it for real)."""
    return f"order {order_id}: shipped"


def _refund_dry_run(ctx: ToolContext, order_id: str, cents: int) -> str:
    return f"would refund {cents} on {order_id}"


@tool(idempotent=False, requires_approval=True, dry_run=_refund_dry_run)
def issue_refund(ctx: ToolContext, order_id: str, cents: int) -> str:
    """Refund an order: a side effect that needs approval."""
    _write(f"{ctx.run_id} refund {order_id} {cents}")
    return f"refunded {cents} on {order_id}"


@tool(idempotent=False)
def send_email(ctx: ToolContext, to: str) -> str:
    """Send an email: a side effect with no dry run, so a shadow never runs it."""
    _write(f"{ctx.run_id} email {to}")
    return f"sent to {to}"


shadow_primary = Agent(
    name="shadow_primary",
    instructions="Answer order questions.",
    model=ScriptedModel(
        [tool_call("lookup_order", {"order_id": "1001"}), text("order 1001 has shipped")],
        label="shadow_primary",
    ),
    tools=[lookup_order, issue_refund, send_email],
)

shadow_candidate = Agent(
    name="shadow_candidate",
    instructions="Answer order questions; refund late orders.",
    model=ScriptedModel(
        [
            tool_call("lookup_order", {"order_id": "1001"}),
            tool_call("issue_refund", {"order_id": "1001", "cents": 500}),
            tool_call("send_email", {"to": "customer@example.com"}),
            text("order 1001 refunded"),
        ],
        label="shadow_candidate",
    ),
    tools=[lookup_order, issue_refund, send_email],
    shadow_of="shadow_primary",
)


@tool(idempotent=False, requires_approval=True)
def pay(ctx: ToolContext, account: str, cents: int) -> str:
    """Pay an account; refuses a negative amount."""
    if cents < 0:
        raise ValueError(f"cannot pay {cents} cents")
    _write(f"{ctx.run_id} pay {account} {cents}")
    return f"paid {cents} to {account}"


def _pay_what_is_asked(messages: list[ChatMessage]) -> ModelResponse:
    if any(m.role == "tool" for m in messages):
        return text("payment handled")
    asked = next(m.content for m in messages if m.role == "user")
    return tool_call("pay", {"account": "acme", "cents": int(asked or "0")})


earning_payer = Agent(
    name="earning_payer",
    instructions="Pay the amount in cents the user names.",
    model=ScriptedModel(_pay_what_is_asked, label="earning_payer"),
    tools=[pay],
    # No sampling, so the end-to-end test knows which calls ask; sampling has unit tests.
    autonomy=EarnedAutonomy(after=2, sample=0.0),
)

sampling_payer = Agent(
    name="sampling_payer",
    instructions="Pay the amount in cents the user names.",
    model=ScriptedModel(_pay_what_is_asked, label="sampling_payer"),
    tools=[pay],
    autonomy=EarnedAutonomy(after=3, sample=0.25),
)
