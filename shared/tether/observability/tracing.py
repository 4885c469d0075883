"""One OpenTelemetry trace per run, across the planner, executor and escalation services.

A run lasts as long as its humans take to decide, and its messages are
redelivered, re-driven by the reconciler, replayed from dead letters, or
published by upstream systems that know nothing of tracing. So a run's trace
does not depend on a context surviving all of that: its trace id, and the span
id of its root span, are derived from the run id. Every span of a run, in
whichever service and however its message got there, has that trace id, and
its step, model and tool spans hang under that root span. Message headers
(opentelemetry-instrumentation-celery) add the finer links where they exist:
which publish led to which task run.

The root span, ``invoke_agent <agent>``, is exported once, by the commit that
ends the run (tether.planner.lifecycle.finish), with the run's real start and
end times; until then its children refer to a parent still to come, which
trace backends show as such.

Nothing is traced unless an OTLP endpoint is configured (TETHER_OTLP_ENDPOINT
or OTEL_EXPORTER_OTLP_ENDPOINT): without it every helper here is a no-op that
costs a branch.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Protocol

from celery import Task
from celery.signals import task_prerun, worker_process_shutdown, worker_shutdown
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from tether.config import Settings
from tether.models.base import ModelClient, ModelResponse
from tether.observability.redact import get_redactor
from tether.store.runs import run_id_for
from tether.store.state import RunState, RunStatus
from tether.transport.wire import Observation, ToolAction

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
ERROR_TYPE = "error.type"

_tracer = trace.get_tracer("tether")
_provider: TracerProvider | None = None
# The ids the next span started in this context must take (the run's root span).
_forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("tether_forced_ids", default=None)


class RunIdGenerator(IdGenerator):
    """Random ids, except for the span that ``record_run`` starts: the run's own."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced_ids.get()
        return forced[1] if forced else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_ids.get()
        return forced[0] if forced else self._random.generate_trace_id()


def _digest(kind: str, run_id: str, size: int) -> int:
    # Never zero: an all-zero id is the spec's "invalid".
    return int.from_bytes(hashlib.sha256(f"{kind}:{run_id}".encode()).digest()[:size]) or 1


def run_trace_id(run_id: str) -> int:
    """The trace id of every span of ``run_id``, in every service."""
    return _digest("tether-trace", run_id, 16)


def run_span_id(run_id: str) -> int:
    """The span id of the run's root span, the parent of its step and tool spans."""
    return _digest("tether-run", run_id, 8)


def run_span_context(run_id: str) -> SpanContext:
    return SpanContext(
        trace_id=run_trace_id(run_id),
        span_id=run_span_id(run_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def traceparent(run_id: str) -> str:
    """The W3C traceparent header that makes a message a child of its run's root span."""
    return f"00-{run_trace_id(run_id):032x}-{run_span_id(run_id):016x}-01"


def message_run_id(task: str, kwargs: Mapping[str, Any]) -> str | None:
    """The run a Tether message belongs to, read from its kwargs; None if they do not say.

    A decision names only its escalation: its publisher passes the run id itself.
    """
    run_id = kwargs.get("run_id")
    if isinstance(run_id, str):
        return run_id
    for value in kwargs.values():
        if isinstance(value, Mapping):
            nested = value.get("run_id")
            if isinstance(nested, str):
                return nested
    event = kwargs.get("event")
    if isinstance(event, Mapping) and isinstance(event.get("event_id"), str):
        return run_id_for(event["event_id"])
    return None


def _context_in(run_id: str) -> context_api.Context:
    """The current context if it already belongs to the run's trace, else the run's root."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == run_trace_id(run_id):
        return context_api.get_current()
    return trace.set_span_in_context(NonRecordingSpan(run_span_context(run_id)))


@contextmanager
def publishing(run_id: str | None) -> Iterator[dict[str, str]]:
    """Headers for a message of ``run_id``; the Celery publish span inside joins the run's trace.

    The headers carry the trace context even from a process that traces nothing
    (a client), so the consumer's spans land in the run's trace all the same.
    """
    if run_id is None:
        yield {}
        return
    if _provider is None:
        # No publish span to make here: the header alone, cheaply.
        yield {"traceparent": traceparent(run_id)}
        return
    token = context_api.attach(_context_in(run_id))
    try:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers
    finally:
        context_api.detach(token)


@contextmanager
def _span(
    name: str, run_id: str, attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    if _provider is None:
        yield INVALID_SPAN
        return
    # The SDK would record an exception's message and traceback as they are; a model error
    # may quote an API key, so they go through the redactor first.
    with _tracer.start_as_current_span(
        name,
        context=_context_in(run_id),
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            _record_error(span, exc)
            raise


def _record_error(span: Span, exc: Exception) -> None:
    redactor = get_redactor()
    span.record_exception(
        exc,
        attributes={
            "exception.message": redactor.text(str(exc)),
            "exception.stacktrace": redactor.text("".join(traceback.format_exception(exc))),
        },
    )
    span.set_status(Status(StatusCode.ERROR, redactor.text(f"{type(exc).__name__}: {exc}")))


def step_span(run_id: str, step: int) -> AbstractContextManager[Span]:
    """Around one planning step of a run."""
    return _span(f"step {step}", run_id, {"tether.run_id": run_id, "tether.step": step})


class ModelCaller(Protocol):
    """What a model call's span reads of its agent (a tether.agent.definition.Agent,
    named by what it offers: the agents sit above observability)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> ModelClient: ...


def model_call(agent: ModelCaller, state: RunState) -> AbstractContextManager[Span]:
    """Around one model call of a planning step; ``record_usage`` fills in what it used."""
    return _span(
        f"chat {agent.model.name}",
        state.run_id,
        {
            GEN_AI_OPERATION: "chat",
            GEN_AI_SYSTEM: agent.model.system,
            GEN_AI_REQUEST_MODEL: agent.model.name,
            GEN_AI_AGENT_NAME: agent.name,
            "tether.agent.version": getattr(state, "agent_version", ""),
            "tether.run_id": state.run_id,
            "tether.step": state.step,
        },
        kind=SpanKind.CLIENT,
    )


def record_usage(span: Span, response: ModelResponse) -> None:
    if not span.is_recording():
        return
    span.set_attributes(
        {
            GEN_AI_RESPONSE_MODEL: response.model,
            GEN_AI_INPUT_TOKENS: response.input_tokens,
            GEN_AI_OUTPUT_TOKENS: response.output_tokens,
            "tether.cost_usd": response.cost_usd,
            "tether.model.attempts": response.attempts,
        }
    )


def tool_call(action: ToolAction) -> AbstractContextManager[Span]:
    """Around one tool action (its retries included); ``record_outcome`` says how it went."""
    return _span(
        f"execute_tool {action.tool}",
        action.run_id,
        {
            GEN_AI_OPERATION: "execute_tool",
            GEN_AI_TOOL_NAME: action.tool,
            GEN_AI_TOOL_CALL_ID: action.tool_call_id,
            GEN_AI_AGENT_NAME: action.agent,
            "tether.run_id": action.run_id,
            "tether.step": action.step,
            "tether.action_id": action.action_id,
        },
    )


def record_outcome(span: Span, observation: Observation) -> None:
    if not span.is_recording():
        return
    span.set_attributes({"tether.tool.ok": observation.ok, "tether.attempts": observation.attempts})
    if not observation.ok:
        span.set_attribute(ERROR_TYPE, str(observation.error_category or "error"))
        message = get_redactor().text(observation.error) if observation.error else None
        span.set_status(Status(StatusCode.ERROR, message))


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


def record_run(state: RunState) -> None:
    """Export the run's root span, once its end is committed, spanning its whole life."""
    if _provider is None:
        return
    token = _forced_ids.set((run_trace_id(state.run_id), run_span_id(state.run_id)))
    try:
        span = _tracer.start_span(
            f"invoke_agent {state.agent}",
            # An empty context: the root of the trace, with the ids forced above.
            context=context_api.Context(),
            attributes={
                GEN_AI_OPERATION: "invoke_agent",
                GEN_AI_AGENT_NAME: state.agent,
                "tether.agent.version": getattr(state, "agent_version", ""),
                "tether.run_id": state.run_id,
                "tether.event_id": state.event_id,
                "tether.status": str(state.status),
                "tether.steps": state.step,
            },
            start_time=_ns(state.created_at),
        )
    finally:
        _forced_ids.reset(token)
    if state.status != RunStatus.succeeded:
        if state.error is not None:
            span.set_attribute(ERROR_TYPE, str(state.error.category))
        # The run state is not redacted; what leaves for the trace backend is.
        message = get_redactor().text(state.error.message) if state.error else None
        span.set_status(Status(StatusCode.ERROR, message))
    span.end(end_time=_ns(state.finished_at or state.updated_at))


def _exporter_endpoint(settings: Settings) -> str | None:
    if settings.otlp_endpoint:
        return settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


def enabled(settings: Settings) -> bool:
    return bool(
        settings.otlp_endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(settings: Settings, service: str) -> bool:
    """Trace this service's process when an OTLP endpoint is configured; True if it does.

    Called at import of the service's worker module, before a prefork pool forks:
    the SDK restarts its export thread in each child.
    """
    global _provider
    if _provider is not None or not enabled(settings):
        return _provider is not None
    # Imported here: only a traced process pays for the exporter and its HTTP stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"tether-{service}", "service.namespace": "tether"}
        ),
        id_generator=RunIdGenerator(),
    )
    # Without TETHER_OTLP_ENDPOINT the exporter reads OTEL_EXPORTER_OTLP_* itself.
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=_exporter_endpoint(settings)))
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    # Connected before the instrumentation's own handler, which then reads what it set.
    task_prerun.connect(_adopt_into_run, weak=False)
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    task_prerun.connect(_label_task_span, weak=False)
    worker_process_shutdown.connect(_flush, weak=False)
    worker_shutdown.connect(_flush, weak=False)
    return True


def _adopt_into_run(task: Task | None = None, kwargs: Any = None, **_: Any) -> None:
    """A message published without trace context (upstream, a dead-letter replay) joins its run."""
    if task is None or getattr(task.request, "traceparent", None):
        return
    run_id = message_run_id(task.name, kwargs or {})
    if run_id is not None:
        task.request.traceparent = traceparent(run_id)


def _label_task_span(task: Task | None = None, kwargs: Any = None, **_: Any) -> None:
    span = trace.get_current_span()
    if task is None or not span.is_recording():
        return
    run_id = message_run_id(task.name, kwargs or {})
    if run_id is not None:
        span.set_attribute("tether.run_id", run_id)


def _flush(**_: Any) -> None:
    # A prefork child exits without atexit handlers: send what it still holds first.
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)
