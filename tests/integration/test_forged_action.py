"""The executor enforces each agent's tool allowlist, whoever published the action."""

from __future__ import annotations

from tests.agents import read_ledger
from tests.integration.helpers import wait_for, wait_status
from tether import client
from tether.devstack import DevStack
from tether.messages import ToolAction
from tether.runtime import Runtime


def test_a_forged_action_for_an_undeclared_tool_is_refused_and_recorded(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    rt = stack_runtime
    # The sleeper declares only slow_lookup; while its run waits on it, someone
    # with access to the queue publishes a payment in its name.
    run_id = client.submit("sleeper", "wait for it", runtime=rt)
    wait_status(rt, run_id, "waiting_tools")
    forged = ToolAction(
        action_id=f"{run_id}:forged",
        run_id=run_id,
        agent="sleeper",
        step=rt.store.load(run_id).step,
        tool="record_payment",
        tool_call_id="call-forged",
        arguments={"account": "attacker", "cents": 100_000},
        idempotent=False,
    )
    rt.send_action(forged)

    def refused() -> bool:
        return any(e.kind == "forged_action_refused" for _, e in rt.store.trace(run_id))

    wait_for(refused, timeout_s=20)
    (event,) = [e for _, e in rt.store.trace(run_id) if e.kind == "forged_action_refused"]
    assert event.data["tool"] == "record_payment"
    assert event.data["action_id"] == forged.action_id
    assert any(
        "forged action refused" in r["reason"] and forged.action_id in r["reason"]
        for r in rt.store.rejected(200)
    )

    # The run goes on with what its model decided, and its model never hears of it.
    state = client.wait(run_id, timeout_s=30, runtime=rt)
    assert state.status == "succeeded"
    assert not any("record_payment" in (m.content or "") for m in state.messages)
    assert all(a.action_id != forged.action_id for a in state.completed_actions)
    assert not any("attacker" in line for line in read_ledger())
