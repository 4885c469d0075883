"""Edited arguments checked when a decision is taken, so the operator hears at once.

A decision that approves a held call with edited arguments is checked against the
tool's input schema and the agent's policies (tether.agent.edits) by the client that
sends it (tether.client.decide: the CLI, the HTTP API, the console) and again by the
escalation service before it records it; a refused edit leaves the escalation pending.
The agent is its declared one: a variant (an evaluation's) takes the same arguments
and policies, and resolving the declared agent loads no variant into this process.
"""

from __future__ import annotations

from tether.agent.definition import Agent, declared_name, get_agent
from tether.agent.edits import edited_action
from tether.errors import ConfigError, UnknownAgentError
from tether.observability.logs import log
from tether.runtime import Runtime
from tether.store.state import EscalationRecord
from tether.transport.wire import Decision, Verdict


def check_edit(rt: Runtime, record: EscalationRecord, decision: Decision) -> None:
    """Raise DecisionRefusedError if ``decision`` approves ``record``'s call with edited
    arguments that its tool or its agent's policies refuse."""
    action = record.escalation.action
    if decision.arguments is None or decision.verdict != Verdict.approve or action is None:
        return
    agent = _agent(record.escalation.agent)
    state = rt.store.get(record.escalation.run_id)
    if agent is None or state is None:
        # Nothing to check against here; the planner checks the edit before it commits.
        log.warning(
            "edited_arguments_unchecked",
            escalation_id=decision.escalation_id,
            agent=record.escalation.agent,
            reason="agent not loaded here" if agent is None else "run not found",
        )
        return
    edited_action(agent, action, decision.arguments, state)


def _agent(name: str) -> Agent | None:
    try:
        return get_agent(declared_name(name))
    except (UnknownAgentError, ConfigError):  # not among this process's TETHER_AGENT_MODULES
        return None
