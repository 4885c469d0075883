"""The outbox: the one place that publishes what a committed run state waits for.

Every message a run needs next (its next step, its pending tool actions, the
escalations it waits on, a decided escalation's resume) is derived from
committed state and sent from here, after the commit, or by the commit itself
(``action_writes``); sending it again is harmless, because every consumer is
idempotent. That is how lost messages and
dead workers are recovered: the reconciler and redelivered messages call the
same function.
"""

from __future__ import annotations

from tether.errors import UnknownEscalationError
from tether.escalation import records
from tether.memory import threads
from tether.runtime import Runtime
from tether.store.state import EscalationRecord, RunState, RunStatus
from tether.store.versioned import SideWrite
from tether.transport import held_publish

_PLANNING = (RunStatus.queued, RunStatus.running)


def redispatch(rt: Runtime, state: RunState, before: RunState | None = None) -> list[str]:
    """Publish what ``state`` waits for; returns what was sent.

    With ``before`` (the state the commit started from) only what was not
    outstanding then goes out. Without it, as when recovering, a wait for a
    human is published only where a message of its is missing: waiting for a
    decision is a run's normal state, however long.
    """
    if state.terminal:
        # An ended run of a thread waits for nothing, but its thread may wait for the
        # next event's run: the terminal commit took the run's event off the queue.
        return threads.hand_over(rt, state.thread_id) if state.thread_id is not None else []
    if state.status in _PLANNING:
        if before is None or before.step != state.step or before.status not in _PLANNING:
            rt.send_step(state.run_id, state.step)
            return [f"step {state.step}"]
        return []
    sent_actions = {a.action_id for a in before.pending_actions} if before else set()
    sent_waits = {w.escalation_id for w in before.awaiting_human} if before else set()
    sent: list[str] = []
    for action in state.pending_actions:
        if action.action_id not in sent_actions:
            rt.send_action(action)
            sent.append(action.action_id)
    for wait in state.awaiting_human:
        if wait.escalation_id in sent_waits:
            continue
        record = _record(rt, wait.escalation_id) if before is None else None
        if record is not None:
            if record.decision is not None:  # decided: its resume may be what went missing
                rt.send_resume(record.escalation, record.decision)
                sent.append(f"resume of {wait.escalation_id}")
            continue  # recorded and pending: it is a human's turn
        rt.send_escalation(wait.escalation(state.run_id, state.agent))
        sent.append(wait.escalation_id)
    return sent


def publishes_in_commit(rt: Runtime) -> bool:
    """Whether a commit can send the actions it leaves pending in its own script
    (``action_writes``): inside a task, where the broker is the run store's Redis."""
    return rt.broker_is_store and rt.store.batch.holding


def action_writes(rt: Runtime, state: RunState) -> list[SideWrite]:
    """The messages of ``state``'s pending actions as side writes of the commit that
    leaves them pending: they go out only if it wins, in its own round trip, so the
    winner publishes with no round trip of its own and a loser publishes nothing."""
    with held_publish.capturing() as captured:
        for action in state.pending_actions:
            rt.send_action(action)
    return captured.side_writes


def _record(rt: Runtime, escalation_id: str) -> EscalationRecord | None:
    try:
        return records.load(rt, escalation_id)[0]
    except UnknownEscalationError:
        return None


def send_deferred(rt: Runtime, state: RunState | None, kind: str, what: str) -> str | None:
    """Publish again a message a rate limit held back (tether.planner.ratelimited): step
    ``what`` or pending action ``what`` of ``state``, only where the committed state still
    waits for it; returns what was sent."""
    if state is None or state.terminal:
        return None
    if kind == "step":
        if state.status in _PLANNING and str(state.step) == what:
            rt.send_step(state.run_id, state.step)
            return f"step {what}"
        return None
    for action in state.pending_actions:
        if action.action_id == what:
            rt.send_action(action)
            return action.action_id
    return None
