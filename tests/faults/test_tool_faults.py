"""Tool failures: transient retries, permanent errors, timeouts."""

from __future__ import annotations

from tests.agents import read_ledger
from tests.integration.helpers import pending_escalation, wait_status
from tether import client
from tether.runtime import Runtime
from tether.transport.wire import Verdict


def tool_calls(rt: Runtime, run_id: str) -> list[dict[str, object]]:
    return [e.data for _, e in rt.store.log.read(run_id) if e.kind == "tool_call"]


def test_transient_tool_errors_are_retried_with_backoff(frt: Runtime) -> None:
    run_id = client.submit("flaky", "look up k", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)

    (call,) = tool_calls(frt, run_id)
    assert call["ok"] is True and call["attempts"] == 3
    assert state.result == 'flaky_lookup said: {"result": "value of k"}'


def test_permanent_tool_error_goes_back_to_the_model(frt: Runtime) -> None:
    run_id = client.submit("broken", "look up k", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)

    (call,) = tool_calls(frt, run_id)
    assert call["ok"] is False and call["attempts"] == 1
    assert call["error_category"] == "tool_permanent"
    assert "ValueError: no record k" in str(call["error"])
    assert state.result is not None and "no record k" in state.result


def test_tool_timeout_is_enforced_and_categorised(frt: Runtime) -> None:
    run_id = client.submit("stuck", "look up k", runtime=frt)
    wait_status(frt, run_id, "succeeded", timeout_s=30)

    (call,) = tool_calls(frt, run_id)
    assert call["error_category"] == "timeout"
    assert call["attempts"] == 3
    assert "did not finish within 1s" in str(call["error"])


def test_timed_out_non_idempotent_call_asks_a_human_not_the_model(frt: Runtime) -> None:
    run_id = client.submit("wirer", "wire 9 dollars", runtime=frt)
    record = pending_escalation(frt, run_id, timeout_s=30)

    assert record.escalation.kind == "unsafe_retry"
    assert "timed out" in record.escalation.reason
    assert "may or may not have taken effect" in record.escalation.reason
    state = frt.store.load(run_id)
    assert state.status == "waiting_human"
    assert not any(m.role == "tool" for m in state.messages)  # the model was not told to retry
    (call,) = tool_calls(frt, run_id)
    assert call["error_category"] == "timeout" and call["attempts"] == 1

    client.decide(
        record.escalation.escalation_id,
        Verdict.answer,
        by="ops",
        answer="the bank shows the transfer; it went through",
        runtime=frt,
    )
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)
    assert "went through" in (state.result or "")
    assert [line for line in read_ledger() if line.startswith(run_id)] == [f"{run_id} wire 900"]
