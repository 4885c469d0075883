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
# Webhook notifications of escalations, waiting for delivery (tether.notifications).
NOTIFICATIONS = f"{PREFIX}:notifications"
# Feedback recorded, per agent, version and score: JSON [agent, version, score] -> count,
# incremented by the feedback's own commit; the escalation service serves it as a counter.
FEEDBACK_COUNTS = f"{PREFIX}:feedback:counts"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def run_log(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:log"


def run_messages(run_id: str) -> str:
    """List of the run's messages (ChatMessage JSON), appended by its commits."""
    return f"{PREFIX}:run:{run_id}:messages"


def run_completed(run_id: str) -> str:
    """List of the run's completed actions (Observation JSON), appended by its commits."""
    return f"{PREFIX}:run:{run_id}:completed"


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


def eval_scenario(run_id: str) -> str:
    """An evaluation run's harness document: the scenario its eval: agent plays."""
    return f"{PREFIX}:eval:scenario:{run_id}"


# Conversation threads (tether.memory.threads) ------------------------------------------
# Thread ids by their last activity, for `tether threads list`.
THREADS = f"{PREFIX}:threads"
# Threads with events queued or a run going, by their last change: where the reconciler
# looks for a hand-over from one run to the next that went missing.
THREADS_BUSY = f"{PREFIX}:threads:busy"
# Threads whose next event waits for one published before it, by when the wait ends.
THREADS_GAPS = f"{PREFIX}:threads:gaps"


def thread_queue(thread_id: str) -> str:
    """List of event ids in publish order; the head is the thread's run or its next."""
    return f"{PREFIX}:thread:{thread_id}:queue"


def thread_events(thread_id: str) -> str:
    """Hash event id -> TaskEvent JSON of the events queued on the thread."""
    return f"{PREFIX}:thread:{thread_id}:events"


def thread_order(thread_id: str) -> str:
    """Sorted set event id -> publish time of the events queued on the thread."""
    return f"{PREFIX}:thread:{thread_id}:order"


def thread_seq(thread_id: str) -> str:
    """Hash: ``published`` (publishers' counter), ``started`` (highest sequence number
    given its run) and ``running`` (the event id given the thread last)."""
    return f"{PREFIX}:thread:{thread_id}:seq"


def thread_skipped(thread_id: str) -> str:
    """Sorted set of sequence numbers whose events intake rejected: no one waits for them."""
    return f"{PREFIX}:thread:{thread_id}:skipped"


def thread_turns(thread_id: str) -> str:
    """List of the thread's finished turns (JSON), oldest first."""
    return f"{PREFIX}:thread:{thread_id}:turns"


def thread_runs(thread_id: str) -> str:
    """Sorted set of the thread's run ids by when they ended."""
    return f"{PREFIX}:thread:{thread_id}:runs"


# Long-term memory (tether.memory.longterm) ------------------------------------------------
MEMORY_AGENTS = f"{PREFIX}:memory:agents"


def memory(agent: str, subject: str) -> str:
    """Hash key -> item JSON: what ``agent`` remembers about ``subject``."""
    return f"{PREFIX}:memory:{agent}:{subject}"


def memory_runs(agent: str, subject: str) -> str:
    """Sorted set of the runs of ``agent`` about ``subject`` (by start): where copies of
    what it remembers may be, for forgetting."""
    return f"{PREFIX}:memory-runs:{agent}:{subject}"


def notified(escalation_id: str, event: str, target: str) -> str:
    """Set once a notification reached one webhook: (escalation, event, webhook) once."""
    return f"{PREFIX}:notified:{escalation_id}:{event}:{target}"


def notify_waiting(escalation_id: str) -> str:
    """Set when an escalation's "still waiting" notification was queued, once."""
    return f"{PREFIX}:notify:waiting:{escalation_id}"
