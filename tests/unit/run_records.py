"""Runs written straight to the store with known facts, for tests of what reads them back."""

from __future__ import annotations

from datetime import datetime, timedelta

from tether.store import rollups
from tether.store.runs import RunStore, run_id_for
from tether.store.state import HumanWait, RunError, RunState, RunStatus
from tether.transport.wire import ErrorCategory, EscalationKind, Observation, TaskEvent


def make_run(
    store: RunStore,
    name: str,
    *,
    created: datetime,
    status: RunStatus = RunStatus.succeeded,
    steps: int = 2,
    tool_calls: int = 0,
    cost_usd: float = 0.0,
    latency_s: float | None = None,
    error: ErrorCategory | None = None,
    waiting: bool = False,
    agent: str = "calc",
    version: str = "v1",
    waited_s: float = 0.0,
) -> str:
    """A run as the planner leaves it: created at ``created``, then committed as given;
    a run in a terminal status is ended with the rollup writes of the planner's end
    commit (tether.planner.lifecycle.finish), its cost spent before. ``waited_s``: how
    long it waited for a human earlier in its life."""
    event = TaskEvent(event_id=name, agent=agent, input=f"task {name}")
    run_id = run_id_for(name)
    store.create(
        event,
        RunState(
            run_id=run_id,
            event_id=name,
            agent=agent,
            agent_version=version,
            goal=event.input,
            created_at=created,
        ),
    )
    observations = [
        Observation(
            action_id=f"{run_id}:{i}",
            run_id=run_id,
            step=i,
            tool="add",
            tool_call_id=str(i),
            ok=True,
        )
        for i in range(tool_calls)
    ]
    update: dict[str, object] = {
        "status": status,
        "step": steps,
        "completed_actions": observations,
        "error": RunError(category=error, message="it broke") if error else None,
        "awaiting_human": [
            HumanWait(escalation_id=f"esc_{name}", kind=EscalationKind.model_uncertain, reason="?")
        ]
        if waiting
        else [],
        "human_wait_s": waited_s,
    }
    if cost_usd:
        store.budgets.reserve(run_id, "model:0", tokens=100, cost_usd=cost_usd)
    if status.terminal:
        update["finished_at"] = created + timedelta(seconds=latency_s or 0.0)
    store.update(
        run_id,
        lambda s: s.model_copy(update=update),
        side_writes=lambda ended: (
            rollups.ending_writes(
                ended, rollups.spent(store.batch, run_id), escalated=waited_s > 0
            )
            if ended.terminal
            else []
        ),
    )
    return run_id
