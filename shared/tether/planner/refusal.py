"""A model turn that cannot run goes back to the model; past the limit, a human is asked.

Nothing of such a turn runs: its tool calls were malformed, unknown or denied by
a policy, or it had neither a call nor an answer. The model gets each problem
and tries again, within budget, up to the agent's ``max_invalid_calls``. A final
answer that fails the agent's schema (tether.agent.output) counts the same way, and
past the limit fails the run with the validation error: no human can fix a schema.
"""

from __future__ import annotations

from tether.agent.definition import Agent
from tether.observability import metrics
from tether.planner.fencing import escalation_id, published, step_commit
from tether.planner.lifecycle import finish
from tether.runtime import Runtime
from tether.store.state import ChatMessage, HumanWait, RunError, RunState, RunStatus
from tether.transport.wire import ErrorCategory, EscalationKind, EventKind, RunEvent


def feed_back(
    rt: Runtime,
    agent: Agent,
    read: RunState,
    append: list[ChatMessage],
    invalid: dict[str, str],
    denied: dict[str, str],
) -> bool:
    """Give an unusable or refused turn back to the model; past the limit, ask a human.

    ``invalid`` and ``denied`` map each offending tool call id ("" for no call) to why.
    True if this call's commit won.
    """
    step = read.step
    problem = "; ".join([*invalid.values(), *denied.values()])
    repeated = read.invalid_calls + 1 > agent.max_invalid_calls
    waits = [_repeated_failure_wait(read, problem)] if repeated else []

    commit = step_commit(
        step,
        lambda state: {
            "messages": [*state.messages, *append],
            "invalid_calls": state.invalid_calls + 1,
            "awaiting_human": waits,
            "status": RunStatus.waiting_human if waits else RunStatus.running,
        },
    )

    refusals = _refusals(invalid, denied)
    decision = "escalated_repeated_failure" if repeated else "fed_back"
    described = _described(read, refusals, decision, problem)
    committed = rt.store.update(read.run_id, commit, log=lambda _: described)
    if committed is not None:
        # Counted before publishing: a publish that fails is retried by a delivery that
        # loses the commit and counts nothing (invariant 6).
        for *_, category in refusals:
            metrics.ERRORS.labels(agent.name, category, "step").inc()
    return published(rt, read.run_id, step, committed)


def refuse_answer(
    rt: Runtime, agent: Agent, read: RunState, assistant: ChatMessage, problem: str
) -> bool:
    """Give a final answer that failed its schema back to the model, with ``problem``;
    past ``max_invalid_calls`` unusable turns in a row the run fails with it. True if this
    call's commit won."""
    if read.invalid_calls + 1 <= agent.max_invalid_calls:
        retry = ChatMessage(
            role="user",
            content=f"Your final answer was not accepted: {problem}. Reply again with only "
            "a JSON object in the schema you were given, or call a tool if you need to.",
        )
        return feed_back(rt, agent, read, [assistant, retry], {"": problem}, {})
    error = RunError(
        category=ErrorCategory.model_invalid_output,
        message=f"the model answered unusably {read.invalid_calls + 1} times in a row "
        f"(agent {agent.name!r}, max_invalid_calls {agent.max_invalid_calls}); last: {problem}; "
        "use a model that follows response_format json_schema, say more about the fields "
        "in the agent's instructions or the output type's descriptions, or raise "
        "max_invalid_calls",
    )
    refusals = _refusals({"": problem}, {})
    ended = finish(
        rt,
        read.run_id,
        read.step,
        RunStatus.failed,
        error,
        append=[assistant],
        advance=True,
        also_log=lambda _: _described(read, refusals, "answer_invalid", problem),
    )
    if ended is not None:
        metrics.ERRORS.labels(agent.name, ErrorCategory.model_invalid_output, "step").inc()
    return ended is not None


def _refusals(
    invalid: dict[str, str], denied: dict[str, str]
) -> list[tuple[str, str, EventKind, ErrorCategory]]:
    """Each refused call: its id, why, its log entry's kind and its error category."""
    return [
        (call_id, error, kind, category)
        for reasons, kind, category in (
            (invalid, EventKind.tool_call_invalid, ErrorCategory.model_invalid_output),
            (denied, EventKind.tool_call_denied, ErrorCategory.policy_denied),
        )
        for call_id, error in reasons.items()
    ]


def _described(
    read: RunState,
    refusals: list[tuple[str, str, EventKind, ErrorCategory]],
    decision: str,
    problem: str,
) -> list[RunEvent]:
    return [
        *(
            RunEvent(
                run_id=read.run_id,
                kind=kind,
                step=read.step,
                data={"tool_call_id": call_id, "error": error, "error_category": category},
            )
            for call_id, error, kind, category in refusals
        ),
        RunEvent(
            run_id=read.run_id,
            kind=EventKind.decision,
            step=read.step,
            data={"decision": decision, "problem": problem},
        ),
    ]


def _repeated_failure_wait(read: RunState, problem: str) -> HumanWait:
    return HumanWait(
        escalation_id=escalation_id(read.run_id, read.step, "repeated_failure"),
        kind=EscalationKind.repeated_failure,
        reason=f"the model answered unusably {read.invalid_calls + 1} times in a row "
        f"(last: {problem}); approve to let it try again, answer to guide it, "
        "or reject to end the run",
    )
