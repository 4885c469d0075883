"""Small waits shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from tether.runtime import Runtime
from tether.store.state import EscalationRecord, RunState


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def wait_status(rt: Runtime, run_id: str, status: str, timeout_s: float = 20.0) -> RunState:
    def reached() -> bool:
        state = rt.store.get(run_id)
        return state is not None and state.status == status

    try:
        wait_for(reached, timeout_s, f"{run_id} to be {status}")
    except AssertionError:
        state = rt.store.get(run_id)
        raise AssertionError(
            f"{run_id} is {state.status if state else 'missing'}, not {status}: "
            f"{state.error if state else ''}; trace: {[e.kind for _, e in rt.store.log.read(run_id)]}"
        ) from None
    return rt.store.load(run_id)


def pending_escalation(rt: Runtime, run_id: str, timeout_s: float = 20.0) -> EscalationRecord:
    from tether.escalation import records

    found: list[EscalationRecord] = []

    def opened() -> bool:
        found[:] = [r for r in records.list_escalations(rt) if r.escalation.run_id == run_id]
        return bool(found)

    wait_for(opened, timeout_s, f"an escalation for {run_id}")
    return found[0]


def kinds(rt: Runtime, run_id: str) -> list[str]:
    return [event.kind for _, event in rt.store.log.read(run_id)]
