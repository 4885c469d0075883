"""The executor runs only what the run's committed state holds pending, whoever published it."""

from __future__ import annotations

from tests.agents import read_ledger
from tests.integration.helpers import wait_for, wait_status
from tether import client
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.transport.wire import ToolAction
from tether.worker import deadletters


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
        return any(e.kind == "forged_message_refused" for _, e in rt.store.log.read(run_id))

    wait_for(refused, timeout_s=20)
    (event,) = [e for _, e in rt.store.log.read(run_id) if e.kind == "forged_message_refused"]
    # Not pending in the run's committed state: refused before its tool is even looked up.
    assert event.data["queue"] == "tether.tools.execute"
    assert event.data["reason"] == "not_pending"
    assert forged.action_id in str(event.data["detail"])
    assert "'record_payment'" in str(event.data["detail"])
    (letter,) = [d for d in deadletters.list_dead(rt, 500) if d.id == event.data["dead_letter"]]
    assert letter.kwargs == {"action": forged.model_dump(mode="json")}

    # The run goes on with what its model decided, and its model never hears of it.
    state = client.wait(run_id, timeout_s=30, runtime=rt)
    assert state.status == "succeeded"
    assert not any("record_payment" in (m.content or "") for m in state.messages)
    assert all(a.action_id != forged.action_id for a in state.completed_actions)
    assert not any("attacker" in line for line in read_ledger())
