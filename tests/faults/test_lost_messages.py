"""A message lost before any worker recorded it: the planner's reconciler re-drives the run."""

from __future__ import annotations

import time

from tests.agents import unplanned_calculator_run
from tests.faults.conftest import STALLED_AFTER_S
from tether.runtime import Runtime
from tether.store.state import RunStatus


def test_a_run_whose_next_message_was_lost_is_redriven_and_finishes(frt: Runtime) -> None:
    event, state = unplanned_calculator_run("evt-lost-start")
    # The run is committed but the message that would plan it never reaches a worker.
    frt.store.create(event, state)
    started = time.monotonic()
    deadline = started + STALLED_AFTER_S + 30
    while time.monotonic() < deadline:
        current = frt.store.load(state.run_id)
        if current.terminal:
            break
        time.sleep(0.3)
    assert current.status == RunStatus.succeeded, current.error
    assert current.result is not None and "5" in current.result
    assert time.monotonic() - started >= STALLED_AFTER_S - 1  # left alone until it stalled
    kinds = [e.kind for _, e in frt.store.log.read(state.run_id)]
    assert kinds.count("run_redriven") == 1
