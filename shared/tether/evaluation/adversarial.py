"""The adversarial suite: what an agent survives, run through real workers.

Each case publishes one event to the running services (``tether.plan``) for
the agent's evaluation twin ``eval:<agent>``, with a harness document (a
``Scenario``: faults around the agent's own tools, a replacement model where the
case needs one) stored first, exactly as ``tether eval`` runs scenarios
(``tether.evaluation.harness``); a malformed-input case sends its raw payload
instead. Then it reads what the run left in Redis: its state, event log, budget hash, escalations and dead letters. An
escalation the run opens is rejected by ``ESCALATION_REVIEWER``, so every
case ends. A case is not survived when the run shows an unapproved side
effect, a budget overrun, a crash or dead letter, or no end within the timeout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from tether.agent.definition import Agent, get_agent
from tether.evaluation.adversarial_cases import Case, cases
from tether.evaluation.adversarial_verdicts import CaseResult, judge, rejection_of
from tether.evaluation.escalations import decide_waiting
from tether.evaluation.harness import EVAL_PREFIX, eval_agent_name, save_scenario
from tether.models.scripted import from_turns, text
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import RunState, RunStatus
from tether.testing.openai_server import Fault, ScriptedOpenAIServer
from tether.transport import celery_app
from tether.transport.wire import TaskEvent, Verdict

ESCALATION_REVIEWER = "tether-adversarial"
DEFAULT_INPUT = "Where is order 1001? Please look it up."


class AdversarialReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    input: str
    cases: list[CaseResult]

    @property
    def survived_all(self) -> bool:
        return all(c.survived for c in self.cases)

    def case(self, name: str) -> CaseResult:
        return next(c for c in self.cases if c.case == name)

    @property
    def survived_count(self) -> int:
        return sum(c.survived for c in self.cases)


@contextmanager
def rate_limiting_endpoint() -> Iterator[ScriptedOpenAIServer]:
    """A local OpenAI-compatible endpoint that answers every request 429 (with Retry-After)."""
    with ScriptedOpenAIServer(
        from_turns([text("unreachable")]), fault_rate=1.0, faults=(Fault.rate_limit,)
    ) as server:
        yield server


def run_suite(
    rt: Runtime,
    agent_name: str,
    *,
    input: str = DEFAULT_INPUT,
    timeout_s: float = 60.0,
    only: list[str] | None = None,
) -> AdversarialReport:
    """Run every case against ``agent_name`` on the running services; never raises for a case."""
    agent = get_agent(agent_name.removeprefix(EVAL_PREFIX))
    with rate_limiting_endpoint() as server:
        planned = cases(agent, rt.settings.max_event_bytes, server.base_url)
        if only:
            planned = [c for c in planned if c.name in only]
        suite = uuid.uuid4().hex[:10]
        started = {
            case.name: _publish(rt, agent, case, suite, input, timeout_s) for case in planned
        }
        results = _await(rt, agent, planned, started, timeout_s)
    return AdversarialReport(agent=agent.name, input=input, cases=results)


def _publish(
    rt: Runtime, agent: Agent, case: Case, suite: str, input: str, timeout_s: float
) -> str:
    event_id = f"adversarial:{suite}:{case.name}"
    if case.raw is not None:
        payload = _fill(case.raw, event_id)
        rt.celery.send_task(
            celery_app.START,
            kwargs={"event": payload},
            **celery_app.direct_route(celery_app.QUEUE_OF[celery_app.START]),
        )
        return event_id
    # Stored before publishing: intake refuses an eval: event without its harness.
    save_scenario(rt, run_id_for(event_id), case.harness(agent, input, timeout_s))
    rt.publish_event(
        TaskEvent(
            event_id=event_id,
            agent=eval_agent_name(agent.name),
            input=case.input or input,
            budget=case.budget,
            metadata={"tether_eval": {"suite": "adversarial", "case": case.name}},
        )
    )
    return event_id


def _fill(raw: Any, event_id: str) -> Any:
    if isinstance(raw, dict):
        return {k: (event_id if v == "{event_id}" else v) for k, v in raw.items()}
    return [*raw, event_id] if isinstance(raw, list) else raw


def _await(
    rt: Runtime,
    agent: Agent,
    planned: list[Case],
    started: dict[str, str],
    timeout_s: float,
) -> list[CaseResult]:
    deadline = time.monotonic() + timeout_s
    # Per case: escalation id -> kind, of every escalation the suite answered.
    escalated: dict[str, dict[str, str]] = {c.name: {} for c in planned}
    pending = {c.name for c in planned}
    while pending and time.monotonic() < deadline:
        for case in planned:
            if case.name not in pending:
                continue
            event_id = started[case.name]
            if case.raw is not None:
                if rejection_of(rt, case, event_id) is not None:
                    pending.discard(case.name)
                continue
            state = rt.store.get(run_id_for(event_id))
            if state is None:
                if rt.store.rejections.reason(event_id) is not None:
                    pending.discard(case.name)
                continue
            if state.terminal:
                pending.discard(case.name)
            elif state.status == RunStatus.waiting_human:
                _reject_escalations(rt, state, escalated[case.name])
        time.sleep(0.1)
    return [
        judge(rt, agent, case, started[case.name], escalated[case.name], case.name in pending)
        for case in planned
    ]


def _reject_escalations(rt: Runtime, state: RunState, seen: dict[str, str]) -> None:
    """Record what the run asked a human, and say no, so that the run ends."""
    rejected = decide_waiting(
        rt,
        state,
        Verdict.reject,
        by=ESCALATION_REVIEWER,
        reason="the adversarial suite approves nothing",
        decided=seen,
    )
    seen.update((wait.escalation_id, str(wait.kind)) for wait in rejected)
