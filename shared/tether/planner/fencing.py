"""Fencing on the step number: what a planning step does once its commit won or lost.

Only one delivery of a step commits (the commit checks the step it read). The
winner publishes what its state waits for; a loser finishes the winner's job
in case the winner died before publishing (publishing again is harmless, the
state is the outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.store.state import RunState, RunStatus


def escalation_id(*parts: object) -> str:
    return "esc_" + "_".join(str(p).replace(":", "_") for p in parts)


def step_commit(
    step: int,
    changes: Callable[[RunState], dict[str, Any]],
    *,
    only_from: Collection[RunStatus] | None = None,
) -> Callable[[RunState], RunState | None]:
    """Step ``step``'s commit for ``RunStore.update``: the run one step on, with ``changes``.

    It writes nothing (None) where the run has moved past ``step`` (another delivery
    committed it), has ended, or, with ``only_from``, is in none of those statuses.
    """

    def commit(state: RunState) -> RunState | None:
        if state.step != step or state.terminal:
            return None
        if only_from is not None and state.status not in only_from:
            return None
        return state.model_copy(update={"step": step + 1, **changes(state)})

    return commit


def recover(rt: Runtime, state: RunState, step: int) -> None:
    """Publish again what ``state`` waits for where it is step ``step``'s commit."""
    if state.step == step + 1:
        redispatch(rt, state)


def published(rt: Runtime, run_id: str, step: int, committed: RunState | None) -> bool:
    """Publish what step ``step``'s commit waits for; True if this call's commit won.

    ``committed`` None: someone committed this step first (maybe this worker, its
    reply lost), so its job is finished from the state it left.
    """
    if committed is None:
        recover(rt, rt.store.load(run_id), step)
        return False
    redispatch(rt, committed)
    return True
