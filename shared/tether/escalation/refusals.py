"""Whether the escalation service refused a decision, read from its run's log.

A client that sent a decision waits for the record to hold it; the service writes
each refusal (an operator credential or role it does not accept, edited arguments
its agent refuses) to the run's log as ``decision_refused``, which this finds, so
the client can say why at once instead of timing out.
"""

from __future__ import annotations

from tether.runtime import Runtime
from tether.transport.wire import Decision, EventKind, RunEvent


def refused_since(
    rt: Runtime, run_id: str, decision: Decision, after: str = "-"
) -> tuple[str | None, str]:
    """Why the service refused ``decision`` (None: no refusal logged), and the log entry
    id read up to, for the next call's ``after``."""
    logged = rt.store.log.read(run_id, after)
    reasons = [str(event.data.get("reason")) for _, event in logged if _refuses(event, decision)]
    return (reasons[-1] if reasons else None), (logged[-1][0] if logged else after)


def _refuses(event: RunEvent, decision: Decision) -> bool:
    # The same person's same verdict sent since counts too: either way this one is refused.
    data = event.data
    return (
        event.kind == EventKind.decision_refused
        and event.at >= decision.at
        and data.get("escalation_id") == decision.escalation_id
        and data.get("by") == decision.by
        and data.get("verdict") == decision.verdict
    )
