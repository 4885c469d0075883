"""A candidate whose tool is both a declared-safe read and approval-required.

``export_customers`` is idempotent and ``safe_in_shadow``, yet needs approval:
the approval is what makes it a side effect worth a human's look (it sends data
out), so a shadow must never run it for real. A real run writes a ledger line.
"""

from __future__ import annotations

from tests.agents import ledger_path
from tether import Agent, ScriptedModel, ToolContext, tool
from tether.models import text, tool_call


@tool(requires_approval=True, safe_in_shadow=True)
def export_customers(ctx: ToolContext, segment: str) -> str:
    """Export a customer segment to the analytics vendor (needs approval)."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} export {segment}\n")
    return f"exported {segment}"


approval_primary = Agent(
    name="approval_primary",
    instructions="Answer questions about customers.",
    model=ScriptedModel([text("no export needed")], label="approval_primary"),
    tools=[export_customers],
)

approval_candidate = Agent(
    name="approval_candidate",
    instructions="Answer questions about customers; export segments when asked.",
    model=ScriptedModel(
        [tool_call("export_customers", {"segment": "churned"}), text("segment exported")],
        label="approval_candidate",
    ),
    tools=[export_customers],
    shadow_of="approval_primary",
)
