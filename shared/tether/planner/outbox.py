"""The outbox: the one place that publishes what a committed run state waits for.

Every message a run needs next (its next step, its pending tool actions, the
escalations it waits on) is derived from committed state and sent from here,
after the commit; sending it again is harmless, because every consumer is
idempotent. That is how lost messages and dead workers are recovered: the
reconciler and redelivered messages call the same function.
"""

from __future__ import annotations

from tether.runtime import Runtime
from tether.state import RunState, RunStatus

_PLANNING = (RunStatus.queued, RunStatus.running)


def redispatch(rt: Runtime, state: RunState, before: RunState | None = None) -> None:
    """Publish what ``state`` waits for; with ``before``, only what was not outstanding then."""
    if state.terminal:
        return
    if state.status in _PLANNING:
        if before is None or before.step != state.step or before.status not in _PLANNING:
            rt.send_step(state.run_id, state.step)
        return
    sent_actions = {a.action_id for a in before.pending_actions} if before else set()
    sent_waits = {w.escalation_id for w in before.awaiting_human} if before else set()
    for action in state.pending_actions:
        if action.action_id not in sent_actions:
            rt.send_action(action)
    for wait in state.awaiting_human:
        if wait.escalation_id not in sent_waits:
            rt.send_escalation(wait.escalation(state.run_id, state.agent))
