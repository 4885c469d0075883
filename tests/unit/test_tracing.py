"""Run-derived trace ids, the run's root span, and which run a message belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tether.config import Settings
from tether.observability import redact, tracing
from tether.store.runs import run_id_for
from tether.store.state import RunError, RunState, RunStatus
from tether.transport import celery_app
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    ToolAction,
    Verdict,
)

RUN = "run_0123456789abcdef0123"
ACTION = ToolAction(
    action_id=f"{RUN}:0:0",
    run_id=RUN,
    agent="payer",
    step=0,
    tool="record_payment",
    tool_call_id="call_1",
    arguments={"account": "acme", "cents": 500},
    idempotent=False,
)


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only (no global provider, no Celery hooks)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tether-test"}),
        id_generator=tracing.RunIdGenerator(),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("tether"))
    yield exporter
    provider.shutdown()


def test_a_run_has_one_stable_trace_id_and_root_span_id() -> None:
    assert tracing.run_trace_id(RUN) == tracing.run_trace_id(RUN)
    assert tracing.run_trace_id(RUN) != tracing.run_trace_id(RUN + "x")
    assert 0 < tracing.run_trace_id(RUN) < 2**128 and 0 < tracing.run_span_id(RUN) < 2**64
    # The header any W3C propagator reads back as the run's root.
    carrier = {"traceparent": tracing.traceparent(RUN)}
    parent = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    assert (parent.trace_id, parent.span_id) == (
        tracing.run_trace_id(RUN),
        tracing.run_span_id(RUN),
    )
    assert parent.trace_flags.sampled


def test_every_tether_message_names_its_run() -> None:
    escalation = Escalation(
        escalation_id="esc_1",
        run_id=RUN,
        agent="payer",
        kind=EscalationKind.approval_required,
        reason="approve",
        action=ACTION,
    )
    decision = Decision(escalation_id="esc_1", verdict=Verdict.approve, by="alice")
    observation = Observation(
        action_id=ACTION.action_id, run_id=RUN, step=0, tool="add", tool_call_id="c", ok=True
    )
    messages: dict[str, dict[str, Any]] = {
        celery_app.START: {"event": {"event_id": "evt-1", "agent": "payer", "input": "x"}},
        celery_app.STEP: {"run_id": RUN, "step": 3},
        celery_app.EXECUTE: {"action": ACTION.model_dump(mode="json")},
        celery_app.OBSERVE: {"observation": observation.model_dump(mode="json")},
        celery_app.ESCALATE: {"escalation": escalation.model_dump(mode="json")},
        celery_app.RESUME: {
            "escalation": escalation.model_dump(mode="json"),
            "decision": decision.model_dump(mode="json"),
        },
    }
    assert {task: tracing.message_run_id(task, kwargs) for task, kwargs in messages.items()} == {
        celery_app.START: run_id_for("evt-1"),
        celery_app.STEP: RUN,
        celery_app.EXECUTE: RUN,
        celery_app.OBSERVE: RUN,
        celery_app.ESCALATE: RUN,
        celery_app.RESUME: RUN,
    }
    # A decision names only its escalation; its publisher passes the run (client.decide).
    decide = {"decision": decision.model_dump(mode="json")}
    assert tracing.message_run_id(celery_app.DECIDE, decide) is None
    # Malformed messages are dead-lettered later; here they just name no run.
    assert tracing.message_run_id(celery_app.START, {"event": "not a dict"}) is None


def test_without_an_endpoint_nothing_is_traced_but_headers_still_name_the_run() -> None:
    assert not tracing.enabled(Settings(otlp_endpoint=None))
    assert tracing.enabled(Settings(otlp_endpoint="http://127.0.0.1:4318"))
    with tracing.tool_call(ACTION) as span:
        assert not span.is_recording()
    with tracing.publishing(RUN) as headers:
        assert headers == {"traceparent": tracing.traceparent(RUN)}
    with tracing.publishing(None) as headers:
        assert headers == {}


def test_spans_of_a_run_hang_under_its_root_and_the_root_is_exported_at_its_end(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.step_span(RUN, 0), tracing.tool_call(ACTION) as tool:
        tracing.record_outcome(
            tool,
            Observation(
                action_id=ACTION.action_id,
                run_id=RUN,
                step=0,
                tool=ACTION.tool,
                tool_call_id="call_1",
                ok=False,
                error="card declined",
                error_category=ErrorCategory.tool_permanent,
                attempts=2,
            ),
        )
    state = RunState(
        run_id=RUN,
        event_id="evt-1",
        agent="payer",
        goal="pay",
        status=RunStatus.failed,
        step=1,
        error=RunError(category=ErrorCategory.tool_permanent, message="card declined"),
    )
    state = state.model_copy(update={"finished_at": state.created_at + timedelta(seconds=90)})
    tracing.record_run(state)

    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {"step 0", "execute_tool record_payment", "invoke_agent payer"}
    trace_id, root_id = tracing.run_trace_id(RUN), tracing.run_span_id(RUN)
    assert {s.context.trace_id for s in spans.values()} == {trace_id}

    step, tool_span, root = (
        spans["step 0"],
        spans["execute_tool record_payment"],
        spans["invoke_agent payer"],
    )
    assert step.parent is not None and step.parent.span_id == root_id
    assert tool_span.parent is not None and tool_span.parent.span_id == step.context.span_id
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.tool.name"] == "record_payment"
    assert tool_span.attributes["gen_ai.tool.call.id"] == "call_1"
    assert tool_span.attributes["error.type"] == "tool_permanent"
    assert tool_span.attributes["tether.attempts"] == 2
    assert tool_span.status.status_code == trace.StatusCode.ERROR

    assert root.parent is None and root.context.span_id == root_id
    assert root.start_time is not None and root.end_time is not None
    assert (root.end_time - root.start_time) == 90 * 10**9
    assert root.attributes is not None and root.attributes["tether.status"] == "failed"
    assert root.status.status_code == trace.StatusCode.ERROR
    # Only the root takes the run's ids: the next span is random again.
    with tracing.step_span("run_other", 0) as other:
        assert other.get_span_context().span_id != root_id


def test_a_failing_tools_span_status_is_redacted(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tool's error may quote what it was called with, a key among it: the span
    # leaves for the trace backend, so its status description goes through the redactor.
    monkeypatch.setattr(redact, "_redactor", redact.Redactor(literals=["hunter2-db-password"]))
    error = (
        "auth failed with sk-live-abcdefghijklmnopqrstu "
        "for postgres://app:hunter2-db-password@db/ledger"
    )
    with tracing.tool_call(ACTION) as tool:
        tracing.record_outcome(
            tool,
            Observation(
                action_id=ACTION.action_id,
                run_id=RUN,
                step=0,
                tool=ACTION.tool,
                tool_call_id="call_1",
                ok=False,
                error=error,
                error_category=ErrorCategory.tool_permanent,
            ),
        )
    (span,) = exported.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == (
        f"auth failed with {redact.REDACTED} for postgres://app:{redact.REDACTED}@db/ledger"
    )
