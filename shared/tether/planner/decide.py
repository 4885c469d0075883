"""What a model's validated answer means for the run, committed once per step.

A final answer ends the run (after a human's look, where its stated confidence
is below the agent's floor) once it matches the agent's schema, where it has one
(tether.agent.output; else it goes back to the model); tool calls go out as actions
(tether.planner.tool_calls); a reply with neither goes back to the model
(tether.planner.refusal).
"""

from __future__ import annotations

from tether.agent.definition import Agent
from tether.agent.output import FinalAnswer, InvalidAnswer, read_answer
from tether.models.base import ModelResponse
from tether.planner import asking, guarding, tool_calls
from tether.planner.fencing import escalation_id
from tether.planner.lifecycle import finish
from tether.planner.refusal import feed_back, refuse_answer
from tether.runtime import Runtime
from tether.store.state import ChatMessage, RunState, RunStatus


def decide(rt: Runtime, agent: Agent, read: RunState, response: ModelResponse) -> bool:
    """Commit what the model's answer means; True if this call's commit won."""
    assistant = ChatMessage(
        role="assistant", content=response.content, tool_calls=response.tool_calls or None
    )
    if response.tool_calls:
        return tool_calls.take(rt, agent, read, response, assistant)
    stopped = guarding.answer_stop(rt, agent, read, response, assistant)
    if stopped is not None:
        return stopped
    if response.content:
        return _final_answer(rt, agent, read, response.content, assistant)
    nudge = ChatMessage(
        role="user",
        content="Your reply had neither a tool call nor an answer. Call one of the tools, "
        "or reply with the final answer "
        + ("as text." if agent.answer_schema() is None else "in the schema you were given."),
    )
    return feed_back(rt, agent, read, [assistant, nudge], {"": "empty reply"}, {})


def _final_answer(
    rt: Runtime, agent: Agent, read: RunState, content: str, assistant: ChatMessage
) -> bool:
    schema = agent.answer_schema()
    if schema is None:
        answer = FinalAnswer(result=content, output=None, confidence=None)
    else:
        try:
            answer = read_answer(content, schema, agent.output_type)
        except InvalidAnswer as exc:
            return refuse_answer(rt, agent, read, assistant, exc.problem)
    floor = agent.confidence_floor
    if floor is not None and (answer.confidence is None or answer.confidence < floor):
        # A final answer below the agent's confidence floor asks a human first.
        wait = asking.low_confidence_wait(
            escalation_id(read.run_id, read.step, "low_confidence"),
            answer.result,
            answer.confidence,
            floor,
            draft_output=answer.output,
        )
        return asking.hold(
            rt,
            read,
            wait,
            "escalated_low_confidence",
            append=[assistant],
            confidence=answer.confidence,
        )
    answered = finish(
        rt,
        read.run_id,
        read.step,
        RunStatus.succeeded,
        None,
        result=answer.result,
        output=answer.output,
        append=[assistant],
        advance=True,
        decision="final_answer",
    )
    return answered is not None
