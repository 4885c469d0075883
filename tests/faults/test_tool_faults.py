"""Tool failures: transient retries, permanent errors, timeouts."""

from __future__ import annotations

from tests.integration.helpers import wait_status
from tether import client
from tether.runtime import Runtime


def tool_calls(rt: Runtime, run_id: str) -> list[dict[str, object]]:
    return [e.data for _, e in rt.store.trace(run_id) if e.kind == "tool_call"]


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
