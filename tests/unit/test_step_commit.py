"""fencing.step_commit: the one rule every planning step's commit follows."""

from __future__ import annotations

from tether.planner.fencing import step_commit
from tether.store.state import RunState, RunStatus

_PLANNING = (RunStatus.queued, RunStatus.running)


def _state(step: int, status: RunStatus) -> RunState:
    return RunState(run_id="run_a", event_id="e", agent="a", goal="g", step=step, status=status)


def _to_tools(state: RunState) -> dict[str, object]:
    return {"status": RunStatus.waiting_tools, "invalid_calls": state.invalid_calls + 1}


def test_the_step_it_read_moves_one_on_with_the_changes() -> None:
    moved = step_commit(3, _to_tools)(_state(3, RunStatus.running))
    assert moved is not None
    assert (moved.step, moved.status, moved.invalid_calls) == (4, RunStatus.waiting_tools, 1)


def test_a_run_moved_past_the_step_or_ended_is_left_alone() -> None:
    commit = step_commit(3, _to_tools)
    assert commit(_state(4, RunStatus.running)) is None
    assert commit(_state(2, RunStatus.running)) is None
    assert commit(_state(3, RunStatus.cancelled)) is None


def test_only_from_leaves_a_run_in_another_status_alone() -> None:
    commit = step_commit(3, _to_tools, only_from=_PLANNING)
    assert commit(_state(3, RunStatus.waiting_human)) is None
    assert commit(_state(3, RunStatus.queued)) is not None
