"""What an action did, recorded before the planner hears of it.

A result is stored under the action's id (the first writer wins, so a
redelivered action reports what it did the first time) and logged in the run's
event log. Under the action's lease no other result can come between, so the
write rides along with the next round trip; on the idempotent fast path (no
lease) two deliveries may race, so one script stores the result and its log
entries only if none is stored yet, also riding along with the task's last round
trip: only its winner logs the call and counts metrics, and the planner takes
the stored result, whichever outcome the message carries.
A question for a human is no result, and is recorded where the planner checks a
needs_human observation against it (keys.action_held).
"""

from __future__ import annotations

import time

from tether.observability import metrics
from tether.runtime import Runtime
from tether.store import keys
from tether.store.log import log_appends
from tether.transport.wire import (
    ErrorCategory,
    EscalationKind,
    EventKind,
    GuardrailFinding,
    Observation,
    RunEvent,
    ToolAction,
)


def unknown_outcome(
    rt: Runtime, action: ToolAction, category: ErrorCategory, what: str
) -> Observation:
    """A non-idempotent call may or may not have taken effect: a human decides, not the model."""
    return report(
        rt,
        action,
        ok=False,
        category=category,
        needs_human=EscalationKind.unsafe_retry,
        error=f"{action.tool!r} is not idempotent and {what}, so it may or may not have "
        "taken effect; check the target system, then approve to run it once more, answer "
        "with what happened, or reject to end the run",
    )


def report(
    rt: Runtime,
    action: ToolAction,
    *,
    ok: bool,
    output: object = None,
    error: str | None = None,
    category: ErrorCategory | None = None,
    started: float | None = None,
    attempts: int = 1,
    needs_human: EscalationKind | None = None,
    guardrails: list[GuardrailFinding] | None = None,
    leased: bool = True,
) -> Observation:
    """Record the action's outcome (result, log); the caller sends the observation.

    ``leased``: the caller holds the action's lease (False: the idempotent fast path).
    """
    latency_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    observation = Observation(
        action_id=action.action_id,
        run_id=action.run_id,
        step=action.step,
        tool=action.tool,
        tool_call_id=action.tool_call_id,
        ok=ok,
        output=output,
        error=error,
        error_category=category,
        latency_ms=round(latency_ms, 3),
        attempts=attempts,
        needs_human=needs_human,
        guardrails=guardrails or [],
    )
    # What the event log says of the call: written by the call whose result is stored.
    tool_call: dict[str, object] = {
        "action_id": action.action_id,
        "tool": action.tool,
        "arguments": action.arguments,
        "ok": observation.ok,
        "output": observation.output,
        "error": observation.error,
        "error_category": observation.error_category,
        "latency_ms": observation.latency_ms,
        "attempts": observation.attempts,
        "needs_human": needs_human,
    }
    if needs_human is None:
        # A question for a human is not the action's result: after an approval it runs.
        findings = [finding.model_dump(exclude_none=True) for finding in observation.guardrails]
        if not leased:
            return _first(rt, action, observation, findings, tool_call)
        stored = rt.store.results.save(observation)
        if stored is not observation:
            # Another delivery ran it too and stored first: its outcome is the action's,
            # already counted and logged.
            return stored
        _stored_first(action, observation)
        for finding_data in findings:
            rt.store.log.append(action.run_id, EventKind.guardrail, action.step, **finding_data)
    else:
        # What the planner checks a needs_human observation against (planner.inbox):
        # written before the observation is sent, as a result is.
        held, asked = (
            keys.action_held(action.action_id),
            keys.action_held_value(needs_human, action.rerun_approval),
        )
        if not rt.store.batch.defer("set", held, asked, ex=rt.store.run_ttl_s):
            rt.store.client.set(held, asked, ex=rt.store.run_ttl_s)
    rt.store.log.append(action.run_id, EventKind.tool_call, action.step, **tool_call)
    return observation


def _stored_first(action: ToolAction, observation: Observation) -> None:
    """The metrics of a result that was stored first: once per action."""
    metrics.tool_result_stored(action, observation)
    metrics.guardrail_outcomes(observation.guardrails)


def _first(
    rt: Runtime,
    action: ToolAction,
    observation: Observation,
    findings: list[dict[str, object]],
    tool_call: dict[str, object],
) -> Observation:
    """Store ``observation`` unless a result is stored already, with its log entries;
    what to send the planner.

    No lease keeps another delivery from storing in between, so one script decides
    (first writer wins, and only the winner's entries are logged), sent with the
    task's last round trip, the observation's publish after it. Whether this one won
    is known only then: the loser has published its own outcome, which the planner
    takes as the stored one (planner.inbox reads it), and only the winner counts.
    """
    events = [
        RunEvent(run_id=action.run_id, kind=EventKind.guardrail, step=action.step, data=data)
        for data in findings
    ]
    events.append(
        RunEvent(run_id=action.run_id, kind=EventKind.tool_call, step=action.step, data=tool_call)
    )

    def answered(earlier: Observation | None) -> None:
        if earlier is None:
            _stored_first(action, observation)

    return rt.store.results.first(
        observation, [a for event in events for a in log_appends(event)], answered
    )
