"""One OpenTelemetry trace per run, across real planner, executor and escalation workers.

The workers export over OTLP/HTTP to a receiver this test runs; what it
decodes is what a collector would get.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import pending_escalation, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.observability.tracing import run_span_id, run_trace_id
from tether.runtime import Runtime
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.testing.otlp_receiver import OTLPReceiver, ReceivedSpan
from tether.transport.wire import Verdict

SERVICES = {"tether-planner", "tether-executor", "tether-escalation"}


@pytest.fixture(scope="module")
def receiver() -> OTLPReceiver:
    # Stopped by traced_stack once its workers have stopped: they export to it until then.
    return OTLPReceiver().start()


@pytest.fixture(scope="module")
def traced_stack(
    receiver: OTLPReceiver,
    openai_server: ScriptedOpenAIServer,
    ledger_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevStack]:
    """Workers tracing to ``receiver``, on a Redis of their own (no other stack's workers)."""
    env = {
        "TETHER_OTLP_ENDPOINT": receiver.endpoint,
        # Export within a fraction of a second rather than the SDK's default 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "LEDGER_DIR": str(ledger_dir),
        "FAKE_OPENAI_URL": openai_server.base_url,
    }
    with started_stack(
        DevStack(
            agent_modules=["tests.agents"],
            log_dir=Path(tmp_path_factory.mktemp("traced-worker-logs")),
            env=env,
        ),
        then=[receiver.stop],
    ) as running:
        yield running


def _trace(receiver: OTLPReceiver, run_id: str) -> list[ReceivedSpan]:
    return receiver.traces().get(f"{run_trace_id(run_id):032x}", [])


def _complete_trace(
    receiver: OTLPReceiver, run_id: str, timeout_s: float = 20.0
) -> list[ReceivedSpan]:
    """The run's spans once its root arrived and every parent they name is among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = _trace(receiver, run_id)
        ids = {s.span_id for s in spans}
        root = f"{run_span_id(run_id):016x}"
        if root in ids and all(not s.parent_span_id or s.parent_span_id in ids for s in spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the trace of {run_id} is incomplete after {timeout_s}s: "
                f"{sorted((s.service, s.name, s.parent_span_id) for s in spans)}"
            )
        time.sleep(0.1)


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name!r} span, got {[s.name for s in spans]}"
    return found[0]


def test_a_run_with_an_escalation_is_one_trace_across_all_three_services(
    traced_stack: DevStack, receiver: OTLPReceiver
) -> None:
    rt = Runtime(Settings(redis_url=traced_stack.redis_url))
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    record = pending_escalation(rt, run_id)
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_status(rt, run_id, "succeeded")

    spans = _complete_trace(receiver, run_id)

    assert {s.service for s in spans} == SERVICES
    root = _one(spans, "invoke_agent payer")
    assert root.span_id == f"{run_span_id(run_id):016x}" and root.parent_span_id == ""
    assert root.service == "tether-planner"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "payer"
    assert root.attributes["tether.run_id"] == run_id
    assert root.attributes["tether.status"] == "succeeded"
    assert root.attributes["tether.steps"] == 2
    assert not root.error
    # The root spans the run's life, from its creation to its final commit.
    calls = [s for s in spans if s.name.startswith(("chat ", "execute_tool "))]
    assert len(calls) == 3
    assert all(root.start_ns <= s.start_ns and s.end_ns <= root.end_ns for s in calls)
    # Exactly one root: every other span hangs under a span of the same trace.
    assert [s.name for s in spans if not s.parent_span_id] == ["invoke_agent payer"]

    chats = sorted((s for s in spans if s.name == "chat scripted:payer"), key=lambda s: s.start_ns)
    assert [c.attributes["tether.step"] for c in chats] == [0, 1]
    for chat in chats:
        assert chat.service == "tether-planner"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.system"] == "tether.scripted"
        assert chat.attributes["gen_ai.request.model"] == "scripted:payer"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    steps = {s.span_id: s for s in spans if s.name.startswith("step ")}
    assert sorted(s.name for s in steps.values()) == ["step 0", "step 1"]
    assert all(c.parent_span_id in steps for c in chats)

    tool = _one(spans, "execute_tool record_payment")
    assert tool.service == "tether-executor"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "record_payment"
    assert tool.attributes["tether.action_id"] == f"{run_id}:0:0"
    assert tool.attributes["tether.tool.ok"] is True

    escalation = {s.name for s in spans if s.service == "tether-escalation"}
    assert {"run/tether.escalations.open", "run/tether.escalations.decide"} <= escalation
    decide = _one(spans, "run/tether.escalations.decide")
    # Published by this test's client, which traces nothing: the header made it a child of the run.
    assert decide.parent_span_id == root.span_id
    assert _one(spans, "run/tether.escalations.open").attributes["tether.run_id"] == run_id


def test_every_span_belongs_to_its_run_trace_and_model_calls_over_http_carry_usage(
    traced_stack: DevStack, receiver: OTLPReceiver
) -> None:
    rt = Runtime(Settings(redis_url=traced_stack.redis_url))
    runs = [
        client.submit("calculator", "What is 2 + 3?", runtime=rt),
        client.submit("remote_calculator", "What is 2 + 3?", runtime=rt),
    ]
    for run_id in runs:
        wait_status(rt, run_id, "succeeded")
    traces = {run_id: _complete_trace(receiver, run_id) for run_id in runs}

    for run_id, spans in traces.items():
        assert {s.service for s in spans} == {"tether-planner", "tether-executor"}
        # Every span that names a run names this one.
        assert {s.attributes.get("tether.run_id", run_id) for s in spans} == {run_id}
        tool = _one(spans, "execute_tool add")
        assert tool.attributes["gen_ai.tool.name"] == "add"
    remote = [s for s in traces[runs[1]] if s.name == "chat gpt-4o-mini"]
    assert len(remote) == 2
    for chat in remote:
        assert chat.attributes["gen_ai.system"] == "openai"
        assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    # No stray traces: what the services export is all inside some run's trace.
    known = {f"{run_trace_id(state.run_id):032x}" for state in rt.store.recent()}
    assert set(receiver.traces()) <= known
