"""Model endpoint faults, through the real openai client and real workers."""

from __future__ import annotations

from tests.integration.helpers import kinds, pending_escalation, wait_status
from tether import client
from tether.runtime import Runtime
from tether.testing.openai_server import Fault, ScriptedOpenAIServer
from tether.transport.wire import Verdict


def model_calls(rt: Runtime, run_id: str) -> list[dict[str, object]]:
    return [e.data for _, e in rt.store.log.read(run_id) if e.kind == "model_call"]


def test_rate_limit_is_retried_after_retry_after(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.rate_limit, Fault.rate_limit]
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)

    assert state.result == "2 + 3 = 5"
    # The primary's 429 went to the fallback model, whose 429 ended the call: its
    # Retry-After paused the endpoint for every planner, and the step waited it out off
    # the worker (tether.planner.ratelimited) instead of retrying in place.
    waits = [e.data for _, e in frt.store.log.read(run_id) if e.kind == "rate_limited"]
    assert [w["why"] for w in waits] == ["429 Retry-After"]
    assert waits[0]["seconds"] >= fault_server.retry_after_s
    assert model_calls(frt, run_id)[0]["attempts"] == 1


def test_slow_and_truncated_answers_are_retried(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.slow, None, Fault.truncated]
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)

    assert [c["attempts"] for c in model_calls(frt, run_id)] == [2, 2]
    assert state.result == "2 + 3 = 5"


def test_fallback_model_answers_when_the_primary_keeps_failing(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.server_error] * 3
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    wait_status(frt, run_id, "succeeded", timeout_s=30)

    first, second = model_calls(frt, run_id)
    assert first["model"] == "gpt-4o-mini-fallback"
    assert first["attempts"] == 4  # three on the primary, one on the fallback
    assert second["model"] == "gpt-4o-mini"


def test_endpoint_down_for_good_fails_the_run_with_a_clear_reason(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.server_error] * 6
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    state = wait_status(frt, run_id, "failed", timeout_s=40)

    assert state.error is not None and state.error.category == "model_transient"
    assert "every model failed" in state.error.message
    assert "resubmit" in state.error.message
    assert state.partial_result == "no steps completed"
    assert "model_failed" in kinds(frt, run_id)


def test_a_bad_key_fails_the_run_at_once_without_the_fallback(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.unauthorized]
    before = len(fault_server.requests)
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    state = wait_status(frt, run_id, "failed", timeout_s=30)

    assert state.error is not None and state.error.category == "model_permanent"
    assert "HTTP 401" in state.error.message and "TETHER_MODEL_API_KEY" in state.error.message
    # One request: no retry on the primary, and the fallback model never asked.
    assert len(fault_server.requests) - before == 1
    assert "model_failed" in kinds(frt, run_id)


def test_malformed_tool_calls_get_corrective_feedback(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.invalid_arguments, Fault.unknown_tool]
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)

    invalid = [e.data for _, e in frt.store.log.read(run_id) if e.kind == "tool_call_invalid"]
    assert [i["error_category"] for i in invalid] == ["model_invalid_output"] * 2
    assert "not valid JSON" in str(invalid[0]["error"])
    assert "'no_such_tool' does not exist" in str(invalid[1]["error"])
    assert [o.output for o in state.completed_actions] == [5]


def test_repeated_malformed_output_escalates_and_a_human_decides(
    frt: Runtime, fault_server: ScriptedOpenAIServer
) -> None:
    fault_server.schedule[:] = [Fault.invalid_arguments] * 3
    run_id = client.submit("resilient", "What is 2 + 3?", runtime=frt)
    wait_status(frt, run_id, "waiting_human", timeout_s=30)
    record = pending_escalation(frt, run_id)
    assert record.escalation.kind == "repeated_failure"

    client.decide(record.escalation.escalation_id, Verdict.approve, by="oncall", runtime=frt)
    state = wait_status(frt, run_id, "succeeded", timeout_s=30)
    assert state.result == "2 + 3 = 5"


def test_bad_input_is_refused_where_the_publisher_can_see_it(frt: Runtime) -> None:
    good = client.submit("calculator", "What is 2 + 3?", runtime=frt)
    client.submit("calculator", "x" * 300_000, event_id="evt-too-big", runtime=frt)
    client.submit("ghost", "hello", event_id="evt-ghost", runtime=frt)
    wait_status(frt, good, "succeeded")

    def refused(event_id: str) -> str:
        for _ in range(200):
            reason = client.rejection(event_id, runtime=frt)
            if reason:
                return reason
            import time

            time.sleep(0.05)
        raise AssertionError(f"{event_id} was not refused")

    assert "over the 262144-byte cap" in refused("evt-too-big")
    assert "'ghost' is not registered" in refused("evt-ghost")
    assert client.rejection(good.removeprefix("run_"), runtime=frt) is None
