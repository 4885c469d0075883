"""A person's edit of a held tool call, checked as the model's own calls are.

An approval may carry arguments a person edited in place of the model's
(Decision.arguments). They pass the same gates as the model's
(tether.planner.tool_calls): the tool's input schema, then the agent's policies
in the run's state, so an edit cannot raise a spending cap a policy holds, and a
malformed one is refused when it is decided, not when the tool would run. The
escalation service checks an edit before it records the decision
(tether.escalation.edits); the planner checks it again before its commit, against
the state it commits over.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tether.agent.definition import Agent
from tether.errors import DecisionRefusedError, InvalidToolCallError, validation_problems
from tether.store.state import RunState
from tether.transport.wire import ToolAction


def edited_action(
    agent: Agent, action: ToolAction, arguments: dict[str, Any], state: RunState
) -> ToolAction:
    """``action`` with the edited ``arguments`` (validated, as the tool takes them) in
    place of the model's; raises DecisionRefusedError naming what is wrong with them."""
    try:
        tool = agent.tool(action.tool)
    except InvalidToolCallError as exc:
        raise DecisionRefusedError(f"the edited call cannot run: {exc}") from exc
    try:
        validated = tool.input_model.model_validate(arguments)
    except ValidationError as exc:
        raise DecisionRefusedError(
            f"the edited arguments for tool {tool.name!r} do not fit its input schema: "
            f"{validation_problems(exc)}; correct them and decide again"
        ) from exc
    edited = action.model_copy(update={"arguments": validated.model_dump(mode="json")})
    denial = agent.check_policies(edited, state)
    if denial is not None:
        raise DecisionRefusedError(
            f"the edited arguments for tool {tool.name!r} are refused by agent "
            f"{agent.name!r}'s policies ({denial}); change them and decide again"
        )
    return edited
