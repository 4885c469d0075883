"""Every Redis key Tether uses, in one place."""

from __future__ import annotations

PREFIX = "tether"

RUN_INDEX = f"{PREFIX}:runs"
# Unfinished runs, scored by their last commit: where the reconciler looks for stalls.
ACTIVE_RUNS = f"{PREFIX}:runs:active"
RECONCILER_LEASE = f"{PREFIX}:reconciler"
# run_id -> "step:count", how often the reconciler re-drove a run at its current step.
REDRIVES = f"{PREFIX}:runs:redrives"
LIFECYCLE_STREAM = f"{PREFIX}:events"
REJECTED_STREAM = f"{PREFIX}:rejected"
DEAD_STREAM = f"{PREFIX}:dead"
PENDING_ESCALATIONS = f"{PREFIX}:escalations:pending"
ALL_ESCALATIONS = f"{PREFIX}:escalations"
# Feedback recorded, per agent, version and score: JSON [agent, version, score] -> count,
# incremented by the feedback's own commit; the escalation service serves it as a counter.
FEEDBACK_COUNTS = f"{PREFIX}:feedback:counts"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def run_log(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:log"


def budget(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:budget"


def reservations(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:reservations"


def action_result(action_id: str) -> str:
    return f"{PREFIX}:action:{action_id}"


def action_lock(action_id: str) -> str:
    return f"{PREFIX}:action:{action_id}:lock"


def action_inflight(action_id: str) -> str:
    return f"{PREFIX}:action:{action_id}:inflight"


def rejection(event_id: str) -> str:
    return f"{PREFIX}:rejected:{event_id}"


def dead_letter_seen(message_id: str) -> str:
    return f"{PREFIX}:dead:seen:{message_id}"


def escalation(escalation_id: str) -> str:
    return f"{PREFIX}:escalation:{escalation_id}"


# Broker consumers (tether.transport): consumer id -> the list it consumes from.
CONSUMERS = f"{PREFIX}:consumers"


def consumer_alive(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}"


def consumer_landing(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:landing"


def consumer_held(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:held"


def consumer_recovering(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:recovering"


def autonomy(agent: str, tool: str) -> str:
    """The earned-autonomy record of one agent's tool (tether.autonomy)."""
    return f"{PREFIX}:autonomy:{agent}:{tool}"
