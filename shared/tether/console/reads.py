"""What the console's pages show, read through the query layer (tether.query), which the
CLI and the HTTP API read through too."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from tether.query import escalations as escalation_queries
from tether.query import runs as run_queries
from tether.query import timeline as timelines
from tether.query.escalations import EscalationView
from tether.query.runs import RunFilter, RunPage
from tether.query.timeline import Timeline
from tether.runtime import Runtime
from tether.store.state import RunStatus

INBOX_LIMIT = 200


class InboxFilter(BaseModel):
    agent: str | None = None
    tool: str | None = None


def runs_page(rt: Runtime, agent: str | None, status: str | None, include_eval: bool) -> RunPage:
    wanted = [RunStatus(status)] if status else []
    return run_queries.list_runs(
        rt.store,
        RunFilter(agent=agent or None, status=wanted, include_eval=include_eval, limit=100),
    )


def timeline(rt: Runtime, run_id: str) -> Timeline | None:
    return timelines.timeline(rt.store, run_id)


def inbox(rt: Runtime, wanted: InboxFilter) -> list[EscalationView]:
    """Pending escalations, the one waiting longest first, each with its run's context."""
    views = escalation_queries.list_escalations(
        rt, agent=wanted.agent or None, tool=wanted.tool or None, limit=INBOX_LIMIT
    )
    for view in views:
        view.context = escalation_queries.context_of(rt, view.run_id)
    return views


def pretty(value: Any) -> str:
    """JSON as a person reads it; a string that holds JSON is shown as that JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
