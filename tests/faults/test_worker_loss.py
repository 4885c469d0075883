"""Killed workers, a restarted Redis, dead letters: nothing lost, nothing done twice."""

from __future__ import annotations

import os
import signal
import time

from tests.agents import read_ledger
from tests.integration.helpers import kinds, pending_escalation, wait_for, wait_status
from tether import client
from tether.dev.stack import DevStack
from tether.escalation import records
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.transport import celery_app
from tether.transport.reliable import DELIVERIES_HEADER
from tether.transport.wire import TaskEvent, Verdict
from tether.worker import deadletters


def kill_and_restart(stack: DevStack, service: str) -> None:
    """What a machine dying looks like to one service: SIGKILL, then a fresh worker."""
    os.killpg(stack.workers[service].pid, signal.SIGKILL)
    stack.workers[service].wait()
    stack.start_worker(service)
    stack.wait_ready([service], 60)


def lines(run_id: str) -> list[str]:
    return [line for line in read_ledger() if line.startswith(run_id)]


def test_killed_executor_mid_call_escalates_instead_of_charging_twice(
    frt: Runtime, fault_stack: DevStack
) -> None:
    run_id = client.submit("charger", "charge 7 dollars", runtime=frt)
    wait_for(lambda: len(lines(run_id)) == 1, timeout_s=20, what="the charge to start")
    kill_and_restart(fault_stack, "executor")

    record = pending_escalation(frt, run_id, timeout_s=40)
    assert record.escalation.kind == "unsafe_retry"
    assert "died mid-call" in record.escalation.reason
    assert lines(run_id) == [f"{run_id} charge 700"]

    client.decide(
        record.escalation.escalation_id,
        Verdict.answer,
        by="ops",
        answer="the card was charged once; do not charge again",
        runtime=frt,
    )
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)
    assert "charged once" in (state.result or "")
    assert lines(run_id) == [f"{run_id} charge 700"]


def test_killed_planner_mid_step_loses_nothing(frt: Runtime, fault_stack: DevStack) -> None:
    run_ids = [client.submit("slow_thinker", f"think {i}", runtime=frt) for i in range(2)]
    wait_for(lambda: all(frt.store.get(r) is not None for r in run_ids), what="the runs to start")
    time.sleep(0.5)
    kill_and_restart(fault_stack, "planner")

    for run_id in run_ids:
        state = wait_status(frt, run_id, "succeeded", timeout_s=60)
        assert state.result == "done thinking"
        notes = lines(run_id)
        assert len(notes) == 1, notes
        assert kinds(frt, run_id).count("run_finished") == 1


def test_redis_restart_mid_run_loses_nothing(frt: Runtime, fault_stack: DevStack) -> None:
    assert fault_stack.redis is not None
    run_ids = [client.submit("slow_thinker", f"ponder {i}", runtime=frt) for i in range(3)]
    time.sleep(1.0)
    fault_stack.redis.stop()
    time.sleep(1.0)
    fault_stack.redis.start()

    for run_id in run_ids:
        state = wait_status(frt, run_id, "succeeded", timeout_s=90)
        assert state.result == "done thinking"
        assert len(lines(run_id)) == 1


def test_failed_message_becomes_a_dead_letter_and_replays(frt: Runtime) -> None:
    run_id = run_id_for("evt-early-step")
    frt.send_step(run_id, 0)  # a step for a run that does not exist (yet)
    wait_for(
        lambda: any(d.run_id == run_id for d in deadletters.list_dead(frt)),
        timeout_s=20,
        what="the dead letter",
    )
    (letter,) = [d for d in deadletters.list_dead(frt) if d.run_id == run_id]
    assert letter.task == "tether.plan.step"
    assert "UnknownRunError" in letter.reason
    assert letter.category == "internal"

    client.submit("calculator", "What is 2 + 3?", event_id="evt-early-step", runtime=frt)
    wait_status(frt, run_id, "succeeded")
    assert deadletters.replay(frt, letter.id) is not None
    wait_for(lambda: "dead_letter_replayed" in kinds(frt, run_id), what="the replay")
    wait_for(lambda: "duplicate_step" in kinds(frt, run_id), what="the replayed step")
    assert deadletters.get(frt, letter.id) is None
    assert kinds(frt, run_id).count("run_finished") == 1


def test_an_approved_rerun_is_single_use_even_when_its_worker_dies(
    frt: Runtime, fault_stack: DevStack
) -> None:
    run_id = client.submit("charger", "charge 7 dollars", runtime=frt)
    wait_for(lambda: len(lines(run_id)) == 1, timeout_s=20, what="the charge to start")
    kill_and_restart(fault_stack, "executor")
    first = pending_escalation(frt, run_id, timeout_s=40)
    assert first.escalation.kind == "unsafe_retry"

    client.decide(first.escalation.escalation_id, Verdict.approve, by="ops", runtime=frt)
    wait_for(lambda: len(lines(run_id)) == 2, timeout_s=20, what="the approved re-run to start")
    kill_and_restart(fault_stack, "executor")

    # The dead re-run used its approval: a new question, never a third charge.
    def second_question() -> bool:
        pending = [
            r
            for r in records.list_escalations(frt)
            if r.escalation.run_id == run_id
            and r.escalation.escalation_id != first.escalation.escalation_id
        ]
        return bool(pending)

    wait_for(second_question, timeout_s=40, what="a second unsafe_retry escalation")
    (second,) = [r for r in records.list_escalations(frt) if r.escalation.run_id == run_id]
    assert second.escalation.kind == "unsafe_retry"
    assert "died mid-call" in second.escalation.reason
    assert second.escalation.action is not None
    assert second.escalation.action.rerun_approval == first.escalation.escalation_id
    assert lines(run_id) == [f"{run_id} charge 700"] * 2

    client.decide(
        second.escalation.escalation_id,
        Verdict.answer,
        by="ops",
        answer="charged twice already; refund one and stop",
        runtime=frt,
    )
    wait_status(frt, run_id, "succeeded", timeout_s=30)
    assert lines(run_id) == [f"{run_id} charge 700"] * 2


def test_a_message_delivered_too_often_becomes_one_dead_letter_and_replays_once(
    frt: Runtime,
) -> None:
    event = TaskEvent(event_id="evt-redelivered", agent="calculator", input="What is 2 + 3?")
    # As if its workers had died five times under it: the transport counts in this header.
    frt.celery.send_task(
        celery_app.START,
        kwargs={"event": event.model_dump(mode="json")},
        headers={DELIVERIES_HEADER: 6},
        **celery_app.direct_route(celery_app.PLAN_QUEUE),
    )
    wait_for(
        lambda: any("evt-redelivered" in str(d.kwargs) for d in deadletters.list_dead(frt)),
        timeout_s=20,
        what="the dead letter",
    )
    (letter,) = [d for d in deadletters.list_dead(frt) if "evt-redelivered" in str(d.kwargs)]
    assert "delivered 6 times, over TETHER_MAX_DELIVERIES (5)" in letter.reason
    run_id = run_id_for("evt-redelivered")
    assert frt.store.get(run_id) is None  # it did not run
    # Invariant 1: an event whose start runs no more is a recorded rejection, not only a letter.
    rejected = client.rejection("evt-redelivered", runtime=frt)
    assert rejected is not None and "its start failed for good" in rejected
    assert "tether dead replay" in rejected

    assert deadletters.replay(frt, letter.id) is not None
    assert deadletters.replay(frt, letter.id) is None  # a second replay sends nothing
    wait_status(frt, run_id, "succeeded")
    assert client.rejection("evt-redelivered", runtime=frt) is None  # it has its run now
    time.sleep(1.0)
    assert kinds(frt, run_id).count("run_started") == 1
    assert kinds(frt, run_id).count("run_finished") == 1
