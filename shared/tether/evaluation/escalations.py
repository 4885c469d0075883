"""Deciding what an evaluation run asks a human, with no human there (scenarios, the
adversarial suite)."""

from __future__ import annotations

from collections.abc import Container

from tether import client
from tether.errors import TetherError
from tether.runtime import Runtime
from tether.store.state import HumanWait, RunState
from tether.transport.wire import Verdict


def decide_waiting(
    rt: Runtime,
    state: RunState,
    verdict: Verdict,
    *,
    by: str,
    reason: str,
    decided: Container[str],
) -> list[HumanWait]:
    """Decide each escalation ``state`` waits on that is not in ``decided``; returns the
    waits it decided. One the escalation service has not recorded yet is left for the
    caller's next look."""
    done: list[HumanWait] = []
    for wait in state.awaiting_human:
        if wait.escalation_id in decided:
            continue
        try:
            client.decide(wait.escalation_id, verdict, by=by, reason=reason, runtime=rt)
        except TetherError:
            continue
        done.append(wait)
    return done
