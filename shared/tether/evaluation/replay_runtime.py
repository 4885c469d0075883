"""What a replay runs the planner against: recorded answers as the model, recorded
outcomes as the executor, recorded decisions as the humans (tether.evaluation.replay).

Nothing here reaches Celery: every message the planner publishes waits in the
runtime's own outbox, which the replay drains in this process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from tether import planner
from tether.agent import definition as agents
from tether.agent.definition import Agent
from tether.errors import ModelError
from tether.escalation import records
from tether.evaluation.recording import Recording, ReplayError, generic
from tether.executor.outcomes import report as record_tool_outcome
from tether.models.base import ModelClient, ModelResponse, ResponseFormat
from tether.models.wrapped import WrappedModel
from tether.runtime import Runtime
from tether.store.state import ChatMessage, ToolCall
from tether.transport.wire import (
    Decision,
    ErrorCategory,
    Escalation,
    EscalationKind,
    Observation,
    TaskEvent,
    ToolAction,
    Verdict,
)

# A run is a handful of messages per step; this only stops a replay that loops.
MAX_MESSAGES = 5_000


class ReplayModel(WrappedModel):
    """Answers each step with the answer recorded for that step; never calls an endpoint.

    Named, priced and estimated as the agent's current model, so budgets reserve
    exactly what production reserves.
    """

    def __init__(self, current: ModelClient, recording: Recording) -> None:
        super().__init__(current)
        self._recording = recording
        self.seen: list[list[ChatMessage]] = []

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        # The model sees the messages of the step it answers: the step is how many were answered.
        step = len(self.seen)
        self.seen.append(list(messages))
        failed = self._recording.model_failures.get(step)
        if failed is not None:
            raise ModelError(
                str(failed.data.get("error")),
                attempts=int(failed.data.get("attempts") or 1),
                status=failed.data.get("status"),
                kind="permanent"
                if failed.data.get("error_category") == ErrorCategory.model_permanent
                else None,
            )
        recorded = self._recording.model_calls.get(step)
        if recorded is None:
            raise ModelError(
                f"replay: the recording of run {self._recording.run_id} has no model answer "
                f"for model call {step}; the current code asked the model more often than "
                "the recorded run did",
                kind="permanent",
            )
        answer = recorded.data["answer"]
        return ModelResponse(
            content=answer.get("content"),
            tool_calls=[ToolCall.model_validate(c) for c in answer.get("tool_calls") or []],
            model=str(recorded.data.get("model") or self.name),
            input_tokens=int(recorded.data.get("input_tokens") or 0),
            output_tokens=int(recorded.data.get("output_tokens") or 0),
            cost_usd=float(recorded.data.get("cost_usd") or 0.0),
        )


@dataclass
class ReplayRuntime(Runtime):
    """A Runtime whose publishing hands messages to the replay, never to Celery."""

    recording: Recording | None = None
    outbox: deque[Callable[[], None]] = field(default_factory=deque)
    notes: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    stopped: bool = False

    def publish_event(self, event: TaskEvent) -> None:
        self.outbox.append(lambda: self._start(event))

    def _start(self, event: TaskEvent) -> None:
        planner.start(self, event.model_dump(mode="json"))

    def send_step(self, run_id: str, step: int) -> None:
        self.outbox.append(lambda: planner.plan(self, run_id, step))

    def send_action(self, action: ToolAction) -> None:
        self.outbox.append(lambda: self._execute(action))

    def send_observation(self, observation: Observation) -> None:
        self.outbox.append(lambda: planner.observe(self, observation))

    def send_escalation(self, escalation: Escalation) -> None:
        self.outbox.append(lambda: self._escalate(escalation))

    def send_decision(self, decision: Decision, run_id: str | None = None) -> None:
        self.outbox.append(lambda: self._decide(decision))

    def send_resume(self, escalation: Escalation, decision: Decision) -> None:
        self.outbox.append(lambda: planner.resume(self, escalation, decision))

    def _execute(self, action: ToolAction) -> None:
        """Dry run: the recorded outcome of the same action, through the executor's recording."""
        assert self.recording is not None
        key = generic(action.run_id, action.action_id)
        outcomes = self.recording.tool_outcomes.get(key)
        if not outcomes:
            self.notes.append(
                f"step {action.step}: the current code calls {action.tool!r} as action "
                f"{key}, which the recording never ran; tools never run in a replay, so it "
                "stopped there"
            )
            self.stopped = True
            return
        data = outcomes.popleft().data
        needs_human = data.get("needs_human")
        observation = record_tool_outcome(
            self,
            action,
            ok=bool(data.get("ok")),
            output=data.get("output"),
            error=data.get("error"),
            category=ErrorCategory(data["error_category"]) if data.get("error_category") else None,
            attempts=int(data.get("attempts") or 1),
            needs_human=EscalationKind(needs_human) if needs_human else None,
        )
        self.send_observation(observation)

    def _escalate(self, escalation: Escalation) -> None:
        assert self.recording is not None
        records.open_escalation(self, escalation)
        self.opened.append(escalation.escalation_id)
        recorded = self.recording.decisions.get(
            generic(escalation.run_id, escalation.escalation_id)
        )
        if recorded is None:
            self.notes.append(
                f"escalation {generic(escalation.run_id, escalation.escalation_id)} "
                f"({escalation.kind}) was never decided in the recording; the replay ends "
                "waiting for a human there"
            )
            return
        data = recorded.data
        self._decide(
            Decision(
                escalation_id=escalation.escalation_id,
                verdict=Verdict(data["verdict"]),
                by=str(data.get("by") or "replay"),
                reason=data.get("reason"),
                answer=data.get("answer"),
            )
        )

    def _decide(self, decision: Decision) -> None:
        records.decide(self, decision)

    def drain(self, limit: int = MAX_MESSAGES) -> None:
        handled = 0
        while self.outbox and not self.stopped:
            if handled >= limit:
                raise ReplayError(
                    f"replay handled {limit} messages without the run settling; the current "
                    "code may loop (check the agent's budget)"
                )
            self.outbox.popleft()()
            handled += 1


_swap_lock = threading.Lock()


@contextmanager
def serving(agent: Agent, model: ModelClient) -> Iterator[None]:
    """The current agent, with the recorded answers as its model, under its own name."""
    # Workers and the planner look agents up by name: the copy must be what they find.
    with _swap_lock:
        agents._loaded[agent.name] = replace(agent, model=model)
        try:
            yield
        finally:
            agents._loaded[agent.name] = agent
