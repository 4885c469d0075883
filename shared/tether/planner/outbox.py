"""Publishing what a committed run state says is outstanding; safe to repeat."""

from __future__ import annotations

from tether.runtime import Runtime
from tether.state import RunState, RunStatus


def redispatch(rt: Runtime, state: RunState) -> None:
    if state.terminal:
        return
    if state.status in (RunStatus.queued, RunStatus.running):
        rt.send_step(state.run_id, state.step)
        return
    for action in state.pending_actions:
        rt.send_action(action)
    for wait in state.awaiting_human:
        rt.send_escalation(wait.escalation(state.run_id, state.agent))
