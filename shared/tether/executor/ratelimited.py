"""A tool's calls-per-second limit, shared by every executor (tether.store.ratelimits).

A call over the limit is not slept in its worker: its action is deferred to its turn
(tether.store.deferred) and published again then, by a planner's publisher, only while
the committed state still holds it pending. The action message is a claim checked
against that state (invariant 7), so its second delivery is as safe as any redelivery;
the call is charged when it goes, and its wait is recorded once.
"""

from __future__ import annotations

from tether.agent.tools import Tool
from tether.runtime import Runtime
from tether.store import deferred
from tether.store.ratelimit_waits import defer_to_slot
from tether.store.ratelimits import RateLimits, tool_limiter
from tether.transport.wire import ToolAction


def held_back(rt: Runtime, action: ToolAction, tool: Tool) -> bool:
    """Whether ``action`` must wait for its tool's limit; if so it was deferred."""
    if tool.rate_limit_per_s is None:
        return False
    limiter = tool_limiter(tool.name, tool.rate_limit_per_s)
    # A human-approved re-run is a call of its own, with a slot of its own.
    grant = f"{action.action_id}:{action.rerun_approval or 'first'}"
    slot = RateLimits(rt.store.client).acquire(limiter, grant)
    if slot.wait_s <= 0:
        return False
    entry = deferred.action_entry(action.run_id, action.action_id)
    defer_to_slot(rt.store, entry, action.run_id, action.step, limiter.name, slot, "rate limit")
    return True
