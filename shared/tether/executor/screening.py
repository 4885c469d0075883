"""A tool's result through its guardrails (tether.guardrails), before it is stored.

Run here rather than in the planner so that a rewritten (redacted) result is all
that Redis, the event log and the model ever hold. A block or an escalation is
carried in the stored result (Observation.guardrails), which the planner trusts
(tether.planner.inbox): a blocked result keeps no output at all.
"""

from __future__ import annotations

from typing import Any

from tether.agent.definition import get_agent
from tether.agent.tools import Tool
from tether.guardrails.charge import BudgetCharge
from tether.guardrails.runner import screen
from tether.guardrails.verdict import GuardContext, GuardrailOutcome
from tether.runtime import Runtime
from tether.transport.wire import ErrorCategory, GuardrailPlace, ToolAction


def screened_result(rt: Runtime, action: ToolAction, tool: Tool, output: Any) -> dict[str, Any]:
    """What outcomes.report records of a successful call's ``output``."""
    guards = [*get_agent(action.agent).tool_result_guardrails, *tool.result_guardrails]
    if not guards:
        return {"ok": True, "output": output}
    context = GuardContext(
        action.run_id,
        action.agent,
        GuardrailPlace.tool_result,
        action.step,
        tool=tool.name,
        tool_call_id=action.tool_call_id,
        charge=BudgetCharge(rt.store.budgets, action.run_id),
    )
    screened = screen(guards, output, context)
    stop = screened.stop
    if stop is not None and stop.outcome == GuardrailOutcome.block:
        return {
            "ok": False,
            "category": ErrorCategory.guardrail_blocked,
            "error": f"guardrail {stop.guardrail!r} blocked the result of {tool.name!r}: "
            f"{stop.reason}",
            "guardrails": screened.findings,
        }
    return {"ok": True, "output": screened.value, "guardrails": screened.findings}
