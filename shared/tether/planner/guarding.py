"""Guardrails in the planner (tether.guardrails): the task's input, the arguments of the
model's tool calls and its final answer, and what a block or an escalation does to the run.

The model's answer is screened as it arrives (model_call), before the step logs
it, so a rewrite (a redaction) replaces the original in the log, the run's
messages, the tool call and the result alike. Findings are counted by the step
whose commit won (tether.planner.step); the input's, by the commit creating the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import Field

from tether.agent.definition import Agent
from tether.agent.output import InvalidAnswer, read_answer
from tether.errors import InvalidToolCallError
from tether.guardrails.charge import BudgetCharge, OpeningCharge
from tether.guardrails.runner import STOPS, Screened, screen
from tether.guardrails.verdict import GuardContext, GuardrailFinding, GuardrailOutcome
from tether.models.base import ModelResponse
from tether.planner import asking
from tether.planner.fencing import escalation_id
from tether.planner.lifecycle import finish
from tether.runtime import Runtime
from tether.store.budgets import BudgetUsage
from tether.store.state import ChatMessage, HumanWait, RunError, RunState, RunStatus, ToolCall
from tether.transport.wire import (
    ErrorCategory,
    EscalationKind,
    EventKind,
    GuardrailPlace,
    Observation,
    ToolAction,
)


class ScreenedAnswer(ModelResponse):
    """A model's answer after the guardrails of its tool calls or its final answer."""

    findings: list[GuardrailFinding] = Field(default_factory=list)


def findings_of(response: ModelResponse) -> list[GuardrailFinding]:
    return response.findings if isinstance(response, ScreenedAnswer) else []


def withheld(finding: GuardrailFinding) -> str:
    """What is kept in place of text a guardrail blocked."""
    return f"[withheld: guardrail {finding.guardrail!r} blocked it: {finding.reason}]"


def screen_input(
    agent: Agent, text: str, run_id: str, *, skip: bool = False
) -> tuple[str, Screened, BudgetUsage]:
    """The input as the run will store it, its guardrails' findings, and what model
    guardrails spent (the run's budget opens with it). ``skip``: a fork's, whose
    messages come from the run it copies, guarded when that run started."""
    if skip:
        return text, Screened(value=text), BudgetUsage()
    charge = OpeningCharge()
    context = GuardContext(run_id, agent.name, GuardrailPlace.input, 0, charge=charge)
    screened = screen(agent.input_guardrails, text, context)
    stop = screened.stop
    stored = withheld(stop) if stop and stop.outcome == GuardrailOutcome.block else screened.value
    return str(stored), screened, charge.spent


def opening_spent(*spent: BudgetUsage | None) -> BudgetUsage | None:
    """What a run's budget opens with: the sum of what was spent before it existed."""
    found = [s for s in spent if s is not None and (s.tokens or s.cost_usd)]
    if not found:
        return None
    return BudgetUsage(tokens=sum(s.tokens for s in found), cost_usd=sum(s.cost_usd for s in found))


def screen_answer(
    rt: Runtime, agent: Agent, state: RunState, response: ModelResponse
) -> ModelResponse:
    """``response`` with its tool calls' arguments or its final answer screened and logged."""
    charge = BudgetCharge(rt.store.budgets, state.run_id)
    findings: list[GuardrailFinding] = []
    calls: list[ToolCall] = []
    for call in response.tool_calls:
        try:
            tool = agent.tool(call.name)
            guards = [*agent.tool_argument_guardrails, *tool.argument_guardrails]
            # Unguarded calls are validated once, by tool_calls, not here too.
            arguments = tool.validate_call(call.arguments) if guards else None
        except InvalidToolCallError:
            calls.append(call)  # refused by tool_calls with the model told why
            continue
        if arguments is None:
            calls.append(call)
            continue
        context = GuardContext(
            state.run_id, agent.name, GuardrailPlace.tool_arguments, state.step,
            tool=tool.name, tool_call_id=call.id, charge=charge,
        )  # fmt: skip
        screened = screen(guards, arguments, context)
        findings += screened.findings
        stop = screened.stop
        if stop is not None and stop.outcome == GuardrailOutcome.block:
            # Blocked arguments are kept nowhere: the run ends (tool_calls.take).
            rewritten = json.dumps({"withheld": withheld(stop)})
        elif screened.value != arguments:
            rewritten = json.dumps(screened.value)
        else:
            rewritten = call.arguments
        calls.append(call.model_copy(update={"arguments": rewritten}))
    content = response.content
    if not response.tool_calls and content and agent.output_guardrails:
        context = GuardContext(
            state.run_id, agent.name, GuardrailPlace.output, state.step, charge=charge
        )
        screened = screen(agent.output_guardrails, content, context)
        findings += screened.findings
        stop = screened.stop
        blocked = stop is not None and stop.outcome == GuardrailOutcome.block
        content = withheld(stop) if blocked and stop else str(screened.value)
    if not findings:
        return response
    for finding in findings:
        rt.store.log.append(
            state.run_id, EventKind.guardrail, state.step, **finding.model_dump(exclude_none=True)
        )
    return ScreenedAnswer(
        **{**response.model_dump(), "content": content, "tool_calls": calls}, findings=findings
    )


def _where(finding: GuardrailFinding) -> str:
    return f"{finding.place}" + (f" of {finding.tool!r}" if finding.tool else "")


def blocked_error(finding: GuardrailFinding) -> RunError:
    return RunError(
        category=ErrorCategory.guardrail_blocked,
        message=f"guardrail {finding.guardrail!r} blocked the {_where(finding)}: {finding.reason}; "
        "the run stopped there and kept its partial result",
    )


def guard_wait(finding: GuardrailFinding, wait_id: str, **asks: object) -> HumanWait:
    return HumanWait.model_validate(
        {
            "escalation_id": wait_id,
            "kind": EscalationKind.guardrail,
            "reason": f"guardrail {finding.guardrail!r} flagged the {_where(finding)}: {finding.reason}; "
            "approve to let it go on, reject to end the run",
            **asks,
        }
    )


def stops(findings: Sequence[GuardrailFinding], place: GuardrailPlace) -> list[GuardrailFinding]:
    return [f for f in findings if f.place == place and f.outcome in STOPS]


def input_stop(rt: Runtime, state: RunState) -> bool:
    """At a run's first step, end it or hold it where its input's guardrails said so;
    True if they did (the step does nothing else)."""
    found = stops(state.input_guardrails, GuardrailPlace.input)
    if not found or state.step != 0 or state.forked_from is not None:
        return False
    stop = found[-1]
    if stop.outcome == GuardrailOutcome.block:
        finish(
            rt,
            state.run_id,
            0,
            RunStatus.rejected,
            blocked_error(stop),
            decision="guardrail_blocked",
        )
        return True
    wait = guard_wait(
        stop,
        escalation_id(state.run_id, 0, "guardrail_input"),
        question="May this task's input go to the model?",
        context=state.goal,
    )
    asking.hold(rt, state, wait, "escalated_guardrail")
    return True


def answer_stop(
    rt: Runtime, agent: Agent, read: RunState, response: ModelResponse, assistant: ChatMessage
) -> bool | None:
    """End or hold the run where the final answer's guardrails said so: True if this
    call's commit won, False if it lost; None: the answer goes on (an escalated answer
    off the agent's schema too: it goes back to the model, as any such answer does)."""
    found = stops(findings_of(response), GuardrailPlace.output)
    if not found:
        return None
    stop = found[-1]
    if stop.outcome == GuardrailOutcome.block:
        ended = finish(
            rt, read.run_id, read.step, RunStatus.rejected, blocked_error(stop),
            append=[assistant], advance=True, decision="guardrail_blocked",
        )  # fmt: skip
        return ended is not None
    draft, draft_output = response.content, None
    schema = agent.answer_schema()
    if schema is not None:
        # Approving the draft makes it the run's result: it must be the answer as a
        # validated one is kept (its text and typed output), never the raw JSON.
        try:
            answer = read_answer(response.content or "", schema, agent.output_type)
        except InvalidAnswer:
            return None
        draft, draft_output = answer.result, answer.output
    wait = guard_wait(
        stop,
        escalation_id(read.run_id, read.step, "guardrail_output"),
        question="May this answer go out?",
        draft=draft,
        draft_output=draft_output,
    )
    return asking.hold(rt, read, wait, "escalated_guardrail", append=[assistant])


def blocked_turn(
    rt: Runtime, read: RunState, findings: Sequence[GuardrailFinding], assistant: ChatMessage
) -> bool | None:
    """End the run where a tool call's arguments were blocked: True if this call's commit
    won, False if it lost; None: no call was blocked."""
    blocked = [f for f in findings if f.outcome == GuardrailOutcome.block]
    if not blocked:
        return None
    ended = finish(
        rt, read.run_id, read.step, RunStatus.rejected, blocked_error(blocked[0]),
        append=[assistant], advance=True, decision="guardrail_blocked",
    )  # fmt: skip
    return ended is not None


def argument_waits(
    findings: Sequence[GuardrailFinding], actions: Sequence[ToolAction]
) -> list[HumanWait]:
    """A guardrail wait for each action whose arguments a guardrail escalated."""
    escalated = {f.tool_call_id: f for f in stops(findings, GuardrailPlace.tool_arguments)}
    return [
        guard_wait(escalated[a.tool_call_id], escalation_id(a.action_id, "guardrail"), action=a)
        for a in actions
        if a.tool_call_id in escalated
    ]


def result_stop(observation: Observation) -> GuardrailFinding | None:
    """The block or escalation a tool result's guardrails ended with; None: it goes on."""
    found = stops(observation.guardrails, GuardrailPlace.tool_result)
    return found[-1] if found and found[-1] is observation.guardrails[-1] else None


def held_result(
    state: RunState, action: ToolAction, observation: Observation, stop: GuardrailFinding
) -> list[HumanWait]:
    """The run's waits with the result that ``stop`` escalated held for a person."""
    wait = guard_wait(
        stop,
        escalation_id(action.action_id, "guardrail_result"),
        action=action,
        result=observation,
        question=f"May the model read this result of {action.tool!r}?",
        context=json.dumps(observation.output, default=str),
    )
    return [*state.awaiting_human, wait]
